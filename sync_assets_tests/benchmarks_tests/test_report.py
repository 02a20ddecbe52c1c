"""The report marks issue 21's targets met or missed from the figures, at their boundaries."""

from __future__ import annotations

from benchmarks.harness import Benchmark, Scenario
from benchmarks.report import bounded_runs, nightly_targets


def scenario(name: str, wall: float, bound: float, peak: float = 500.0) -> Scenario:
    return Scenario(
        name=name,
        wall_seconds=wall,
        peak_rss_mb=peak,
        requests=11,
        requests_in_run=10,
        minimum_requests=10,
        conditional_304=0,
        membership_requests=0,
        by_endpoint_and_status={},
        rows_written=0,
        sql_statements=0,
        api_seconds=0.0,
        rules_seconds=0.0,
        write_seconds=0.0,
        steps_seconds=0.0,
        orchestration_seconds=0.0,
        api_bound_seconds=bound,
        exit_code=0,
    )


def bench(*scenarios: Scenario) -> Benchmark:
    return Benchmark("w", "sqlite", 20.0, 16, 100, 10, {}, "c", "d", list(scenarios))


def rows(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("| w |")]


def test_first_sync_is_held_to_1_3_times_the_api_bound() -> None:
    met, missed = rows(
        nightly_targets([bench(scenario("first", 130.0, 100.0), scenario("first", 131.0, 100.0))])
    )
    assert "**met**" in met.split("|")[8] and "**missed**" in missed.split("|")[8]


def test_later_nights_are_held_to_5_s_plus_3_times_the_bound() -> None:
    met, missed = rows(
        nightly_targets([bench(scenario("second", 8.0, 1.0), scenario("next_day", 8.1, 1.0))])
    )
    assert met.split("|")[6].strip() == "8.0" and "**met**" in met.split("|")[8]
    assert "**missed**" in missed.split("|")[8]


def test_peak_memory_is_held_to_one_gibibyte() -> None:
    under, over = rows(
        nightly_targets(
            [bench(scenario("second", 1.0, 1.0, 1024.0), scenario("second", 1.0, 1.0, 1025.0))]
        )
    )
    assert under.rstrip(" |").endswith("**met**") and over.rstrip(" |").endswith("**missed**")


def test_runs_of_bounded_size_are_judged_on_their_larger_peak_at_1_gib() -> None:
    def run(number: int, run_peak: float, process_peak: float, exit_code: int = 0) -> dict:
        return {
            "run": number,
            "exit_code": exit_code,
            "courses": 100,
            "enrolments": 200_000,
            "wall_seconds": 300.0,
            "run_peak_rss_mib": run_peak,
            "process_peak_rss_mib": process_peak,
        }

    measured = {
        "workload": "huge",
        "commit": "c",
        "courses_per_run": 100,
        "chunks": [run(1, 900.0, 1024.0), run(2, 1024.1, 900.0), run(3, 10.0, 10.0, exit_code=1)],
    }
    first, second = [line for line in bounded_runs([measured]) if line.startswith("| huge |")]
    assert first.endswith("| 1500 | 900 | 1024 | **met** |")  # 300 s / 200,000 enrolments
    assert second.endswith("| 1024 | 900 | **missed** |")
