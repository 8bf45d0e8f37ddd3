"""Choosing the stability region for a run from what the user connected or cached."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .region import RegionMismatch, StabilityRegion
from .settings import RunSettings


@dataclass
class RegionSet:
    """One or more ready regions (loaded or freshly calibrated), with where each came from."""

    regions: list[StabilityRegion]
    sources: list[str] = field(default_factory=list)

    def select(self, settings: RunSettings) -> StabilityRegion:
        """The region calibrated for these settings; RegionMismatch naming the differences if none is."""
        best, best_problems = None, None
        for region, source in zip(self.regions, self.sources or [""] * len(self.regions)):
            problems = region.settings.mismatches(settings)
            if not problems:
                return region
            if best_problems is None or len(problems) < len(best_problems):
                best, best_problems = source, problems
        where = f" ({best})" if best else ""
        raise RegionMismatch(
            f"The connected calibration{where} was made for other settings: " + "; ".join(best_problems or [])
            + ". Calibrate for these settings, or load the calibration that matches them.")


def find_matching(settings: RunSettings, candidates: Iterable[tuple[str, RunSettings]]) -> str | None:
    """The first candidate (name, settings) calibrated for exactly these settings."""
    for name, calibrated in candidates:
        if not calibrated.mismatches(settings):
            return name
    return None


__all__ = ["RegionSet", "RegionMismatch", "find_matching"]
