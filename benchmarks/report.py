"""Write benchmarks/RESULTS.md from the JSON files under benchmarks/results/.

python -m benchmarks.report
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

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
    ]
    lines.append(f"- enrolments: {bench.enrolments:,}; runs of known courses: {bench.known_runs}")
    for scenario in bench.scenarios:
        lines.append(
            f"- {scenario.name}: wall / API bound = **{scenario.bound_multiple:.2f}** "
            f"({scenario.wall_seconds} s vs {scenario.api_bound_seconds} s); requests in run "
            f"{scenario.requests_in_run} vs minimum {scenario.minimum_requests}; "
            f"{scenario.conditional_304} answered 304; {scenario.rows_written} rows written"
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
            f"- seed algorithm, {name} sync: {seed.wall_seconds} s, {seed.requests} requests "
            f"({seed.membership_requests} membership look-ups), {seed.sql_statements} SQL "
            f"statements. **ours / seed = {ours.wall_seconds / seed.wall_seconds:.3f}** in wall "
            f"time, {ours.requests_in_run / max(seed.requests, 1):.3f} in requests, "
            f"{ours.sql_statements / max(seed.sql_statements, 1):.4f} in SQL statements"
        )
    return lines


def main() -> None:
    results = [load(path) for path in sorted((HERE / "results").glob("*.json"))]
    if not results:
        raise SystemExit(
            "no results under benchmarks/results/: run python -m benchmarks.harness --json …"
        )
    out = ["# Benchmark results", ""]
    first = results[0]
    out.append(f"Machine: {first.machine}; commit {first.commit}; {first.date}.")
    out.append("")
    out.append("Columns: " + ", ".join(title for title, _ in COLUMNS) + ".")
    out.append("")
    for bench in results:
        out += [*headline(bench), ""]
    out.append(to_markdown(results))
    out.append("")
    (HERE / "RESULTS.md").write_text("\n".join(out))
    print((HERE / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
