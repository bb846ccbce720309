"""Temporal's JSON payload converter, with each dataclass's field types resolved once.

The SDK's `value_to_type` rebuilds a dataclass from JSON by calling `typing.get_type_hints` on
it for every decode. Penny's modules use `from __future__ import annotations`, so that means
compiling every field's annotation string again: 6.6 % of the worker's CPU in py-spy while
`bench/payments.py` ran (bench/PROFILE.md). This converter resolves a dataclass's fields once
per class and otherwise converts exactly as the SDK does (same JSON on the wire, same values
out, same errors), so it changes no payload and no workflow's determinism.

The worker's client carries it (`worker.build_worker`); the API and other clients need not:
encoding is the SDK's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from temporalio.client import Client
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    JSONTypeConverter,
    value_to_type,
)

# Classes whose field plan is kept. Workflows that are not passed through the sandbox import
# their modules again for every run, so their dataclasses are new class objects each time:
# past this many the cache starts over rather than growing without bound.
FIELD_PLANS_MAX = 1024

# (field name, resolved type hint, passed to __init__) per field, in declaration order.
FieldPlan = tuple[tuple[str, Any, bool], ...]
# Shared by every converter instance: the worker makes a payload converter per workflow run.
_field_plans: dict[type, FieldPlan] = {}


class CachedDataclassTypeConverter(JSONTypeConverter):
    """Decodes dataclasses like the SDK's `value_to_type`, with the field types looked up once."""

    def __init__(self) -> None:
        self._converters: list[JSONTypeConverter] = [self]

    @staticmethod
    def field_plan(hint: type) -> FieldPlan:
        plan = _field_plans.get(hint)
        if plan is None:
            hints = get_type_hints(hint)
            plan = tuple((field.name, hints[field.name], field.init) for field in dataclasses.fields(hint))
            if len(_field_plans) >= FIELD_PLANS_MAX:
                _field_plans.clear()
            _field_plans[hint] = plan
        return plan

    def to_typed_value(self, hint: type, value: Any) -> Any:
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict)):
            return JSONTypeConverter.Unhandled  # the SDK's own rules (and its errors) apply
        init_values: dict[str, Any] = {}
        other_values: dict[str, Any] = {}
        # Unknown keys are ignored and missing required fields fail in the constructor, as in the SDK.
        for name, field_hint, in_init in self.field_plan(hint):
            if name not in value:
                continue
            try:
                converted = value_to_type(field_hint, value[name], self._converters)
            except Exception as error:
                raise TypeError(f"Failed converting field {name} on dataclass {hint}") from error
            (init_values if in_init else other_values)[name] = converted
        instance = hint(**init_values)
        for name, converted in other_values.items():
            object.__setattr__(instance, name, converted)
        return instance


class PennyPayloadConverter(CompositePayloadConverter):
    """The SDK's default converters, the JSON one with cached dataclass field types."""

    def __init__(self) -> None:
        json_converter = JSONPlainPayloadConverter(custom_type_converters=[CachedDataclassTypeConverter()])
        super().__init__(
            *(
                json_converter if isinstance(converter, JSONPlainPayloadConverter) else converter
                for converter in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


DATA_CONVERTER = dataclasses.replace(DataConverter.default, payload_converter_class=PennyPayloadConverter)


def with_penny_converter(client: Client) -> Client:
    """The same client (connection, namespace, interceptors) decoding with `DATA_CONVERTER`."""
    if client.data_converter.payload_converter_class is PennyPayloadConverter:
        return client
    config = client.config()
    config["data_converter"] = DATA_CONVERTER
    return Client(**config)
