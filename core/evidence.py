"""The verdict's statistic: memorization evidence accumulated over steps, in ordinary units.

Per step j, the evidence e_j combines the signed z-scores of the quantities the guard measures
(EVIDENCE_WEIGHTS: the prediction agreement, low for a copy; chosen on the graded family's
validation splits, docs/testbed.md). A region calibrated before the agreement was measured
(format 1-2 files) has no statistics for it; its verdict uses the weights of those versions
(LEGACY_WEIGHTS: update and guidance gap), so it keeps flagging as it did. A path R_j is the
evidence's running mean over steps start..j: a copy's trajectory leaves the band step after step,
while an ordinary trajectory's excursions come and go. R_j is put in units of its own ordinary
spread, (R_j - m_j) / s_j, with m_j and s_j measured on the calibration trajectories (each left
out of the statistics it is scored against, core/null.py). The agreement is read from two starts
(EVIDENCE_START_FRACTIONS) and S_j is the larger of the two standardized paths: from step 0, where
the copies decided at once show (z of -8 to -12 in the first two steps, ordinary after), and from
step 3 of 50, where the copies decided a few steps in (z of -6 to -13 around steps 4-7) are not
diluted by the first steps, whose agreement is the same blurred picture with or without the
prompt. An item is flagged at the first step of the verdict window where S_j passes the threshold
that the user's false-flag rate asks for (fitted to the same statistic on the calibration runs);
its score is the largest S_j in a window, and its rarity the rate at which ordinary trajectories
reach that score.

The same functions serve the guard step by step (`EvidencePath.push`) and benchmarks on whole
recorded trajectories (`path`), with the same arithmetic, so offline scores are the online ones.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .detect import nan_max
from .measures import QUANTITIES
from .null import NullTail, fit_tail, leave_one_out_z

# signed z of each quantity in the step evidence: a copy's conditional prediction agrees little
# with the unconditional one (the weight is negative: low agreement is evidence)
EVIDENCE_WEIGHTS = {"latent": 0.0, "update": 0.0, "clean": 0.0, "gap": 0.0, "agreement": -1.0}
# regions without agreement statistics: a copy's update and guidance gap run high
LEGACY_WEIGHTS = {"latent": 0.0, "update": 0.5, "clean": 0.0, "gap": 0.5, "agreement": 0.0}
# where the agreement's paths start, as shares of the steps (legacy regions: step 0 alone, as before)
EVIDENCE_START_FRACTIONS = (0.0, 0.06)


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


def evidence_starts(steps: int, window: int, weights: dict[str, float]) -> tuple[int, ...]:
    """The steps the evidence paths start at, for a run of `steps` whose verdict window is `window`."""
    if weights != EVIDENCE_WEIGHTS:
        return (0,)
    return tuple(sorted({min(int(f * steps + 1e-9), window - 1) for f in EVIDENCE_START_FRACTIONS}))


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
    """The largest S_j [..., N] over steps < window, skipping NaN steps (NaN where none is left)."""
    return nan_max(s[..., :window].movedim(-1, 0))


@dataclass(frozen=True)
class EvidenceNull:
    """What ordinary trajectories do: per start and step, the mean and spread of R_j, and the tail
    of the largest S_j over the verdict window (steps < window)."""

    mean: torch.Tensor       # [S, N] float64, one row per start
    spread: torch.Tensor     # [S, N] float64
    window: int
    tail: NullTail
    weights: dict            # the step evidence's weights (EVIDENCE_WEIGHTS or LEGACY_WEIGHTS)
    starts: tuple = (0,)     # the first step each path counts

    def standardize(self, r: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """S from the paths' R: r [S, ..., N] for all steps, or r [S, ...] at `step`."""
        if step is None:
            return _larger_path(r, self.mean, self.spread)
        return _larger_path(r, self.mean[:, step], self.spread[:, step])


def _larger_path(r: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Each path's R [S, ...] in its ordinary units (mean, spread [S] or [S, N], broadcast over
    the batch), and the larger of them (a path not yet started does not count)."""
    shape = (mean.shape[0],) + (1,) * (r.ndim - mean.ndim) + tuple(mean.shape[1:])
    return nan_max((r - mean.to(r.device).view(shape)) / spread.to(r.device).view(shape))


def _paths(e: torch.Tensor, starts: tuple) -> torch.Tensor:
    """R [S, ..., N] of the step evidence e [..., N], one path per start."""
    return torch.stack([running_mean(e, s) for s in starts])


def null_from_trajectories(trajectories: torch.Tensor, window: int, weights: dict | None = None,
                           starts: tuple | None = None) -> EvidenceNull:
    """From a region's calibration runs [R, N, Q] (each scored as if it were new); `starts` are
    evidence_starts' unless given (benchmarks that compare them)."""
    weights = weights_for(trajectories) if weights is None else weights
    starts = evidence_starts(trajectories.shape[1], window, weights) if starts is None else tuple(starts)
    r = _paths(step_evidence(leave_one_out_z(trajectories), weights), starts)       # [S, R, N]
    mean, spread = r.mean(1), r.std(1).clamp(min=1e-6)
    tail = fit_tail(window_max(_larger_path(r, mean, spread), window))
    return EvidenceNull(mean, spread, window, tail, dict(weights), starts)


def path(z: torch.Tensor, null: EvidenceNull) -> torch.Tensor:
    """S_j [B, N] of whole trajectories from their z-scores [B, N, Q] (NaN before any path starts)."""
    return null.standardize(_paths(step_evidence(z, null.weights), null.starts))


class EvidencePath:
    """The same statistic, one step at a time, for a batch of B items."""

    def __init__(self, null: EvidenceNull, batch: int):
        self.null = null
        self.total = torch.zeros(len(null.starts), batch, dtype=torch.float64)
        self.count = 0

    def push(self, z_step: torch.Tensor) -> torch.Tensor:
        """S_j [B] from this step's z-scores [Q, B] (steps pushed in order from 0; NaN before any start)."""
        step, self.count = self.count, self.count + 1
        e = step_evidence(z_step.T.cpu(), self.null.weights)
        r = torch.full_like(self.total, float("nan"))
        for k, start in enumerate(self.null.starts):
            if step >= start:
                self.total[k] = self.total[k] + e
                r[k] = self.total[k] / (step - start + 1)
        return self.null.standardize(r, step)
