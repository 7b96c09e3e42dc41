"""The benchmark's correctness-only run (``--quick``): every figure of ``make bench`` is
measured on small numbers, with and without the latency proxy, and the run fails unless each
replay, the baseline and the in-process replay applied every event exactly once. Speed is not
asserted here (numbers on shared machines are noisy); the printed ratios are for ``make bench``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import bench

pytestmark = pytest.mark.emulator

PORT_BASE = int(os.environ.get("BACKFILL_BENCH_TEST_PORT_BASE", "9400"))


def test_the_quick_benchmark_measures_every_figure_and_applies_each_event_once(
        tmp_path: Path) -> None:
    out = tmp_path / "bench.json"

    code = bench.main(["--quick", "--port-base", str(PORT_BASE), "--out", str(out)])

    results = json.loads(out.read_text())
    assert results["failures"] == []
    assert code == 0
    for part in ("direct", "latency"):
        measured = results[part]
        for name in ("uniform", "skewed"):
            assert measured[name]["applied"] == 300
            assert measured[name]["events_per_s"] > 0
        assert measured["baseline"]["applied"] == 300
        assert measured["own_writes"]["events"] == 300
        assert results["ratios"][part]["skewed_over_uniform"] is not None
        assert results["ratios"][part]["uniform_over_own_writes"] is not None
    # The incident day fans out: more chunks than days (split at BACKFILL_SPLIT_EVENTS).
    assert results["direct"]["skewed"]["chunks"] > results["direct"]["uniform"]["chunks"]
    assert results["latency"]["latency_ms_each_way"] == 10.0
    for case in ("skewed", "ceiling", "ramp"):
        assert results["estimate"][case]["predicted_seconds"] > 0
        assert results["estimate"][case]["measured_seconds"] > 0
    assert results["estimate"]["worst_error"] is not None
    for chunks in ("50", "200"):
        assert results["status"][chunks]["json"]["median_seconds"] > 0
    assert results["planning"]["chunks"] == 300
    # At 30 events a chunk a delivery's own reads (its run, its claim, the products) weigh;
    # tests/functions/test_costs.py holds a page of purchases to 1 read and 3 writes each.
    assert 1 <= results["costs"]["replay"]["reads_per_event"] <= 3.5
    assert 2 <= results["costs"]["replay"]["writes_per_event"] <= 3.5
    assert results["memory"]["rss_mib_max"] > 0
    assert results["year"]["status"]["chunks"] == 366
    assert (results["trace"]["events"], results["trace"]["runs"]) == (100, 1)
