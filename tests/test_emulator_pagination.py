"""List pagination over more than 1,000 objects, both directions, through the SDK's auto-pagination."""

from __future__ import annotations

import uuid

import httpx
import stripe

from tests.conftest import RunningEmulator

OBJECTS_COUNT = 1_050


def test_pagination_over_many_objects(stripe_emulator: RunningEmulator, stripe_client: stripe.StripeClient) -> None:
    customer = f"cus_{uuid.uuid4().hex[:14]}"
    created: list[str] = []
    with httpx.Client(base_url=stripe_emulator.base_url, headers={"Authorization": "Bearer sk_test_pages"}) as http:
        for index in range(OBJECTS_COUNT):
            response = http.post(
                "/v1/payment_intents", data={"amount": str(100 + index), "currency": "usd", "customer": customer}
            )
            created.append(response.json()["id"])
    newest_first = created[::-1]

    listed = [
        intent.id
        for intent in stripe_client.v1.payment_intents.list(
            params={"customer": customer, "limit": 100}
        ).auto_paging_iter()
    ]
    assert listed == newest_first

    page = stripe_client.v1.payment_intents.list(
        params={"customer": customer, "limit": 100, "starting_after": newest_first[99]}
    )
    assert [intent.id for intent in page.data] == newest_first[100:200] and page.has_more
    last = stripe_client.v1.payment_intents.list(
        params={"customer": customer, "limit": 100, "starting_after": newest_first[999]}
    )
    assert [intent.id for intent in last.data] == newest_first[1000:] and not last.has_more
    before = stripe_client.v1.payment_intents.list(
        params={"customer": customer, "limit": 3, "ending_before": newest_first[10]}
    )
    assert [intent.id for intent in before.data] == newest_first[7:10] and before.has_more
    default = stripe_client.v1.payment_intents.list(params={"customer": customer})
    assert len(default.data) == 10
    search = stripe_client.v1.payment_intents.search(
        params={"query": f"customer:'{customer}' AND amount>1100", "limit": 100}
    )
    # Amounts are 100 + index, so amount > 1100 matches indexes 1001..1049.
    assert len(search.data) == OBJECTS_COUNT - 1_001 and not search.has_more
