"""Properties of the money paths over random ledgers (``tests/ledgers.py``), on the Firestore
emulator through the functions: replay, rollback, verify and repair, with random page sizes,
chunk tasks delivered in a random order and some of them twice.

Each example is whole runs on the emulator, so each property takes few examples; Firestore is
emptied before each. The ledger of every example is compared with the model's
(``tests.ledgers.expected_ledger``), never with what the code under test computes.
"""

from __future__ import annotations

import csv
import io
import os
import random
from collections import Counter
from typing import Any

import pytest
from functions_framework import create_app
from google.cloud import firestore
from hypothesis import HealthCheck, assume, event, example, given, note, settings
from hypothesis import strategies as st

from emulators.stack import Stack
from shared.adapters import schema
from shared.adapters.cloud_tasks import ChunkTask, InProcessDispatcher, TaskKind
from tests import ledgers
from tests.data import assert_ledger_consistent, credited_orders, documents
from tests.functions.conftest import SOURCE, Harness
from tests.ledgers import EVENTS, LEDGER, WALLETS, Corruption, Ledger, Plant, corrupt, parse

# A handful of examples each: an example is several whole runs, so CI's suite takes 7 a property
# (BACKFILL_PROPERTY_EXAMPLES=100 make test looks much further, in about an hour).
EXAMPLES = settings(max_examples=int(os.environ.get("BACKFILL_PROPERTY_EXAMPLES", "7")),
                    deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
# 1-100, small ones as often as not: a customer over many pages is where repairs went wrong.
PAGE_SIZES = st.one_of(st.integers(1, 10), st.integers(1, 100))
# The seed of the order tasks are delivered in (printed with a falsifying example).
ORDERS = st.integers(0, 10_000)
# Ledgers the live path mostly left alone (a replay has much to do), and ledgers it mostly
# processed, corrupted (a verify has much to check).
UNSETTLED = ledgers.ledgers(live=ledgers.SOMETIMES)
CORRUPTED = ledgers.corrupted_ledgers(live=ledgers.SOMETIMES.map(lambda unsettled: not unsettled))

# Falsifying examples the properties found before issue 17's fixes, kept as regression tests.
# One order delivered twice: a rollback left the duplicate flagged processed, and a verify
# repair then credited the order again.
REDELIVERED = parse(days=2, products={"p1": 1, "p2": 1, "p3": 1}, events=[
    "c0-e0 01 00:00 purchase c0-o0 of c0 p1x1 total=1",
    "c0-e1 01 00:00 purchase c0-o0 of c0 p1x1 total=1",
])
# A refund's reversal entry lost but its debit done, the customer over several pages: the
# repair wrote the reversal and an adjustment, debiting the wallet twice.
DEBITED = corrupt(parse(days=2, products={"p1": 1, "p2": 1, "p3": 1}, events=[
    "c0-e0 01 00:00 purchase c0-o0 of c0 p1x1 total=1 live",
    "c0-e2 01 00:00 purchase c0-o1 of c0 p1x1 total=1 live",
    "c0-e6 01 00:00 purchase c0-o3 of c0 p1x1+p1x1 total=1 live",
    "c0-e4 01 00:01 purchase c0-o2 of c0 p1x1 total=1 live",
    "c0-e7 01 00:01 refund c0-o3 amount=1 live",
    "c0-e5 01 00:02 refund c0-o2 amount=1 live",
    "c0-e1 01 01:44 refund c0-o0 amount=1 live",
    "c0-e3 01 09:38 refund c0-o1 amount=1 live",
]), [Plant(kind="missing_reversal", customer="c0", target="c0-e1", happened=True, points=-1)])
# A drifted wallet of a customer over two days (chunks): a dry-run repair planned its
# adjustment again in the second chunk, and failed.
DRIFTED = corrupt(parse(days=2, products={"p1": 1, "p2": 1, "p3": 1}, events=[
    "c0-e0 01 00:00 purchase c0-o0 of c0 p1x1 total=1 live",
    "c0-e1 02 00:00 purchase c0-o1 of c0 p1x1 total=1 live",
]), [Plant(kind="wallet_drift", customer="c0", target="c0", points=1)])


@pytest.fixture
def control(harness: Harness) -> Any:
    return create_app("backfill_control", SOURCE).test_client()


def fresh(harness: Harness, stack: Stack, page_size: int, seed: int,
          example: Ledger | Corruption) -> random.Random:
    """An empty Firestore and task queue, the functions with ``page_size``; answers the order
    of deliveries. The example is printed with a falsifying one in full, pasteable (pytest
    cuts long values, and schemathesis' pytest plugin blanks hypothesis' own line)."""
    name = "corruption" if isinstance(example, Corruption) else "ledger"
    note(f"page_size={page_size}, seed={seed},\n{name}={example!r},")
    stack.reset_firestore()
    harness.dispatcher = InProcessDispatcher()
    harness.watchdogs = []
    harness.configure(page_size=page_size)
    return random.Random(seed)


def drain(harness: Harness, order: random.Random) -> None:
    """Deliver every task due, and those they enqueue, in a random order; about one in four
    is delivered once more at a random later point (Cloud Tasks' at-least-once). Watchdogs
    wait, as Cloud Tasks holds them a lease."""
    pending: list[ChunkTask] = []
    again: set[ChunkTask] = set()
    while True:
        for task in harness.dispatcher.take():
            (harness.watchdogs if task.kind is TaskKind.WATCH else pending).append(task)
        if not pending:
            return
        task = pending.pop(order.randrange(len(pending)))
        harness.deliver([task])
        if task not in again and order.random() < 0.25:
            again.add(task)
            pending.append(task)


def finished(harness: Harness, response: Any, order: random.Random) -> dict[str, Any]:
    assert response.status_code == 202, response.get_json()
    drain(harness, order)
    run: dict[str, Any] = harness.run(response.get_json()["migrationId"])
    assert run["status"] == "completed", run
    return run


def start(harness: Harness, ledger: Ledger, order: random.Random, kind: str,
          **body: Any) -> dict[str, Any]:
    return finished(harness, harness.start(type=kind, **ledger.range, **body), order)


def roll_back(harness: Harness, control: Any, order: random.Random, migration_id: str,
              **body: Any) -> dict[str, Any]:
    return finished(harness, control.post(f"/api/admin/dataMigrations/{migration_id}/rollback",
                                          json=body, headers=harness.headers()), order)


def stored(db: firestore.Client) -> dict[str, Any]:
    """Every ledger entry, wallet and event as stored, without a dry run's own fields."""
    return {collection: {doc_id: {key: value for key, value in fields.items()
                                  if not key.startswith("dryRun")}
                         for doc_id, fields in documents(db, collection).items()}
            for collection in (LEDGER, WALLETS, EVENTS)}


def findings(harness: Harness, migration_id: str) -> list[dict[str, str]]:
    report = harness.status.get(f"/api/admin/dataMigrations/{migration_id}/errors",
                                headers=harness.headers())
    assert report.status_code == 200
    return list(csv.DictReader(io.StringIO(report.get_data(as_text=True))))


def found(harness: Harness, run: dict[str, Any]) -> set[tuple[str, str]]:
    return {(row["code"], row["subject"]) for row in findings(harness, run["migrationId"])}


def written_by(db: firestore.Client, migration_id: str) -> dict[str, dict[str, Any]]:
    return {entry_id: entry for entry_id, entry in documents(db, LEDGER).items()
            if entry.get("migrationId") == migration_id}


def assert_reversals_fit(ledger: Ledger, entries: dict[str, dict[str, Any]]) -> None:
    """Only purchases and reversals; each reversal entry a refund's of its own order; every
    refund of an order refunded within its total has one (past the total, which refunds get
    one depends on the order they were applied in: at least the one that crossed it)."""
    assert {entry["type"] for entry in entries.values()} <= {"purchase", "reversal"}
    made: dict[str, set[str]] = {}
    for entry in entries.values():
        if entry["type"] == "reversal":
            made.setdefault(entry["orderId"], set()).add(entry["sourceEventId"])
    for order, events in ledger.orders().items():
        refunds = {event["eventId"]: event["payload"]["body"]["amount"] for event in events
                   if event["eventType"] in ledgers.REVERSALS}
        bought = entries.get(f"purchase_{order}")
        if bought is None or not refunds:
            assert order not in made, order
        elif sum(refunds.values()) <= bought["orderTotal"]:
            assert made.get(order) == set(refunds), order
        else:
            assert made.get(order) and made[order] <= set(refunds), order


# --- a: a replay settles every event once ----------------------------------------------------


@EXAMPLES
@given(ledger=UNSETTLED, page_size=PAGE_SIZES, seed=ORDERS)
def test_a_replay_makes_the_models_ledger_and_a_second_run_writes_nothing(
        harness: Harness, stack: Stack, ledger: Ledger, page_size: int,
        seed: int) -> None:
    order = fresh(harness, stack, page_size, seed, ledger)
    ledger.put(harness.db)
    expected = ledger.expected()

    replay = start(harness, ledger, order, "webhook_replay")

    db = harness.db
    assert ledgers.summary_of(db) == expected.summary()
    assert credited_orders(db) == Counter({entry["orderId"]: 1 for entry in
                                           expected.entries.values()
                                           if entry["type"] == "purchase"})
    assert_ledger_consistent(db)  # each wallet the sum of its entries; reversals by the formula
    assert_reversals_fit(ledger, documents(db, LEDGER))
    assert replay["errors"] == len(expected.failed)
    settled = stored(db)

    again = start(harness, ledger, order, "webhook_replay")
    reversed_ = start(harness, ledger, order, "reversal_backfill")

    assert stored(db) == settled  # neither writes anything
    assert (again["applied"], reversed_["applied"]) == (0, 0)
    verify = start(harness, ledger, order, "ledger_verify")
    assert found(harness, verify) == set()  # a replayed ledger is clean


# --- a': a capped replay never moves more than its caps, and force then finishes it exactly -----


def balances(db: firestore.Client) -> dict[str, int]:
    return {cid: int(w.get("balance", 0)) for cid, w in documents(db, WALLETS).items()}


@settings(EXAMPLES, max_examples=max(1, EXAMPLES.max_examples - 1))
@given(ledger=UNSETTLED, page_size=PAGE_SIZES, seed=ORDERS, cap=st.integers(1, 120),
       per_customer=st.one_of(st.none(), st.integers(1, 60)))
def test_a_capped_replay_stays_within_its_caps_and_force_then_makes_the_models_ledger(
        harness: Harness, stack: Stack, control: Any, ledger: Ledger, page_size: int,
        seed: int, cap: int, per_customer: int | None) -> None:
    order = fresh(harness, stack, page_size, seed, ledger)
    note(f"cap={cap}, per_customer={per_customer}")
    ledger.put(harness.db)
    db, expected = harness.db, ledger.expected()
    before = balances(db)
    caps = {"maxPoints": cap} | ({"maxPointsPerCustomer": per_customer} if per_customer else {})

    response = harness.start(type="webhook_replay", **ledger.range, **caps)
    assert response.status_code == 202, response.get_json()
    migration_id = response.get_json()["migrationId"]
    drain(harness, order)
    run = harness.run(migration_id)

    assert run["status"] in ("completed", "paused"), run
    after = balances(db)
    changed = {cid: abs(after.get(cid, 0) - before.get(cid, 0)) for cid in {*after, *before}}
    # What a page moves is each wallet's change, so no sum of net changes can exceed it.
    assert sum(changed.values()) <= cap
    reserved = schema.pool_ref(db, migration_id).get().to_dict() or {}
    assert reserved.get("reserved", 0) <= cap
    if per_customer is not None:
        assert max(changed.values(), default=0) <= per_customer
        for doc in schema.run_ref(db, migration_id).collection(schema.CUSTOMER_POINTS).stream():
            assert (doc.to_dict() or {})["points"] <= per_customer
    assert_ledger_consistent(db)
    assert set(credited_orders(db).values()) <= {1}
    event(f"the capped run {run['status']}")  # hypothesis' statistics: both kinds happen
    if run["status"] == "paused":
        assert run["statusReason"].startswith("guardrail max"), run["statusReason"]
        assert run["statusHistory"][-1]["by"] == "guardrail"
        resumed = control.post(f"/api/admin/dataMigrations/{migration_id}/resume",
                               json={"force": True}, headers=harness.headers())
        assert resumed.status_code == 200, resumed.get_json()
        drain(harness, order)
        run = harness.run(migration_id)

    assert run["status"] == "completed", run
    assert ledgers.summary_of(db) == expected.summary()
    assert credited_orders(db) == Counter({entry["orderId"]: 1 for entry in
                                           expected.entries.values()
                                           if entry["type"] == "purchase"})
    assert_ledger_consistent(db)


# --- b: a rollback undoes exactly what its run did --------------------------------------------


@EXAMPLES
@given(ledger=UNSETTLED, page_size=PAGE_SIZES, seed=ORDERS)
@example(ledger=REDELIVERED, page_size=1, seed=0)
def test_rollback_then_replay_gives_back_the_first_replay_and_twice_is_once(
        harness: Harness, stack: Stack, control: Any, ledger: Ledger, page_size: int,
        seed: int) -> None:
    order = fresh(harness, stack, page_size, seed, ledger)
    ledger.put(harness.db)
    db = harness.db
    before = ledgers.summary_of(db)
    replay = start(harness, ledger, order, "webhook_replay")
    assume(written_by(db, replay["migrationId"]))  # else there is nothing to roll back
    first = ledgers.summary_of(db)
    replayed = stored(db)

    roll_back(harness, control, order, replay["migrationId"])
    assert stored(db) == replayed  # a dry run writes nothing
    roll_back(harness, control, order, replay["migrationId"], dryRun=False)
    once = stored(db)
    undone = ledgers.summary_of(db)
    roll_back(harness, control, order, replay["migrationId"], dryRun=False, force=True)

    assert stored(db) == once  # rolling back twice is rolling back once
    start(harness, ledger, order, "webhook_replay")
    # Wallets, each order's net points, refund states and flags as the first replay left them.
    assert ledgers.summary_of(db) == first
    assert_ledger_consistent(db)
    # The rollback gave back the ledger as it was before the replay, flags included: no event
    # the replay settled claims an effect the rollback removed. Only the redeliveries of an
    # order the live path credited stay flagged: their effect, the live path's, stays.
    credited = {entry["orderId"] for entry in ledger.live.entries.values()
                if entry["type"] == "purchase"}
    kept = {event["eventId"] for event in ledger.events if event["eventType"] == ledgers.PURCHASE
            and event["payload"]["body"]["id"] in credited}
    assert undone == {**before, "processed": sorted({*before["processed"], *kept})}


def as_is(db: firestore.Client) -> dict[tuple[str, str], tuple[Any, Any]]:
    """Every ledger entry, wallet and event with its update time (a rewrite is a change)."""
    return {(collection, snap.id): (snap.to_dict(), snap.update_time)
            for collection in (LEDGER, WALLETS, EVENTS)
            for snap in db.collection(collection).stream()}


def customer_of(order_id: str) -> str:
    return order_id.split("-o")[0]  # the ledgers' orders are {customer}-o{n}


def only(summary: dict[str, Any], inside: set[str], events: dict[str, str]) -> dict[str, Any]:
    """The part of a ``summary`` of the orders ``inside``: their purchases, net points and
    flagged events (``events``: each event's order)."""
    return {"purchases": {key: value for key, value in summary["purchases"].items()
                          if key.removeprefix("purchase_") in inside},
            "net": {key: value for key, value in summary["net"].items() if key in inside},
            "processed": [event_id for event_id in summary["processed"]
                          if events[event_id] in inside]}


@settings(EXAMPLES, max_examples=max(1, EXAMPLES.max_examples - 2))
@given(ledger=UNSETTLED, page_size=PAGE_SIZES, seed=ORDERS, data=st.data())
def test_a_partial_rollback_leaves_the_rest_as_it_was_and_a_replay_reinstates_it_once(
        harness: Harness, stack: Stack, control: Any, ledger: Ledger, page_size: int,
        seed: int, data: st.DataObject) -> None:
    order = fresh(harness, stack, page_size, seed, ledger)
    ledger.put(harness.db)
    db = harness.db
    before = ledgers.summary_of(db)
    replay = start(harness, ledger, order, "webhook_replay")
    written = written_by(db, replay["migrationId"])
    assume(written)
    first, replayed = ledgers.summary_of(db), as_is(db)
    orders = sorted({entry["orderId"] for entry in written.values()})
    customers = sorted({entry["customerId"] for entry in written.values()})
    by = data.draw(st.sampled_from(["customerIds", "orderIds", "both"]), label="by")
    scope: dict[str, list[str]] = {}
    if by != "orderIds":
        scope["customerIds"] = data.draw(st.lists(st.sampled_from(customers), min_size=1,
                                                  unique=True), label="customerIds")
    if by != "customerIds":
        scope["orderIds"] = data.draw(st.lists(st.sampled_from(orders), min_size=1,
                                               unique=True), label="orderIds")
    event_order = {event["eventId"]: order_id for order_id, events in ledger.orders().items()
                   for event in events}
    inside = {order_id for order_id in event_order.values()
              if customer_of(order_id) in scope.get("customerIds", [customer_of(order_id)])
              and order_id in scope.get("orderIds", [order_id])}
    event(f"a rollback of {by}")

    roll_back(harness, control, order, replay["migrationId"], **scope)
    assert as_is(db) == replayed  # a dry run writes nothing
    roll_back(harness, control, order, replay["migrationId"], dryRun=False, **scope)
    once, after = stored(db), as_is(db)

    # Every document of an order outside the scope is as the replay left it, not rewritten;
    # so is the wallet of a customer with no order inside it.
    for (collection, doc_id), document in replayed.items():
        fields = document[0] or {}
        order_id = fields.get("orderId") if collection == LEDGER else event_order.get(doc_id)
        if collection == WALLETS:
            left = not any(customer_of(order_id) == doc_id for order_id in inside)
        else:
            left = order_id not in inside
        if left:
            assert after[(collection, doc_id)] == document, (collection, doc_id)
    # Inside it, what a whole rollback leaves: the ledger before the replay (the redeliveries
    # of an order the live path credited stay flagged: that effect stays).
    credited = {entry["orderId"] for entry in ledger.live.entries.values()
                if entry["type"] == "purchase"}
    kept = {event_["eventId"] for event_ in ledger.events
            if event_["eventType"] == ledgers.PURCHASE
            and event_["payload"]["body"]["id"] in credited}
    undone = ledgers.summary_of(db)
    model = {**before, "processed": sorted({*before["processed"], *kept})}
    assert only(undone, inside, event_order) == only(model, inside, event_order)
    outside = set(event_order.values()) - inside
    assert only(undone, outside, event_order) == only(first, outside, event_order)
    assert_ledger_consistent(db)

    roll_back(harness, control, order, replay["migrationId"], dryRun=False, force=True, **scope)
    assert stored(db) == once  # twice is once
    start(harness, ledger, order, "webhook_replay")
    assert ledgers.summary_of(db) == first
    assert_ledger_consistent(db)


@EXAMPLES
@given(ledger=UNSETTLED, page_size=PAGE_SIZES, seed=ORDERS)
@example(ledger=REDELIVERED, page_size=1, seed=0)
def test_after_a_rollback_a_verify_repair_recredits_nothing(
        harness: Harness, stack: Stack, control: Any, ledger: Ledger, page_size: int,
        seed: int) -> None:
    order = fresh(harness, stack, page_size, seed, ledger)
    ledger.put(harness.db)
    db = harness.db
    replay = start(harness, ledger, order, "webhook_replay")
    assume(written_by(db, replay["migrationId"]))
    roll_back(harness, control, order, replay["migrationId"])
    roll_back(harness, control, order, replay["migrationId"], dryRun=False)
    wallets = ledgers.wallets_of(db)

    repair = start(harness, ledger, order, "ledger_verify", repair=True)

    assert ledgers.wallets_of(db) == wallets  # no wallet moves
    assert written_by(db, repair["migrationId"]) == {}
    assert {code for code, _ in found(harness, repair)} & {
        "missing_entry", "missing_reversal"} == set()


# --- c: verify finds exactly what was planted; repair fixes what is safe ------------------------


@EXAMPLES
@given(corruption=CORRUPTED, page_size=PAGE_SIZES, seed=ORDERS)
@example(corruption=DEBITED, page_size=1, seed=0)
def test_verify_reports_exactly_the_planted_findings_and_a_repair_is_exact(
        harness: Harness, stack: Stack, corruption: Corruption, page_size: int,
        seed: int) -> None:
    order = fresh(harness, stack, page_size, seed, corruption)
    db, ledger = harness.db, corruption.ledger
    ledger.put(db)
    clean = start(harness, ledger, order, "ledger_verify")
    assert found(harness, clean) == set()  # a clean ledger: nothing to report

    stack.reset_firestore()
    corruption.state.put(db, ledger.products)
    corrupted = stored(db)
    report = start(harness, ledger, order, "ledger_verify")

    assert found(harness, report) == corruption.findings
    assert stored(db) == corrupted  # a report writes nothing

    repair = start(harness, ledger, order, "ledger_verify", repair=True)

    assert found(harness, repair) == corruption.findings
    wallets = ledgers.wallets_of(db)
    assert {customer: balance for customer, balance in wallets.items() if balance} == {
        customer: points for customer, points in ledgers.entry_sums(db).items() if points}
    # Moved only where the lost entry's credit or debit never happened, by exactly it.
    assert wallets == corruption.repaired_wallets
    repaired = {(row["code"], row["subject"]): row["repaired"]
                for row in findings(harness, repair["migrationId"])}
    assert repaired == {finding: str(finding not in corruption.for_a_person)
                        for finding in corruption.findings}
    after = stored(db)

    second = start(harness, ledger, order, "ledger_verify", repair=True)

    assert stored(db) == after  # a second repair writes nothing
    assert found(harness, second) == corruption.for_a_person


@EXAMPLES
@given(corruption=CORRUPTED, page_size=PAGE_SIZES, seed=ORDERS)
@example(corruption=DRIFTED, page_size=1, seed=0)
def test_a_dry_run_repair_completes_and_writes_nothing_outside_its_shadow(
        harness: Harness, stack: Stack, corruption: Corruption, page_size: int,
        seed: int) -> None:
    order = fresh(harness, stack, page_size, seed, corruption)
    corruption.state.put(harness.db, corruption.ledger.products)
    before = stored(harness.db)

    dry = start(harness, corruption.ledger, order, "ledger_verify", repair=True, dryRun=True)

    assert stored(harness.db) == before
    assert found(harness, dry) == corruption.findings
