"""What listing a run's distinct memberships costs linking in memory, before any look-up.

    python -m benchmarks.linking_uuids_memory

`large`'s first sync peaks in the linking step (1,319 MiB, benchmarks/analysis.md). Linking starts
by listing the run's distinct memberships from each course's (a polars Series per course). It
made a Python set of each course's first, all alive at once, then their union: ~2M Python
strings and 980 sets for `large`'s 1.07M memberships, freed soon after, but the process keeps the
memory (CPython's allocator returns little of it), so it raises the rest of the step's floor.
Each variant runs in a fresh process on synthetic data of `large`'s shape (980 courses, 2M course
× membership pairs, 1.07M memberships); printed: each one's peak (VmHWM) above the process's
before it, the same list in both (checked), and the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid

import polars as pl

VARIANTS = ("python sets", "polars")


def memberships_of(courses: int, pairs: int, memberships: int) -> dict[str, pl.Series]:
    """Each course's distinct memberships, as linking has them (`frame[...].unique()`)."""
    uuids = pl.Series(
        "membership_uuid", [str(uuid.UUID(int=n, version=4)) for n in range(memberships)]
    )
    picks = pl.concat(
        [
            pl.int_range(memberships, eager=True),
            pl.int_range(pairs - memberships, eager=True) % memberships,
        ]
    )
    frame = pl.DataFrame(
        {"course": picks.hash(seed=7) % courses, "membership_uuid": uuids.gather(picks)}
    )
    return {
        str(course): rows["membership_uuid"].unique()
        for (course,), rows in frame.partition_by("course", as_dict=True).items()
    }


def distinct(variant: str, of: dict[str, pl.Series]) -> list[str]:
    if variant == "python sets":  # as linking did
        return sorted(set().union(*(set(uuids) for uuids in of.values())))
    return pl.concat(list(of.values())).unique().sort().to_list()


def peak_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def child(variant: str, courses: int, pairs: int, memberships: int) -> None:
    of = memberships_of(courses, pairs, memberships)
    before = peak_kib()
    listed = distinct(variant, of)
    print(
        json.dumps(
            {
                "variant": variant,
                "step_peak_mib": (peak_kib() - before) / 1024,
                "count": len(listed),
                "first": listed[0],
                "last": listed[-1],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--courses", type=int, default=980)
    parser.add_argument("--pairs", type=int, default=2_000_000)
    parser.add_argument("--memberships", type=int, default=1_070_000)
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    sizes = [str(args.courses), str(args.pairs), str(args.memberships)]
    if args.child:
        child(args.child, args.courses, args.pairs, args.memberships)
        return
    results = {}
    for variant in VARIANTS:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.linking_uuids_memory",
                "--child",
                variant,
                "--courses",
                sizes[0],
                "--pairs",
                sizes[1],
                "--memberships",
                sizes[2],
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[variant] = json.loads(done.stdout)
    same = {k: results[v][k] for v in VARIANTS for k in ("count", "first", "last")}
    assert all(results[v][k] == same[k] for v in VARIANTS for k in same), results
    ratio = results["polars"]["step_peak_mib"] / results["python sets"]["step_peak_mib"]
    print(json.dumps({"variants": results, "ratio_polars_over_sets": round(ratio, 3)}, indent=1))


if __name__ == "__main__":
    main()
