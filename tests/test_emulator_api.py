"""The emulator through the real `stripe` SDK over HTTP: resources, status machine, errors, wire format."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
import stripe

from tests.conftest import EMULATOR_TEST_CONFIG, RunningEmulator, emulator_stripe_client


def _order() -> str:
    return f"order-{uuid.uuid4().hex[:12]}"


def _create_confirmed(
    client: stripe.StripeClient, payment_method: str = "pm_card_visa", **extra: object
) -> stripe.PaymentIntent:
    params: dict[str, object] = {
        "amount": 10_000,
        "currency": "usd",
        "payment_method": payment_method,
        "confirm": True,
        "metadata": {"order_id": _order()},
    }
    params.update(extra)
    return client.v1.payment_intents.create(params=params)  # type: ignore[arg-type]


# ------------------------------------------------------------------ wire compatibility


def test_health_answers_200(stripe_emulator: RunningEmulator) -> None:
    assert httpx.get(f"{stripe_emulator.base_url}/health").status_code == 200


def test_missing_api_key_is_401_with_stripe_error_shape(stripe_emulator: RunningEmulator) -> None:
    response = httpx.get(f"{stripe_emulator.base_url}/v1/payment_intents")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "did not provide an API key" in error["message"]
    live = httpx.get(f"{stripe_emulator.base_url}/v1/balance", headers={"Authorization": "Bearer sk_live_abcdefghijkl"})
    assert live.status_code == 401 and "Invalid API Key" in live.json()["error"]["message"]


def test_unknown_url_and_unknown_parameter(
    stripe_client: stripe.StripeClient, stripe_emulator: RunningEmulator
) -> None:
    response = httpx.get(f"{stripe_emulator.base_url}/v1/nothing", headers={"Authorization": "Bearer sk_test_x"})
    assert response.status_code == 404 and "Unrecognized request URL" in response.json()["error"]["message"]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.payment_intents.create(params={"amount": 1000, "currency": "usd", "colour": "blue"})  # type: ignore[typeddict-unknown-key]
    assert caught.value.code == "parameter_unknown" and caught.value.param == "colour"


def test_validation_errors_have_stripe_codes(stripe_client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        stripe_client.v1.payment_intents.create(params={"currency": "usd"})  # type: ignore[typeddict-item]
    assert (
        missing.value.http_status == 400
        and missing.value.code == "parameter_missing"
        and missing.value.param == "amount"
    )
    with pytest.raises(stripe.InvalidRequestError) as small:
        stripe_client.v1.payment_intents.create(params={"amount": 10, "currency": "usd"})
    assert small.value.code == "amount_too_small"
    with pytest.raises(stripe.InvalidRequestError) as absent:
        stripe_client.v1.payment_intents.retrieve("pi_doesnotexist")
    assert absent.value.http_status == 404 and absent.value.code == "resource_missing"


def test_request_id_header_and_id_prefixes(stripe_client: stripe.StripeClient) -> None:
    intent = _create_confirmed(stripe_client)
    assert intent.id.startswith("pi_") and intent.last_response is not None
    request_id = intent.last_response.request_id
    assert request_id is not None and request_id.startswith("req_")
    charge = stripe_client.v1.charges.retrieve(str(intent.latest_charge))
    assert charge.id.startswith("ch_") and str(charge.balance_transaction).startswith("txn_")


def test_sdk_works_with_the_httpx_http_client(stripe_emulator: RunningEmulator) -> None:
    client = stripe.StripeClient(
        api_key="sk_test_httpx",
        base_addresses={"api": stripe_emulator.base_url},
        max_network_retries=0,
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
    )
    intent = _create_confirmed(client)
    assert intent.status == "succeeded"


async def test_sdk_async_methods(stripe_emulator: RunningEmulator) -> None:
    client = stripe.StripeClient(
        api_key="sk_test_async",
        base_addresses={"api": stripe_emulator.base_url},
        max_network_retries=0,
        http_client=stripe.HTTPXClient(),
    )
    intent = await client.v1.payment_intents.create_async(
        params={"amount": 1_000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    )
    assert intent.status == "succeeded"
    assert (await client.v1.payment_intents.retrieve_async(intent.id)).id == intent.id


def test_raw_card_numbers_are_refused_like_stripe(stripe_client: stripe.StripeClient) -> None:
    for params in (
        {"payment_method_data": {"type": "card", "card": {"number": "4242424242424242"}}},
        {"payment_method": "4242 4242 4242 4242"},
    ):
        with pytest.raises(stripe.CardError) as caught:
            stripe_client.v1.payment_intents.create(params={"amount": 1000, "currency": "usd", **params})  # type: ignore[typeddict-item]
        assert caught.value.http_status == 402
        assert caught.value.error is not None and caught.value.error.type == "invalid_request_error"
        assert "Sending credit card numbers directly to the Stripe API is generally unsafe" in str(
            caught.value.user_message
        )


def test_expand_nested_fields(stripe_client: stripe.StripeClient) -> None:
    intent = _create_confirmed(stripe_client, expand=["latest_charge.balance_transaction"])
    charge = intent.latest_charge
    assert isinstance(charge, stripe.Charge)
    transaction = charge.balance_transaction
    assert isinstance(transaction, stripe.BalanceTransaction)
    # 2.9% + 30 on 100.00 = 290 + 30.
    assert (transaction.amount, transaction.fee, transaction.net, transaction.status) == (10_000, 320, 9_680, "pending")
    listed = stripe_client.v1.charges.list(params={"payment_intent": intent.id, "expand": ["data.balance_transaction"]})
    assert isinstance(listed.data[0].balance_transaction, stripe.BalanceTransaction)


def test_created_filters(stripe_client: stripe.StripeClient) -> None:
    intent = _create_confirmed(stripe_client)
    found = stripe_client.v1.payment_intents.list(
        params={"created": {"gte": intent.created, "lte": intent.created}, "limit": 100}
    )
    assert intent.id in {item.id for item in found.data}
    assert all(item.created == intent.created for item in found.data)
    later = stripe_client.v1.payment_intents.list(params={"created": {"gt": intent.created + 10}})
    assert later.data == []


# ------------------------------------------------------------------ payment intents


def test_automatic_capture_succeeds_with_charge_and_events(stripe_client: stripe.StripeClient) -> None:
    intent = _create_confirmed(stripe_client, payment_method="pm_card_mastercard")
    assert intent.status == "succeeded" and intent.amount_received == 10_000
    assert str(intent.payment_method).startswith("pm_")
    charge = stripe_client.v1.charges.retrieve(str(intent.latest_charge))
    assert charge.captured and charge.paid and charge.payment_method_details is not None
    assert charge.metadata["order_id"] == intent.metadata["order_id"]
    types = [
        event.type
        # Other tests share this emulator: only events since this intent was created.
        for event in stripe_client.v1.events.list(params={"limit": 100, "created": {"gte": intent.created}}).data
        if event.data.object["id"] in (intent.id, charge.id)
    ]
    assert {"payment_intent.created", "charge.succeeded", "payment_intent.succeeded"} <= set(types)


def test_manual_capture_partial(stripe_client: stripe.StripeClient) -> None:
    intent = stripe_client.v1.payment_intents.create(
        params={"amount": 5_000, "currency": "eur", "capture_method": "manual"}
    )
    assert intent.status == "requires_payment_method"
    intent = stripe_client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    assert intent.status == "requires_capture" and intent.amount_capturable == 5_000
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.payment_intents.capture(intent.id, params={"amount_to_capture": 6_000})
    intent = stripe_client.v1.payment_intents.capture(intent.id, params={"amount_to_capture": 3_000})
    assert (intent.status, intent.amount_received, intent.amount_capturable) == ("succeeded", 3_000, 0)
    charge = stripe_client.v1.charges.retrieve(str(intent.latest_charge))
    assert charge.amount_captured == 3_000 and charge.captured
    with pytest.raises(stripe.InvalidRequestError) as again:
        stripe_client.v1.payment_intents.capture(intent.id)
    assert again.value.code == "payment_intent_unexpected_state"


def test_create_then_confirm_separately(stripe_client: stripe.StripeClient) -> None:
    intent = stripe_client.v1.payment_intents.create(
        params={"amount": 1_000, "currency": "usd", "payment_method": "pm_card_visa"}
    )
    assert intent.status == "requires_confirmation"
    intent = stripe_client.v1.payment_intents.confirm(intent.id)
    assert intent.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.payment_intents.confirm(intent.id)
    assert caught.value.code == "payment_intent_unexpected_state"


@pytest.mark.parametrize(
    ("payment_method", "code", "decline_code"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
    ],
)
def test_declines(stripe_client: stripe.StripeClient, payment_method: str, code: str, decline_code: str) -> None:
    order = _order()
    with pytest.raises(stripe.CardError) as caught:
        stripe_client.v1.payment_intents.create(
            params={
                "amount": 2_000,
                "currency": "usd",
                "payment_method": payment_method,
                "confirm": True,
                "metadata": {"order_id": order},
            }
        )
    error = caught.value
    assert error.http_status == 402 and error.code == code
    assert error.error is not None and error.error.decline_code == decline_code
    intent_id = error.error.payment_intent.id  # type: ignore[union-attr]
    intent = stripe_client.v1.payment_intents.retrieve(intent_id)
    assert intent.status == "requires_payment_method"
    assert intent.last_payment_error is not None and intent.last_payment_error.decline_code == decline_code
    charge = stripe_client.v1.charges.retrieve(str(intent.latest_charge))
    assert charge.status == "failed" and charge.failure_code == code
    # A new payment method can be tried on the same intent.
    assert (
        stripe_client.v1.payment_intents.confirm(intent_id, params={"payment_method": "pm_card_visa"}).status
        == "succeeded"
    )


def test_authentication_required_then_complete(
    stripe_client: stripe.StripeClient, stripe_emulator: RunningEmulator
) -> None:
    intent = _create_confirmed(stripe_client, payment_method="pm_card_authenticationRequired")
    assert intent.status == "requires_action" and intent.next_action is not None
    completed = stripe_emulator.control.complete_action(intent.id, "succeed")
    assert completed["status"] == "succeeded"
    failing = _create_confirmed(stripe_client, payment_method="pm_card_authenticationRequired")
    failed = stripe_emulator.control.complete_action(failing.id, "fail")
    assert failed["status"] == "requires_payment_method"
    assert failed["last_payment_error"]["code"] == "payment_intent_authentication_failure"


def test_cancel(stripe_client: stripe.StripeClient) -> None:
    intent = stripe_client.v1.payment_intents.create(
        params={
            "amount": 1_000,
            "currency": "usd",
            "capture_method": "manual",
            "payment_method": "pm_card_visa",
            "confirm": True,
        }
    )
    canceled = stripe_client.v1.payment_intents.cancel(
        intent.id, params={"cancellation_reason": "requested_by_customer"}
    )
    assert canceled.status == "canceled" and canceled.cancellation_reason == "requested_by_customer"
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.payment_intents.cancel(_create_confirmed(stripe_client).id)


def test_update_metadata_and_search(stripe_client: stripe.StripeClient) -> None:
    order = _order()
    intent = stripe_client.v1.payment_intents.create(
        params={"amount": 1_000, "currency": "usd", "metadata": {"order_id": order}}
    )
    stripe_client.v1.payment_intents.update(intent.id, params={"metadata": {"payment_id": "pay_1"}})
    found = stripe_client.v1.payment_intents.search(params={"query": f"metadata['order_id']:'{order}'"})
    assert [item.id for item in found.data] == [intent.id]
    assert found.data[0].metadata.to_dict() == {"order_id": order, "payment_id": "pay_1"}
    none = stripe_client.v1.payment_intents.search(
        params={"query": f"metadata['order_id']:'{order}' AND status:'succeeded'"}
    )
    assert none.data == []
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.payment_intents.search(params={"query": "nonsense"})


def test_customer_string_is_accepted_and_listed(stripe_client: stripe.StripeClient) -> None:
    customer = f"cus_{uuid.uuid4().hex[:14]}"
    intent = _create_confirmed(stripe_client, customer=customer)
    listed = stripe_client.v1.payment_intents.list(params={"customer": customer})
    assert [item.id for item in listed.data] == [intent.id]


# ------------------------------------------------------------------ refunds, transfers, disputes


def test_refunds_partial_then_full(stripe_client: stripe.StripeClient) -> None:
    intent = _create_confirmed(stripe_client)
    first = stripe_client.v1.refunds.create(
        params={"payment_intent": intent.id, "amount": 4_000, "metadata": {"k": "v"}}
    )
    assert first.id.startswith("re_") and first.status == "succeeded" and first.amount == 4_000
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        stripe_client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 7_000})
    assert too_much.value.param == "amount"
    second = stripe_client.v1.refunds.create(params={"charge": str(intent.latest_charge)})
    assert second.amount == 6_000
    charge = stripe_client.v1.charges.retrieve(str(intent.latest_charge))
    assert charge.refunded and charge.amount_refunded == 10_000
    with pytest.raises(stripe.InvalidRequestError) as already:
        stripe_client.v1.refunds.create(params={"payment_intent": intent.id})
    assert already.value.code == "charge_already_refunded"
    listed = stripe_client.v1.refunds.list(params={"payment_intent": intent.id})
    assert [refund.id for refund in listed.data] == [second.id, first.id]


def test_destination_charge_refund_reverses_transfer_and_fee(stripe_client: stripe.StripeClient) -> None:
    destination = f"acct_{uuid.uuid4().hex[:16]}"
    intent = _create_confirmed(
        stripe_client, application_fee_amount=1_000, transfer_data={"destination": destination}, transfer_group="grp"
    )
    charge = stripe_client.v1.charges.retrieve(str(intent.latest_charge))
    transfer = stripe_client.v1.transfers.retrieve(str(charge.transfer))
    assert (
        transfer.destination == destination and transfer.amount == 10_000 and transfer.source_transaction == charge.id
    )
    refund = stripe_client.v1.refunds.create(
        params={"payment_intent": intent.id, "amount": 5_000, "reverse_transfer": True, "refund_application_fee": True}
    )
    assert refund.transfer_reversal is not None
    transfer = stripe_client.v1.transfers.retrieve(transfer.id)
    assert transfer.amount_reversed == 5_000 and not transfer.reversed
    assert stripe_client.v1.accounts.retrieve(destination).id == destination


def test_transfers_and_reversals(stripe_client: stripe.StripeClient) -> None:
    account = stripe_client.v1.accounts.create(params={"type": "express", "country": "US"})
    assert account.id.startswith("acct_")
    group = f"group-{uuid.uuid4().hex[:8]}"
    transfer = stripe_client.v1.transfers.create(
        params={
            "amount": 700,
            "currency": "usd",
            "destination": account.id,
            "transfer_group": group,
            "metadata": {"recipient": "seller"},
        }
    )
    assert transfer.id.startswith("tr_") and transfer.transfer_group == group
    reversal = stripe_client.v1.transfers.reversals.create(transfer.id, params={"amount": 200})
    assert reversal.id.startswith("trr_") and reversal.amount == 200
    assert stripe_client.v1.transfers.retrieve(transfer.id).amount_reversed == 200
    listed = stripe_client.v1.transfers.list(params={"transfer_group": group})
    assert [item.id for item in listed.data] == [transfer.id]
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.transfers.create(params={"amount": 700, "currency": "usd", "destination": "not-an-account"})


def test_transfer_from_source_transaction_is_bounded(stripe_client: stripe.StripeClient) -> None:
    intent = _create_confirmed(stripe_client)
    charge_id = str(intent.latest_charge)
    stripe_client.v1.transfers.create(
        params={"amount": 9_000, "currency": "usd", "destination": "acct_sourcetx", "source_transaction": charge_id}
    )
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.transfers.create(
            params={"amount": 1_001, "currency": "usd", "destination": "acct_sourcetx", "source_transaction": charge_id}
        )


def test_dispute_created_for_create_dispute_card_and_closed(
    stripe_client: stripe.StripeClient, stripe_emulator: RunningEmulator
) -> None:
    intent = _create_confirmed(stripe_client, payment_method="pm_card_createDispute")
    assert intent.status == "succeeded"
    deadline = time.monotonic() + 5
    disputes: list[stripe.Dispute] = []
    while time.monotonic() < deadline and not disputes:
        disputes = stripe_client.v1.disputes.list(params={"payment_intent": intent.id}).data
        time.sleep(0.05)
    assert disputes and disputes[0].id.startswith("dp_") and disputes[0].status == "needs_response"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.refunds.create(params={"payment_intent": intent.id})
    assert caught.value.code == "charge_disputed"
    closed = stripe_emulator.control.close_dispute(disputes[0].id, "won")
    assert closed["status"] == "won"
    events = stripe_client.v1.events.list(params={"type": "charge.dispute.*", "limit": 100}).data
    assert {"charge.dispute.created", "charge.dispute.closed"} <= {
        event.type for event in events if event.data.object["id"] == disputes[0].id
    }


# ---------------------------------------- balance, settlement, payouts (a private emulator: the clock moves)


def test_settlement_payouts_and_payout_filter(emulator_factory) -> None:  # type: ignore[no-untyped-def]
    running = emulator_factory(EMULATOR_TEST_CONFIG)
    client = emulator_stripe_client(running.base_url)
    intent = _create_confirmed(client)
    balance = client.v1.balance.retrieve()
    assert balance.pending[0].amount == 9_680 and balance.available[0].amount == 0
    running.control.advance_clock(2 * 86_400 + 1)
    balance = client.v1.balance.retrieve()
    payouts = client.v1.payouts.list().data
    if not payouts:  # the settlement landed after that day's payout run
        running.control.advance_clock(86_400)
        payouts = client.v1.payouts.list().data
    assert payouts and payouts[0].id.startswith("po_") and payouts[0].amount == 9_680 and payouts[0].automatic
    members = client.v1.balance_transactions.list(params={"payout": payouts[0].id}).data
    assert {member.type for member in members} == {"charge", "payout"}
    assert any(member.source == intent.latest_charge for member in members)
    running.control.advance_clock(2 * 86_400)
    assert client.v1.payouts.retrieve(payouts[0].id).status == "paid"
    types = {event.type for event in client.v1.events.list(params={"limit": 100}).data}
    assert {"balance.available", "payout.created", "payout.paid"} <= types
    assert client.v1.balance.retrieve().available[0].amount == 0


def test_idempotency_keys_and_events_are_pruned_on_the_clock(emulator_factory) -> None:  # type: ignore[no-untyped-def]
    running = emulator_factory(EMULATOR_TEST_CONFIG)
    client = emulator_stripe_client(running.base_url)
    params = {"amount": 1_000, "currency": "usd"}
    first = client.v1.payment_intents.create(params=params, options={"idempotency_key": "prune-me"})  # type: ignore[arg-type]
    replay = client.v1.payment_intents.create(params=params, options={"idempotency_key": "prune-me"})  # type: ignore[arg-type]
    assert replay.id == first.id
    running.control.advance_clock(86_400 + 1)
    fresh = client.v1.payment_intents.create(params=params, options={"idempotency_key": "prune-me"})  # type: ignore[arg-type]
    assert fresh.id != first.id
    event_id = client.v1.events.list().data[-1].id
    running.control.advance_clock(31 * 86_400)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.retrieve(event_id)


def test_reset_and_state_export(emulator_factory) -> None:  # type: ignore[no-untyped-def]
    running = emulator_factory(EMULATOR_TEST_CONFIG)
    client = emulator_stripe_client(running.base_url)
    intent = _create_confirmed(client)
    state = running.control.state()
    assert [item["id"] for item in state["payment_intents"]] == [intent.id]
    assert {
        "charges",
        "refunds",
        "transfers",
        "events",
        "webhook_deliveries",
        "balance_transactions",
        "idempotency_keys",
    } <= set(state)
    running.control.reset()
    assert running.control.payment_intents() == []


def test_state_survives_a_restart_with_sqlite(emulator_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = EmulatorConfig_with_sqlite(str(tmp_path / "emulator.sqlite3"))
    first = emulator_factory(config)
    intent = _create_confirmed(emulator_stripe_client(first.base_url))
    first.stop()
    second = emulator_factory(config)
    restored = emulator_stripe_client(second.base_url).v1.payment_intents.retrieve(intent.id)
    assert restored.status == "succeeded"


def EmulatorConfig_with_sqlite(path: str, **overrides: object):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(EMULATOR_TEST_CONFIG, sqlite_path=path, **overrides)  # type: ignore[arg-type]


def test_a_running_emulator_snapshots_new_objects_without_a_restart(emulator_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from stripe_emulator._persistence import SnapshotStore

    path = str(tmp_path / "emulator.sqlite3")
    running = emulator_factory(EmulatorConfig_with_sqlite(path, persist_interval_seconds=0.05))
    try:
        intent = _create_confirmed(emulator_stripe_client(running.base_url))
        deadline = time.monotonic() + 10
        while intent.id not in json.dumps(SnapshotStore(path).load() or {}):
            assert time.monotonic() < deadline, "the running emulator never wrote the new PaymentIntent"
            time.sleep(0.05)
    finally:
        running.stop()


def test_snapshots_take_a_bounded_share_of_the_emulators_time() -> None:
    from stripe_emulator._persistence import PERSIST_BUSY_SHARE_MAX, persist_pause_seconds

    assert persist_pause_seconds(1.0, 0.01) == 1.0  # cheap: the configured interval
    assert persist_pause_seconds(1.0, 0.2) == pytest.approx(0.2 / PERSIST_BUSY_SHARE_MAX)  # 4 s after a 200 ms one
    snapshot_seconds = 0.5
    pause = persist_pause_seconds(1.0, snapshot_seconds)
    assert snapshot_seconds / (snapshot_seconds + pause) <= PERSIST_BUSY_SHARE_MAX


# ------------------------------------------------------------------ events and webhook endpoints


def test_webhook_endpoints_crud_and_event_retrieve(stripe_client: stripe.StripeClient) -> None:
    endpoint = stripe_client.v1.webhook_endpoints.create(
        params={"url": "http://127.0.0.1:9/hook", "enabled_events": ["payment_intent.succeeded"]}
    )
    assert endpoint.id.startswith("we_") and str(endpoint.secret).startswith("whsec_")
    assert endpoint.id in {item.id for item in stripe_client.v1.webhook_endpoints.list(params={"limit": 100}).data}
    assert "secret" not in stripe_client.v1.webhook_endpoints.retrieve(endpoint.id).to_dict()
    deleted = stripe_client.v1.webhook_endpoints.delete(endpoint.id)
    assert deleted.deleted
    intent = _create_confirmed(stripe_client)
    event = stripe_client.v1.events.list(params={"type": "payment_intent.succeeded"}).data[0]
    assert event.id.startswith("evt_") and event.data.object["id"] == intent.id
    assert stripe_client.v1.events.retrieve(event.id).type == "payment_intent.succeeded"


def test_config_from_environment() -> None:
    from stripe_emulator.config import EmulatorConfig

    config = EmulatorConfig.from_env(
        {
            "PENNY_EMULATOR_SETTLEMENT_DELAY_SECONDS": "60",
            "PENNY_EMULATOR_WEBHOOK_RETRY_SCHEDULE_SECONDS": "1,2,4",
            "PENNY_EMULATOR_SEED": "7",
            "PENNY_EMULATOR_DB": "/tmp/emulator.sqlite3",
            "PENNY_EMULATOR_ENFORCE_TRANSFER_BALANCE": "true",
        }
    )
    assert config.settlement_delay_seconds == 60 and config.seed == 7
    assert config.webhook_retry_schedule_seconds == (1.0, 2.0, 4.0)
    assert config.sqlite_path == "/tmp/emulator.sqlite3" and config.enforce_transfer_balance
    assert EmulatorConfig.from_env({}) == EmulatorConfig()
