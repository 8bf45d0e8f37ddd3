"""The verdict's statistic: memorization evidence accumulated over steps, in ordinary units.

Per step j, the evidence e_j combines the signed z-scores of the quantities the guard measures
(EVIDENCE_WEIGHTS: the prediction agreement, low for a copy; chosen on the graded family's
validation splits, docs/testbed.md). A region calibrated before the agreement was measured
(format 1-2 files) has no statistics for it; its verdict uses the weights of those versions
(LEGACY_WEIGHTS: update and guidance gap), so it keeps flagging as it did. The path R_j is the
evidence's running mean over steps 0..j: a copy's trajectory leaves
the band step after step, while an ordinary trajectory's excursions come and go. R_j is put in
units of its own ordinary spread, S_j = (R_j - m_j) / s_j, with m_j and s_j measured on the
calibration trajectories (each left out of the statistics it is scored against, core/null.py).
An item is flagged at the first step of the verdict window where S_j passes the threshold that
the user's false-flag rate asks for; its score is the largest S_j in a window, and its rarity
the rate at which ordinary trajectories reach that score.

The same functions serve the guard step by step (`EvidencePath.push`) and benchmarks on whole
recorded trajectories (`path`), with the same arithmetic, so offline scores are the online ones.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .measures import QUANTITIES
from .null import NullTail, fit_tail, leave_one_out_z

# signed z of each quantity in the step evidence: a copy's conditional prediction agrees little
# with the unconditional one (the weight is negative: low agreement is evidence)
EVIDENCE_WEIGHTS = {"latent": 0.0, "update": 0.0, "clean": 0.0, "gap": 0.0, "agreement": -1.0}
# regions without agreement statistics: a copy's update and guidance gap run high
LEGACY_WEIGHTS = {"latent": 0.0, "update": 0.5, "clean": 0.0, "gap": 0.5, "agreement": 0.0}
# the share of the steps whose agreement evidence is left out (legacy regions start at step 0, as before)
EVIDENCE_START_FRACTION = 0.06


def weights_for(trajectories: torch.Tensor) -> dict[str, float]:
    """The evidence weights a region's calibration runs [R, N, Q] support."""
    measured = bool(torch.isfinite(trajectories[..., QUANTITIES.index("agreement")]).any())
    return EVIDENCE_WEIGHTS if measured else LEGACY_WEIGHTS


@functools.lru_cache(maxsize=8)
def _vector_of(items: tuple) -> torch.Tensor:
    w = dict(items)
    return torch.tensor([w[q] for q in QUANTITIES], dtype=torch.float64)


def _vector(weights: dict[str, float]) -> torch.Tensor:
    """The weights as a [Q] tensor, built once per weight set (the guard asks every step)."""
    return _vector_of(tuple(sorted(weights.items())))


def step_evidence(z: torch.Tensor, weights: dict[str, float] = EVIDENCE_WEIGHTS) -> torch.Tensor:
    """e_j from z-scores [..., Q] (float64); a missing quantity (no gap at cfg 1) counts 0."""
    return (z.double().nan_to_num(0.0) * _vector(weights).to(z.device)).sum(-1)


def evidence_start(steps: int, window: int, weights: dict[str, float]) -> int:
    """The first step the evidence counts, for a run of `steps` whose verdict window is `window`."""
    if weights != EVIDENCE_WEIGHTS:
        return 0
    return min(int(EVIDENCE_START_FRACTION * steps + 1e-9), window - 1)


def running_mean(e: torch.Tensor, start: int = 0) -> torch.Tensor:
    """R_j from e [..., N] over the last axis from `start` (NaN before it), summed in order as
    EvidencePath.push sums."""
    total = torch.zeros_like(e[..., 0])
    out = torch.full_like(e, float("nan"))
    for j in range(start, e.shape[-1]):
        total = total + e[..., j]
        out[..., j] = total / (j - start + 1)
    return out


def window_max(s: torch.Tensor, window: int) -> torch.Tensor:
    """The largest S_j [..., N] over steps < window, ignoring the steps before the start (NaN
    where the window holds none)."""
    part = s[..., :window]
    top = part.nan_to_num(nan=-math.inf).max(-1).values
    return torch.where(torch.isnan(part).all(-1), torch.full_like(top, float("nan")), top)


@dataclass(frozen=True)
class EvidenceNull:
    """What ordinary trajectories do: the per-step mean and spread of R_j, and the tail of the
    largest S_j over the verdict window (steps < window)."""

    mean: torch.Tensor       # [N] float64
    spread: torch.Tensor     # [N] float64
    window: int
    tail: NullTail
    weights: dict            # the step evidence's weights (EVIDENCE_WEIGHTS or LEGACY_WEIGHTS)
    start: int = 0           # the first step the evidence counts

    def standardize(self, r: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """S from R: r [..., N] for all steps, or r [...] at `step`."""
        if step is None:
            return (r - self.mean.to(r.device)) / self.spread.to(r.device)
        return (r - float(self.mean[step])) / float(self.spread[step])


def null_from_trajectories(trajectories: torch.Tensor, window: int, weights: dict | None = None,
                           start: int | None = None) -> EvidenceNull:
    """From a region's calibration runs [R, N, Q] (each scored as if it were new); `start` is
    evidence_start's unless given (benchmarks that compare starts)."""
    weights = weights_for(trajectories) if weights is None else weights
    start = evidence_start(trajectories.shape[1], window, weights) if start is None else start
    r = running_mean(step_evidence(leave_one_out_z(trajectories), weights), start)       # [R, N]
    mean, spread = r.mean(0), r.std(0).clamp(min=1e-6)
    s = (r - mean) / spread
    return EvidenceNull(mean, spread, window, fit_tail(window_max(s, window)), dict(weights), start)


def path(z: torch.Tensor, null: EvidenceNull) -> torch.Tensor:
    """S_j [B, N] of whole trajectories from their z-scores [B, N, Q] (NaN before the start)."""
    return null.standardize(running_mean(step_evidence(z, null.weights), null.start))


class EvidencePath:
    """The same statistic, one step at a time, for a batch of B items."""

    def __init__(self, null: EvidenceNull, batch: int):
        self.null = null
        self.total = torch.zeros(batch, dtype=torch.float64)
        self.count = 0

    def push(self, z_step: torch.Tensor) -> torch.Tensor:
        """S_j [B] from this step's z-scores [Q, B] (steps pushed in order from 0; NaN before the start)."""
        step, self.count = self.count, self.count + 1
        if step < self.null.start:
            return torch.full_like(self.total, float("nan"))
        self.total = self.total + step_evidence(z_step.T.cpu(), self.null.weights)
        return self.null.standardize(self.total / (step - self.null.start + 1), step)
