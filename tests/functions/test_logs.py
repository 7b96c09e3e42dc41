"""The logs a run writes are what the Terraform log-based metrics read: every ``jsonPayload``
field a metric's filter or extractor names is on the lines that metric selects, as a real run
through the functions writes them. And no line carries a payload value.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any

import pytest

from shared import logs
from shared.adapters.stores import Stores
from shared.runs import watchdog
from tests.conftest import ROOT
from tests.data import at, product, purchase, put
from tests.functions.conftest import Harness
from tests.functions.test_control import lose_everything, sweep

INFRA = ROOT / "infra"
# A value only the planted bad event carries in its payload: it must not reach a log line.
SECRET_SKU = "sku-4111111111111111"


def _defaults() -> dict[str, str]:
    """Terraform variables' string defaults."""
    text = (INFRA / "variables.tf").read_text()
    return dict(re.findall(r'variable "(\w+)" \{[^}]*?default\s*=\s*"([^"]*)"', text, re.S))


def _blocks(text: str, kind: str) -> dict[str, str]:
    """``resource "<kind>" "<name>" { ... }`` bodies by name (braces balanced)."""
    found: dict[str, str] = {}
    for match in re.finditer(rf'resource "{kind}" "(\w+)" \{{', text):
        depth, index = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            index += 1
        found[match.group(1)] = text[match.end():index]
    return found


def metric_reads() -> dict[str, tuple[set[str], set[str]]]:
    """Each log-based metric: the messages of the lines it selects, and the ``jsonPayload``
    fields its filter and extractors read."""
    text = (INFRA / "monitoring.tf").read_text()
    variables = _defaults()
    messages_of = {name: {variables[var]} for name, var in re.findall(
        r'(\w+_logs)\s*=\s*"\$\{local\.backfill_logs\} AND jsonPayload\.message=\\"\$\{var\.'
        r'(\w+)\}\\""', text)}
    reads: dict[str, tuple[set[str], set[str]]] = {}
    for name, body in _blocks(text, "google_logging_metric").items():
        selects = set(re.findall(r"local\.(\w+_logs)", body)) - {"backfill_logs"}
        messages = set().union(*(messages_of[local] for local in selects))
        fields = set(re.findall(r"jsonPayload\.(\w+)", body)) - {"component", "message"}
        reads[name] = (messages, fields)
    return reads


def test_the_metric_definitions_are_read_whole() -> None:
    reads = metric_reads()
    assert {"processed_events", "error_rate", "operation_duration",
            "failed_events"} <= set(reads)
    assert reads["error_rate"] == ({"run summary"}, {"error_rate", "type", "dry_run", "status"})
    # A metric over every backfill line (by severity) reads no field of its own.
    assert all(messages or not fields for messages, fields in reads.values()), reads


def test_every_field_a_metric_reads_is_on_the_lines_it_selects(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    db = harness.db
    product(db, "p1", 10)
    put(db, *(purchase(f"e{n}", f"o{n}", at(1, n)) for n in range(30)),
        purchase("bad", "o-bad", at(1, 40), lines=[(SECRET_SKU, 1)]))
    with caplog.at_level(logging.INFO):
        started = harness.start(type="webhook_replay", startDate="2025-01-01",
                                endDate="2025-01-02")
        assert started.status_code == 202, started.get_json()
        harness.plan()
        # Its chunk tasks are lost, so the sweep (the safety net) writes its line too.
        lose_everything(harness, started.get_json()["migrationId"])
        assert sweep(harness).get_json()["pickedUp"] == 1
        harness.deliver_all()
        # The round a live run's watchdog makes while it runs, past a low threshold here.
        watchdog.check_error_rate(harness.settings.model_copy(update={"alert_min_events": 10}),
                                  Stores.firestore(db), started.get_json()["migrationId"])
    run = harness.run(started.get_json()["migrationId"])
    assert (run["status"], run["applied"], run["errors"]) == ("completed", 30, 1)

    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in caplog.records:
        fields = getattr(record, "json_fields", None)
        if fields is not None:
            assert fields["component"] == logs.COMPONENT
            lines[record.getMessage()].append(fields)
    for name, (messages, fields) in metric_reads().items():
        if not messages:
            continue  # every line (error_logs: by severity)
        selected = [line for message in messages for line in lines.get(message, [])]
        assert selected, f"no line the metric {name} selects ({messages}) was written"
        for line in selected:
            assert fields <= set(line), (name, fields - set(line))

    summary, = lines["run summary"]
    assert summary == {**summary, "migration_id": run["migrationId"], "type": "webhook_replay",
                       "start_date": "2025-01-01", "end_date": "2025-01-02", "dry_run": False,
                       "processed": 30, "errors": 1, "total": 31, "event_count": 31,
                       "status": "completed", "error_rate": round(1 / 31, 6)}
    failed, = lines["event failed"]
    assert caplog.records[[r.getMessage() for r in caplog.records].index("event failed")
                          ].levelno == logging.ERROR
    assert (failed["event_id"], failed["code"]) == ("bad", "product_not_found")
    assert not any(SECRET_SKU in repr(record.__dict__) for record in caplog.records)
