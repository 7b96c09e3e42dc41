"""What a replay costs in Firestore operations, counted at the client as Firestore bills them:
one read per applied purchase (its event, streamed by the page's query; its ledger entry is not
looked up, as its create-if-absent answers whether it exists), three writes (the entry, the
event's flag, its share of the wallet's one increment per page), plus one chunk checkpoint a
page and a few reads a delivery. Products are read once per delivery, not once per event."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.meter import Meter
from tests import data
from tests.functions.conftest import Harness

EVENTS = 400
PAGE = 50


@pytest.fixture
def meter(harness: Harness) -> Iterator[Meter]:
    metered = Meter(harness.db)
    yield metered
    metered.close()


def test_an_applied_purchase_costs_one_read_and_at_most_three_writes(
        harness: Harness, meter: Meter) -> None:
    for product_id in ("p1", "p2", "p3"):
        data.product(harness.db, product_id, 10)
    purchases = [*data.purchases(EVENTS // 2, days=1, customers=25),
                 *data.purchases(EVENTS // 2, days=1, customers=25, prefix="f",
                                 product_id="p2")]
    data.put(harness.db, *purchases)
    harness.configure(page_size=PAGE, time_budget_seconds=60)  # one delivery does it all
    migration_id = harness.start(type="webhook_replay", startDate="2025-01-01",
                                 endDate="2025-01-01").get_json()["migrationId"]
    harness.plan()
    meter.reset()

    harness.deliver_all()
    counts = meter.reset()

    run = harness.run(migration_id)
    assert (run["status"], run["applied"]) == ("completed", EVENTS)
    pages = -(-EVENTS // PAGE) + 1  # and the empty page that ends the chunk
    # The run's two status changes (running, completed), each with its notice: created in the
    # change's commit, then found (a query), claimed, sent and marked (two writes), the
    # message's counts summed (aggregations, not bounded here).
    changes = 2
    # Per page: its query, and a batch get only of the products not yet read; at the run's
    # end, one query for the runs that waited for it (``control.wake``).
    assert counts.queries <= pages + 2 + changes
    # Each page after the first was read while the one before it committed.
    assert counts.queries_ahead >= pages - 2
    # And single gets: the run, the claim, moves; a notice's message reads its run.
    assert counts.batch_gets <= 2 + 8 + changes
    # Two products, a delivery's own reads; per change, the run's notices and the run again.
    assert counts.reads <= EVENTS + 2 + 10 + 4 * changes
    assert counts.writes <= 3 * EVENTS + pages + 2 + 3 * changes
    # The wallet share: at most one increment per customer and page.
    assert counts.writes >= 2 * EVENTS + pages
