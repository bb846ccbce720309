"""Stripe's form encoding: `metadata[k]=v`, `expand[]=x` / `expand[0]=x`, `a[b][0][c]=v` into nested values.

Parameter readers raise Stripe's validation errors (400, not saved under idempotency keys).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import parse_qsl

from stripe_emulator._errors import invalid_request, missing_param, raw_card_data, unknown_parameter

PARAMETER_PAIRS_MAX = 2_000
METADATA_KEYS_MAX = 50
METADATA_KEY_LENGTH_MAX = 40
METADATA_VALUE_LENGTH_MAX = 500
STRING_LENGTH_MAX = 5_000
# 13 to 19 digits, optionally separated by spaces or dashes: what a card number looks like.
_CARD_NUMBER = re.compile(r"^\d(?:[ -]?\d){12,18}$")


def decode(raw: bytes | str) -> dict[str, Any]:
    if not raw:
        return {}
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    pairs = parse_qsl(text, keep_blank_values=True)
    if len(pairs) > PARAMETER_PAIRS_MAX:
        raise invalid_request(f"Too many parameters (at most {PARAMETER_PAIRS_MAX}).")
    root: dict[str, Any] = {}
    for key, value in pairs:
        _assign(root, _split_key(key), value)
    return _lists(root, parent="")


def _split_key(key: str) -> list[str]:
    if "[" not in key:
        return [key]
    head, _, rest = key.partition("[")
    return [head] + [piece[:-1] if piece.endswith("]") else piece for piece in rest.split("[")]


def _assign(root: dict[str, Any], segments: list[str], value: str) -> None:
    node = root
    for segment in segments[:-1]:
        name = segment if segment != "" else str(len(node))
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    last = segments[-1]
    node[last if last != "" else str(len(node))] = value


def _lists(node: dict[str, Any], parent: str) -> Any:
    """Dicts keyed 0..n become lists, except metadata, whose keys are the caller's own."""
    for key, value in node.items():
        if isinstance(value, dict):
            node[key] = _lists(value, parent=key)
    if parent != "metadata" and node and all(key.isdigit() for key in node):
        return [node[key] for key in sorted(node, key=int)]
    return node


def fingerprint(method: str, path: str, params: dict[str, Any]) -> str:
    canonical = json.dumps([method, path, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_known(params: dict[str, Any], allowed: frozenset[str], strict: bool) -> None:
    if not strict:
        return
    for name in params:
        if name not in allowed:
            raise unknown_parameter(name)


def refuse_raw_card_data(params: dict[str, Any]) -> None:
    """Stripe refuses card numbers sent to the API by accounts without raw card data access."""
    for path, value in _walk(params, ""):
        leaf = path.rsplit("[", 1)[-1].rstrip("]")
        if leaf == "number" and "card" in path:
            raise raw_card_data(path)
        if path in {"source", "payment_method", "card"} and isinstance(value, str) and _CARD_NUMBER.match(value):
            raise raw_card_data(path)


def _walk(value: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        found: list[tuple[str, Any]] = []
        for key, child in value.items():
            found.extend(_walk(child, f"{path}[{key}]" if path else key))
        return found
    if isinstance(value, list):
        found = []
        for index, child in enumerate(value):
            found.extend(_walk(child, f"{path}[{index}]"))
        return found
    return [(path, value)]


def string(
    params: dict[str, Any], name: str, required: bool = False, max_length: int = STRING_LENGTH_MAX
) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise missing_param(name)
        return None
    if not isinstance(value, str):
        raise invalid_request(f"Invalid string: {value!r}", param=name, code="parameter_invalid_string")
    if value == "" and required:
        raise invalid_request(
            f"You passed an empty string for '{name}'. We assume empty values are an attempt to unset a "
            f"parameter; however '{name}' cannot be unset. You should remove '{name}' from your request or "
            "supply a non-empty value.",
            param=name,
            code="parameter_invalid_empty",
        )
    if len(value) > max_length:
        raise invalid_request(
            f"Invalid string: {value[:20]}...; must be at most {max_length} characters",
            param=name,
            code="parameter_invalid_string",
        )
    return value


def integer(
    params: dict[str, Any], name: str, required: bool = False, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    value = params.get(name)
    if value is None:
        if required:
            raise missing_param(name)
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value):
        number = int(value)
    else:
        raise invalid_request(f"Invalid integer: {value}", param=name, code="parameter_invalid_integer")
    if minimum is not None and number < minimum:
        if minimum == 1:
            raise invalid_request("Invalid positive integer", param=name, code="parameter_invalid_integer")
        raise invalid_request(
            f"This value must be greater than or equal to {minimum}.", param=name, code="parameter_invalid_integer"
        )
    if maximum is not None and number > maximum:
        raise invalid_request(
            f"This value must be less than or equal to {maximum}.", param=name, code="parameter_invalid_integer"
        )
    return number


def boolean(params: dict[str, Any], name: str, default: bool = False) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if value in (True, "true"):
        return True
    if value in (False, "false"):
        return False
    raise invalid_request(f"Invalid boolean: {value}", param=name, code="parameter_invalid_boolean")


def choice(params: dict[str, Any], name: str, options: tuple[str, ...], default: str | None = None) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value not in options:
        listed = ", ".join(f"`{option}`" for option in options)
        raise invalid_request(
            f"Invalid {name}: must be one of {listed}",
            param=name,
        )
    return str(value)


def currency(params: dict[str, Any], name: str = "currency", required: bool = True) -> str | None:
    value = string(params, name, required=required)
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z]{3}", value):
        raise invalid_request(
            f"Invalid currency: {value.lower()}. Stripe currently supports these currencies: usd, eur, gbp, ...",
            param=name,
        )
    return value.lower()


def metadata(params: dict[str, Any], existing: dict[str, str] | None = None) -> dict[str, str]:
    """Merge `metadata[...]` into `existing`; an empty string unsets a key; `metadata=""` clears all."""
    result = dict(existing or {})
    value = params.get("metadata")
    if value is None:
        return result
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise invalid_request("Invalid object", param="metadata")
    for key, item in value.items():
        if not isinstance(item, str):
            raise invalid_request(f"Invalid value for metadata[{key}]: must be a string", param=f"metadata[{key}]")
        if len(key) > METADATA_KEY_LENGTH_MAX:
            raise invalid_request(
                f"Metadata keys can have up to {METADATA_KEY_LENGTH_MAX} characters; {key!r} has {len(key)}.",
                param=f"metadata[{key}]",
            )
        if len(item) > METADATA_VALUE_LENGTH_MAX:
            raise invalid_request(
                f"Metadata values can have up to {METADATA_VALUE_LENGTH_MAX} characters, but {key!r} has {len(item)}.",
                param=f"metadata[{key}]",
            )
        if item == "":
            result.pop(key, None)
        else:
            result[key] = item
    if len(result) > METADATA_KEYS_MAX:
        raise invalid_request(f"Metadata can have up to {METADATA_KEYS_MAX} keys.", param="metadata")
    return result


def metadata_previous(old: dict[str, str], new: dict[str, str]) -> dict[str, str | None]:
    """An event's `previous_attributes.metadata`: the changed keys only, with their old values (null if new)."""
    return {key: old.get(key) for key in sorted({*old, *new}) if old.get(key) != new.get(key)}


def string_list(params: dict[str, Any], name: str) -> list[str]:
    value = params.get(name)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise invalid_request("Invalid array", param=name)
