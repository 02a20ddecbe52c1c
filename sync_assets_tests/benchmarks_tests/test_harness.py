"""The benchmark harness keeps working (on a tiny workload; no timings are asserted)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.harness import covered_seconds, run_benchmark, to_markdown
from benchmarks.report import load, render


def test_harness_measures_every_scenario_and_the_seed_baseline(tmp_path: Path) -> None:
    bench = run_benchmark("tiny", latency_ms=0, concurrency=4, with_seed=True)
    first, second, _next_day = bench.scenarios
    for scenario in bench.scenarios:
        assert scenario.exit_code == 0
        assert scenario.requests_in_run == scenario.minimum_requests
        assert scenario.peak_rss_mb > 0 and scenario.wall_seconds > 0
        assert scenario.dagster_runs["futurelearn_check"] == 1  # the night's check
    # The changed courses in one run; a quiet night makes none.
    assert first.dagster_runs["futurelearn_sync"] == 1
    assert "futurelearn_sync" not in second.dagster_runs
    assert first.rows_written > 0 and first.membership_requests > 0
    assert second.rows_written == 0 and second.membership_requests == 0
    assert second.conditional_304 == second.requests
    assert first.courses_skipped_unchanged == 0
    assert second.courses_skipped_unchanged == 5  # tiny's known courses, all unchanged
    # The seed's algorithm asks for every unlinked membership again and writes row by row.
    assert bench.seed["first"]["requests"] >= first.requests_in_run
    assert bench.seed["first"]["sql_statements"] > first.sql_statements
    # On unchanged data it asks again for every membership that matched no one, and rewrites.
    assert bench.seed["second"]["membership_requests"] > 0
    assert bench.seed["second"]["sql_statements"] > 0
    # The closing check: a full recomputation after the skipping syncs finds nothing to do.
    assert bench.full_recompute["exit_code"] == 0
    assert bench.full_recompute["tables_identical"] is True
    assert bench.full_recompute["rows_written"] == 0
    table = to_markdown([bench])
    assert table.count("| tiny |") == 3
    # The report reads back what the harness writes, and puts ratios first.
    (tmp_path / "tiny.json").write_text(json.dumps(asdict(bench)))
    report = render([load(tmp_path / "tiny.json")], "## Targets\nby hand")
    assert "ours / seed =" in report and "wall / API bound =" in report
    assert "1 futurelearn_sync" in report and report.rstrip().endswith("by hand")
    assert "Issue 21 targets, computed from the JSON" in report


def test_steps_of_overlapping_runs_count_once_in_the_time_split() -> None:
    """Two runs' steps at once cover the wall once: orchestration is the wall no step covered."""
    assert covered_seconds([(0.0, 4.0), (3.0, 6.0), (10.0, 11.0), (10.5, 10.7)]) == 7.0
    assert covered_seconds([]) == 0.0
