"""penny.payload_converter decodes exactly as the SDK's default converter, only cheaper.

Unit tests of one component (no services): every value is encoded by the SDK's default
converter and decoded by both; the results (or the errors) must be the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.converter import DataConverter

from activities.payment_types import TransitionInput
from activities.stripe_types import IntentSnapshot
from penny import payload_converter
from penny.payload_converter import DATA_CONVERTER, CachedDataclassTypeConverter, PennyPayloadConverter
from workflows.payment_models import PaymentInput, PaymentState, StripeEventSignal

DEFAULT = DataConverter.default.payload_converter
PENNY = DATA_CONVERTER.payload_converter


@dataclass
class Leaf:
    amount: int
    note: str | None = None


@dataclass
class Tree:
    name: str
    leaves: list[Leaf] = field(default_factory=list)
    by_key: dict[str, Leaf] = field(default_factory=dict)
    maybe: Leaf | None = None
    either: int | Leaf = 0
    anything: Any = None
    derived: int = field(default=0, init=False)


def both(value: Any, hint: Any) -> tuple[Any, Any]:
    payloads = DEFAULT.to_payloads([value])
    return DEFAULT.from_payloads(payloads, [hint])[0], PENNY.from_payloads(payloads, [hint])[0]


def test_the_worker_decodes_with_the_cached_converter() -> None:
    assert DATA_CONVERTER.payload_converter_class is PennyPayloadConverter
    # Encoding is the SDK's: the same bytes on the wire, so the API's client needs nothing.
    value = Tree("t", [Leaf(1, "a")], {"k": Leaf(2)}, Leaf(3), Leaf(4))
    assert PENNY.to_payloads([value]) == DEFAULT.to_payloads([value])


def test_nested_optional_union_and_init_false_fields_decode_as_the_sdk_does() -> None:
    tree = Tree("t", [Leaf(1, "a"), Leaf(2)], {"k": Leaf(3, "c")}, Leaf(4), Leaf(5, "e"), {"x": [1]})
    tree.derived = 7
    expected, got = both(tree, Tree)
    assert got == expected == tree
    assert got.derived == 7 and isinstance(got.leaves[0], Leaf) and isinstance(got.either, Leaf)


def test_unknown_keys_are_ignored_and_defaults_fill_missing_fields() -> None:
    payloads = DEFAULT.to_payloads([{"name": "t", "unknown": 1}])
    assert PENNY.from_payloads(payloads, [Tree])[0] == DEFAULT.from_payloads(payloads, [Tree])[0] == Tree("t")


def test_a_missing_required_field_and_a_wrong_type_fail_as_in_the_sdk() -> None:
    missing = DEFAULT.to_payloads([{"leaves": []}])
    with pytest.raises(TypeError):
        DEFAULT.from_payloads(missing, [Tree])
    with pytest.raises(TypeError):
        PENNY.from_payloads(missing, [Tree])
    wrong = DEFAULT.to_payloads([{"name": "t", "leaves": [{"amount": "12"}]}])
    with pytest.raises(Exception) as sdk_error:
        DEFAULT.from_payloads(wrong, [Tree])
    with pytest.raises(Exception) as penny_error:
        PENNY.from_payloads(wrong, [Tree])
    assert type(penny_error.value) is type(sdk_error.value) is TypeError
    assert str(penny_error.value) == str(sdk_error.value)
    assert str(penny_error.value).startswith("Failed converting field leaves on dataclass")


def test_field_types_are_resolved_once_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[type] = []
    real = payload_converter.get_type_hints

    def counting(hint: type) -> dict[str, Any]:
        calls.append(hint)
        return real(hint)

    monkeypatch.setattr(payload_converter, "get_type_hints", counting)
    monkeypatch.setattr(payload_converter, "_field_plans", {})
    payloads = DEFAULT.to_payloads([Tree("t", [Leaf(1), Leaf(2)], maybe=Leaf(3))])
    # The worker makes a converter per workflow run: the plans are shared between them.
    for _ in range(3):
        PennyPayloadConverter().from_payloads(payloads, [Tree])
    assert sorted(calls, key=lambda hint: hint.__name__) == [Leaf, Tree]


def test_the_plan_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload_converter, "FIELD_PLANS_MAX", 3)
    monkeypatch.setattr(payload_converter, "_field_plans", {})
    converter = CachedDataclassTypeConverter()
    classes = [dataclasses.make_dataclass(f"C{index}", [("amount", int)]) for index in range(7)]
    for cls in classes:
        assert converter.to_typed_value(cls, {"amount": 5}) == cls(5)
        assert len(payload_converter._field_plans) <= 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_type(PaymentState))
def test_payment_state_decodes_identically(state: PaymentState) -> None:
    expected, got = both(state, PaymentState)
    assert got == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.tuples(st.from_type(PaymentInput), st.just(PaymentInput)),
        st.tuples(st.from_type(TransitionInput), st.just(TransitionInput)),
        st.tuples(st.from_type(IntentSnapshot), st.just(IntentSnapshot)),
        st.tuples(st.from_type(StripeEventSignal), st.just(StripeEventSignal)),
    )
)
def test_workflow_and_activity_payloads_decode_identically(case: tuple[Any, type]) -> None:
    value, hint = case
    expected, got = both(value, hint)
    assert got == expected
