"""Write benchmarks/RESULTS.md from the JSON files under benchmarks/results/.

python -m benchmarks.report

The tables and ratios are computed from the JSON; `benchmarks/analysis.md` (the targets, met or
not, and where the time goes) is written by hand and appended, so regenerating never loses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.harness import COLUMNS, Benchmark, Scenario, to_markdown

HERE = Path(__file__).resolve().parent


def load(path: Path) -> Benchmark:
    raw = json.loads(path.read_text())
    scenarios = [Scenario(**scenario) for scenario in raw.pop("scenarios")]
    return Benchmark(**raw, scenarios=scenarios)


def headline(bench: Benchmark) -> list[str]:
    by_name = {scenario.name: scenario for scenario in bench.scenarios}
    first = by_name["first"]
    lines = [
        f"### {bench.workload} on {bench.database}, {bench.latency_ms:g} ms latency, "
        f"concurrency {bench.concurrency}",
        "",
        f"Commit {bench.commit}, {bench.date}.",
        "",
    ]
    lines.append(f"- enrolments: {bench.enrolments:,}; runs of known courses: {bench.known_runs}")
    for scenario in bench.scenarios:
        lines.append(
            f"- {scenario.name}: wall / API bound = **{scenario.bound_multiple:.2f}** "
            f"({scenario.wall_seconds} s vs {scenario.api_bound_seconds} s); requests in run "
            f"{scenario.requests_in_run} vs minimum {scenario.minimum_requests}; "
            f"{scenario.conditional_304} answered 304; {scenario.rows_written} rows written; "
            f"Dagster runs: {_runs(scenario.dagster_runs)}"
        )
    lines.append(
        f"- cost per enrolment, first sync: {first.wall_seconds / bench.enrolments * 1e6:.0f} µs"
    )
    by_name_seed = bench.seed or {}
    for name in ("first", "second"):
        if name not in by_name_seed:
            continue
        seed = SimpleNamespace(**by_name_seed[name])
        ours = by_name[name]
        lines.append(
            f"- seed algorithm, {name} sync: {seed.wall_seconds} s (its own API bound "
            f"{seed.api_bound_seconds} s), {seed.requests} requests "
            f"({seed.membership_requests} membership look-ups), {seed.sql_statements} SQL "
            f"statements. **ours / seed = {ours.wall_seconds / seed.wall_seconds:.3f}** in wall "
            f"time, {ours.requests_in_run / max(seed.requests, 1):.3f} in requests, "
            f"{ours.sql_statements / max(seed.sql_statements, 1):.4f} in SQL statements"
        )
    return lines


def _runs(runs: dict[str, int]) -> str:
    return ", ".join(f"{count} {job}" for job, count in runs.items()) or "not recorded"


def cost_per_enrolment(results: list[Benchmark]) -> list[str]:
    """First-sync wall time per enrolment, each workload against teachcomputing on the same db."""
    first = {
        (bench.workload, bench.database): (
            next(s for s in bench.scenarios if s.name == "first"),
            bench.enrolments,
        )
        for bench in results
        if any(s.name == "first" for s in bench.scenarios)
    }
    lines = []
    for (workload, database), (scenario, enrolments) in sorted(first.items()):
        base = first.get(("teachcomputing", database))
        if workload == "teachcomputing" or base is None:
            continue
        ours = scenario.wall_seconds / enrolments
        theirs = base[0].wall_seconds / base[1]
        lines.append(
            f"- cost per enrolment, first sync, {workload} / teachcomputing on {database}: "
            f"**{ours / theirs:.2f}** ({ours * 1e6:.0f} µs vs {theirs * 1e6:.0f} µs)"
        )
    return lines


# Issue 21's targets, as the issue states them (ratios within one harness run).
NIGHT_FIXED_SECONDS = 5.0
NIGHT_BOUND_MULTIPLE = 3.0
FIRST_BOUND_MULTIPLE = 1.3
PEAK_MIB_LIMIT = 1024.0


def _verdict(met: bool) -> str:
    return "**met**" if met else "**missed**"


def nightly_targets(results: list[Benchmark]) -> list[str]:
    """Each scenario against issue 21's targets, computed from the JSON (not written by hand)."""
    lines = [
        "| workload | db | commit | scenario | wall s | limit s | wall / limit | target | skipped "
        "as unchanged | requests = minimum | rows written | peak RSS MiB | ≤ 1 GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for bench in results:
        for scenario in bench.scenarios:
            bound = scenario.api_bound_seconds
            if scenario.name == "first":
                limit = FIRST_BOUND_MULTIPLE * bound
                rule = f"≤ {FIRST_BOUND_MULTIPLE:g} × API bound"
            else:
                limit = NIGHT_FIXED_SECONDS + NIGHT_BOUND_MULTIPLE * bound
                rule = f"≤ {NIGHT_FIXED_SECONDS:g} s + {NIGHT_BOUND_MULTIPLE:g} × API bound"
            wall = scenario.wall_seconds
            ratio = f"{wall / limit:.2f}" if limit else "—"  # no latency: no bound
            lines.append(
                f"| {bench.workload} | {bench.database} | {bench.commit} | {scenario.name} | "
                f"{wall:.1f} | "
                f"{limit:.1f} | {ratio} | {rule}: {_verdict(wall <= limit)} | "
                f"{scenario.courses_skipped_unchanged} | "
                f"{'yes' if scenario.requests_in_run == scenario.minimum_requests else 'no'} | "
                f"{scenario.rows_written} | {scenario.peak_rss_mb:.0f} | "
                f"{_verdict(scenario.peak_rss_mb <= PEAK_MIB_LIMIT)} |"
            )
    checks = []
    for bench in results:
        full = bench.full_recompute
        quiet = next((s for s in bench.scenarios if s.name == "second"), None)
        if not full:
            continue
        line = (
            f"- {bench.workload} on {bench.database}: a full recomputation of an unchanged night "
            f"(after the last scenario) wrote {full['rows_written']} rows, tables identical: "
            f"{full['tables_identical']}; {full['wall_seconds']} s"
        )
        if quiet:  # the same kind of night, skipping: the skip's own ratio, in one harness run
            line += (
                f" against the skipping second sync's {quiet.wall_seconds} s: skipping / full = "
                f"**{quiet.wall_seconds / full['wall_seconds']:.2f}**"
            )
        checks.append(line)
    return [*lines, "", *checks]


def bounded_runs(files: list[dict[str, Any]]) -> list[str]:
    """Runs of bounded size (benchmarks/chunks.py), each run against the 1 GiB target; a run is
    judged on the larger of the peaks it has."""
    lines = [
        "| workload | commit | courses per run | run | courses | enrolments | wall s | µs per "
        "enrolment | run peak RSS MiB | process peak RSS MiB | ≤ 1 GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for measured in files:
        for per_run, number, run in _runs_of(measured):
            enrolments = run.get("enrolments")
            wall = run.get("wall_seconds", run.get("seconds"))
            run_peak = run.get("run_peak_rss_mib", run.get("peak_rss_mib", 0.0))
            process_peak = run.get("process_peak_rss_mib")
            peak = max(run_peak, process_peak or 0.0)
            lines.append(
                f"| {measured['workload']} | {measured['commit']} | {per_run} | {number} | "
                f"{run['courses']} | {enrolments or '—'} | {wall} | "
                f"{f'{wall / enrolments * 1e6:.0f}' if enrolments else '—'} | {run_peak:.0f} | "
                f"{'—' if process_peak is None else f'{process_peak:.0f}'} | "
                f"{_verdict(peak <= PEAK_MIB_LIMIT)} |"
            )
    return lines


def _runs_of(measured: dict[str, Any]) -> list[tuple[int | str, int, dict[str, Any]]]:
    """(courses per run, run number, run) of either shape of chunks file: the first chunks of a
    first sync, each in a process of its own (`chunks`, with time(1)'s peak of that process), or
    a whole first sync in one run against the same in runs of N (`one_run`, `chunked`: each run's
    steps' peak from its event log). A run that failed is left out."""
    if "chunks" in measured:
        per_run = measured["courses_per_run"]
        return [(per_run, r["run"], r) for r in measured["chunks"] if r["exit_code"] == 0]
    return [
        (configuration["courses_per_run"] or "all", number, run)
        for configuration in (measured["one_run"], measured["chunked"])
        if configuration["exit_code"] == 0
        for number, run in enumerate(configuration["runs"], start=1)
    ]


def render(
    results: list[Benchmark],
    analysis: str | None = None,
    chunks: list[dict[str, Any]] | None = None,
) -> str:
    out = ["# Benchmark results", ""]
    out.append(f"Machine: {results[0].machine}.")
    out.append("")
    out.append("Columns: " + ", ".join(title for title, _ in COLUMNS) + ".")
    out.append("")
    for bench in results:
        out += [*headline(bench), ""]
    scaling = cost_per_enrolment(results)
    if scaling:
        out += ["### Scaling", "", *scaling, ""]
    out.append(to_markdown(results))
    out.append("")
    out += ["### Issue 21 targets, computed from the JSON", "", *nightly_targets(results), ""]
    if chunks:
        out += [
            "### Runs of bounded size, computed from the JSON (`results/chunks/`)",
            "",
            *bounded_runs(chunks),
            "",
        ]
    if analysis:
        out += [analysis.rstrip(), ""]
    return "\n".join(out)


def main() -> None:
    results = [load(path) for path in sorted((HERE / "results").glob("*.json"))]
    if not results:
        raise SystemExit(
            "no results under benchmarks/results/: run python -m benchmarks.harness --json …"
        )
    analysis = HERE / "analysis.md"
    chunk_files = sorted((HERE / "results" / "chunks").glob("*.json"))
    chunks = [json.loads(path.read_text()) for path in chunk_files]
    text = render(results, analysis.read_text() if analysis.exists() else None, chunks)
    (HERE / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
