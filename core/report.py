"""The run report: everything a run measured and decided, per item, as plain JSON-ready data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

REPORT_VERSION = 1


@dataclass
class ItemReport:
    index: int
    verdict: str                      # "memorized" | "clean" | "unavailable: ..." | "invalid: ..."
    flagged: bool
    severity: str                     # "none" | "mild" | "strong" (at the first flagged step)
    first_flagged_step: int | None
    scores: dict[str, float | None]   # "max", "first", "mean" of the verdict's evidence (core/evidence.py)
    norms: dict[str, list]            # quantity -> per-step value (None where not finite)
    zscores: dict[str, list]          # quantity -> per-step signed z (None without a region)
    step_flags: list[int]             # per step: 0 in band, 1 mild, 2 strong
    active_steps: list[int]
    corrected_steps: list[int]
    steered_steps: list[int]          # steps whose guidance the guard changed (guidance strategies)
    non_finite_step: int | None = None
    evidence: list = field(default_factory=list)   # per step: the verdict's statistic S_j (None: band rule)
    ordinary_rate: float | None = None    # share of ordinary trajectories with at least this item's evidence


@dataclass
class RunReport:
    settings: dict
    config: dict
    sigmas: list[float]
    steps_observed: int
    region: dict | None
    items: list[ItemReport]
    extra_model_calls: int = 0
    notes: list[str] = field(default_factory=list)
    version: int = REPORT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def summary(self) -> str:
        flagged = [it.index for it in self.items if it.flagged]
        return (f"{len(self.items)} item(s), {len(flagged)} flagged"
                + (f" ({', '.join(map(str, flagged))})" if flagged else ""))
