"""Events (list/retrieve, 30-day retention) and WebhookEndpoints (create returns the whsec_ secret)."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from typing import Any

from stripe_emulator import _forms as forms
from stripe_emulator._errors import invalid_request
from stripe_emulator._router import Call, route
from stripe_emulator._state import API_VERSION, State

URL_LENGTH_MAX = 2_048


@route("GET", "/v1/events/{event}")
def retrieve_event(call: Call) -> dict[str, Any]:
    return call.state.get("event", call.path["event"], "id")


@route(
    "GET", "/v1/events", ("type", "types", "created", "limit", "starting_after", "ending_before", "delivery_success")
)
def list_events(call: Call) -> dict[str, Any]:
    patterns = forms.string_list(call.params, "types") or forms.string_list(call.params, "type")
    predicate = None
    if patterns:
        exact = {pattern for pattern in patterns if "*" not in pattern}
        globs = [pattern for pattern in patterns if "*" in pattern]

        def predicate(event: dict[str, Any]) -> bool:
            return event["type"] in exact or any(fnmatch.fnmatchcase(event["type"], glob) for glob in globs)

    return call.state.list_object("event", call.params, "/v1/events", predicate)


# --------------------------------------------------------------------------- webhook endpoints

ENDPOINT_PARAMS = ("url", "enabled_events", "description", "metadata", "api_version", "connect", "disabled")


def _enabled_events(params: dict[str, Any], required: bool) -> list[str] | None:
    events = forms.string_list(params, "enabled_events")
    if not events:
        if required:
            raise forms.missing_param("enabled_events")
        return None
    return events


def _url(params: dict[str, Any], required: bool) -> str | None:
    url = forms.string(params, "url", required=required, max_length=URL_LENGTH_MAX)
    if url is not None and not url.startswith(("http://", "https://")):
        raise invalid_request(f"Invalid URL: {url}", param="url", code="url_invalid")
    return url


@route("POST", "/v1/webhook_endpoints", ENDPOINT_PARAMS)
def create_webhook_endpoint(call: Call) -> dict[str, Any]:
    state, params = call.state, call.params
    url = _url(params, required=True)
    enabled = _enabled_events(params, required=True)
    metadata = forms.metadata(params)
    endpoint_id = state.new_id("we")
    secret = state.new_id("whsec", 32)
    endpoint = {
        "id": endpoint_id,
        "object": "webhook_endpoint",
        "api_version": params.get("api_version"),
        "application": None,
        "created": state.now(),
        "description": params.get("description"),
        "enabled_events": enabled,
        "livemode": False,
        "metadata": metadata,
        "status": "enabled",
        "url": url,
    }
    state.add(endpoint)
    state.private_of(endpoint_id)["secrets"] = [{"secret": secret, "expires_at": None}]
    # Only the create response carries the secret, as with Stripe.
    return {**endpoint, "secret": secret}


@route("GET", "/v1/webhook_endpoints/{endpoint}")
def retrieve_webhook_endpoint(call: Call) -> dict[str, Any]:
    return call.state.get("webhook_endpoint", call.path["endpoint"], "id")


@route("POST", "/v1/webhook_endpoints/{endpoint}", ENDPOINT_PARAMS)
def update_webhook_endpoint(call: Call) -> dict[str, Any]:
    state, params = call.state, call.params
    endpoint = state.get("webhook_endpoint", call.path["endpoint"], "id")
    url = _url(params, required=False)
    enabled = _enabled_events(params, required=False)
    disabled = forms.boolean(params, "disabled", default=endpoint["status"] == "disabled")
    endpoint["metadata"] = forms.metadata(params, endpoint["metadata"])
    if url is not None:
        endpoint["url"] = url
    if enabled is not None:
        endpoint["enabled_events"] = enabled
    if "description" in params:
        endpoint["description"] = params["description"] or None
    endpoint["status"] = "disabled" if disabled else "enabled"
    state.dirty = True
    return endpoint


@route("DELETE", "/v1/webhook_endpoints/{endpoint}")
def delete_webhook_endpoint(call: Call) -> dict[str, Any]:
    endpoint = call.state.get("webhook_endpoint", call.path["endpoint"], "id")
    call.state.remove(endpoint["id"])
    return {"id": endpoint["id"], "object": "webhook_endpoint", "deleted": True}


@route("GET", "/v1/webhook_endpoints", ("limit", "starting_after", "ending_before"))
def list_webhook_endpoints(call: Call) -> dict[str, Any]:
    return call.state.list_object("webhook_endpoint", call.params, "/v1/webhook_endpoints")


@route("POST", "/v1/webhook_endpoints/{endpoint}/roll_secret", ("expires_in_seconds",))
def roll_secret_route(call: Call) -> dict[str, Any]:
    """Not a Stripe API (the Dashboard rolls secrets): a test hook, also under /_emulator/webhook_endpoints."""
    expires = forms.integer(call.params, "expires_in_seconds", minimum=0)
    return roll_secret(call.state, call.path["endpoint"], expires)


def roll_secret(state: State, endpoint_id: str, expires_in_seconds: int | None) -> dict[str, Any]:
    """A new secret; the old ones stay valid (and signed with) until they expire on the emulator clock."""
    endpoint = state.get("webhook_endpoint", endpoint_id, "id")
    secrets = state.private_of(endpoint_id)["secrets"]
    expiry = state.config.webhook_secret_roll_expiry_seconds if expires_in_seconds is None else expires_in_seconds
    for entry in secrets:
        if entry["expires_at"] is None:
            entry["expires_at"] = state.now() + expiry
    secret = state.new_id("whsec", 32)
    secrets.append({"secret": secret, "expires_at": None})
    state.dirty = True
    return {**endpoint, "secret": secret}


def active_secrets(state: State, endpoint_id: str) -> list[str]:
    now = state.now()
    entries = state.private_of(endpoint_id).get("secrets", [])
    return [entry["secret"] for entry in entries if entry["expires_at"] is None or entry["expires_at"] > now][::-1]


def signature_header(payload: bytes, secrets: list[str], timestamp: int) -> str:
    """`t=<unix>,v1=<hex>[,v1=<hex>...]`: HMAC-SHA256 of "<t>.<payload>", one v1 per active secret."""
    signed = str(timestamp).encode() + b"." + payload
    parts = [f"t={timestamp}"]
    parts.extend(f"v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}" for secret in secrets)
    return ",".join(parts)


__all__ = ["API_VERSION", "active_secrets", "roll_secret", "signature_header"]
