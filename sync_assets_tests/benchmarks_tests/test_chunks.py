"""Only some chunks of a workload's first sync, each measured alone (benchmarks/chunks.py)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.chunks import measured_chunks
from benchmarks.harness import SimulatorProcess


def test_the_first_chunks_of_a_first_sync_are_measured_one_run_each(tmp_path: Path) -> None:
    seeded = tmp_path / "seeded" / "platform.sqlite3"
    simulator = SimulatorProcess("tiny", 0)
    try:
        measured = measured_chunks(
            "tiny", simulator, per_run=2, max_runs=2, concurrency=4, latency_ms=0, seeded=seeded
        )
        # A platform seeded once is copied for the next measurement: the same first chunk.
        again = measured_chunks(
            "tiny", simulator, per_run=2, max_runs=1, concurrency=4, latency_ms=0, seeded=seeded
        )
    finally:
        simulator.stop()
    first, second = measured["chunks"]
    for chunk in (first, second):
        assert chunk["exit_code"] == 0 and chunk["success"] is True
        assert chunk["courses"] == chunk["chunk"] == 2
        assert chunk["partitions"] == 5  # every known course has a partition; two are synced
        assert chunk["enrolments"] > 0 and chunk["rows_written"] > 0
        assert chunk["run_peak_rss_mib"] > 0 and chunk["wall_seconds"] > 0
        assert chunk["membership_lookups"] == chunk["looked_up_metadata"] > 0
        assert set(chunk["phases_seconds"]) >= {"partition_update", "sync_runs", "certificates"}
    assert first["partition_range"] == [0, 2] and second["partition_range"] == [2, 4]
    assert seeded.exists()
    assert measured["platform"] == "seeded here"
    assert again["platform"] == f"copied from {seeded}"
    [copied] = again["chunks"]
    assert copied["exit_code"] == 0
    assert copied["rows_written"] == first["rows_written"]
    assert copied["membership_lookups"] == first["membership_lookups"]
