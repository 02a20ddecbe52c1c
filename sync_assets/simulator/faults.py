"""Deterministic fault injection for the simulator, per endpoint, at a rate or on the Nth request.

A rule is written `ENDPOINT:KIND[:key=value,…]`, for example
`course_enrolments_report:503:rate=0.2`,
`*:drop:nth=1,3`, `organisation_membership:429:rate=0.1,retry_after=2` or `*:latency:ms=50`.
Whether a rate-based rule fires on the Nth request of an endpoint depends only on the seed, the
endpoint and N, so a run with the same arrival order sees the same faults.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

ENDPOINTS = (
    "course_runs",
    "course_run",
    "course_enrolments_report",
    "organisation_membership",
)
STATUS_FAULTS = ("429", "500", "502", "503")
WIRE_FAULTS = ("drop", "truncate")
KINDS = (*STATUS_FAULTS, *WIRE_FAULTS, "malformed", "refuse_token", "latency")


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True)
class FaultRule:
    kind: str
    endpoint: str = "*"
    rate: float = 0.0
    nth: tuple[int, ...] = ()
    latency_ms: float = 0.0
    retry_after: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FaultSpecError(f"unknown fault kind '{self.kind}'; one of {', '.join(KINDS)}")
        if self.endpoint != "*" and self.endpoint not in ENDPOINTS:
            raise FaultSpecError(
                f"unknown endpoint '{self.endpoint}'; one of *, {', '.join(ENDPOINTS)}"
            )
        if not 0.0 <= self.rate <= 1.0:
            raise FaultSpecError(f"rate {self.rate} outside 0-1")
        if self.kind == "latency" and self.latency_ms <= 0:
            raise FaultSpecError("a latency fault needs ms=…")

    @classmethod
    def parse(cls, text: str) -> FaultRule:
        parts = text.split(":", 2)
        if len(parts) < 2:
            raise FaultSpecError(f"fault '{text}': expected ENDPOINT:KIND[:key=value,…]")
        endpoint, kind = parts[0] or "*", parts[1]
        options: dict[str, str] = {}
        nth: list[int] = []
        if len(parts) == 3 and parts[2]:
            key = ""
            for item in parts[2].split(","):
                if "=" in item:
                    key, value = item.split("=", 1)
                    options[key] = value
                    if key == "nth":
                        nth.append(int(value))
                elif key == "nth" and item.isdigit():
                    nth.append(int(item))  # nth=1,3,5
                else:
                    raise FaultSpecError(f"fault '{text}': cannot read '{item}'")
        try:
            return cls(
                kind=kind,
                endpoint=endpoint,
                rate=float(options.get("rate", 0.0)),
                nth=tuple(nth),
                latency_ms=float(options.get("ms", 0.0)),
                retry_after=int(options.get("retry_after", 1)),
            )
        except ValueError as error:
            raise FaultSpecError(f"fault '{text}': {error}") from None

    def applies_to(self, endpoint: str) -> bool:
        return self.endpoint in ("*", endpoint)

    def fires(self, seed: int, endpoint: str, request_number: int, rule_index: int) -> bool:
        if request_number in self.nth:
            return True
        if self.rate <= 0.0:
            return self.kind == "latency" and not self.nth
        digest = hashlib.blake2b(
            f"{seed}:{endpoint}:{request_number}:{rule_index}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest) / 2**64 < self.rate


@dataclass(frozen=True)
class FaultPlan:
    rules: tuple[FaultRule, ...] = ()
    seed: int = 0

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...], seed: int = 0) -> FaultPlan:
        return cls(tuple(FaultRule.parse(spec) for spec in specs), seed)

    def decide(self, endpoint: str, request_number: int) -> FaultDecision:
        """The faults for the Nth request (1-based) of an endpoint."""
        decision = FaultDecision()
        for index, rule in enumerate(self.rules):
            if not rule.applies_to(endpoint) or not rule.fires(
                self.seed, endpoint, request_number, index
            ):
                continue
            if rule.kind == "latency":
                decision.latency_ms += rule.latency_ms
            elif decision.kind is None:
                decision.kind = rule.kind
                decision.retry_after = rule.retry_after
        return decision


@dataclass
class FaultDecision:
    kind: str | None = None
    latency_ms: float = 0.0
    retry_after: int = 1
