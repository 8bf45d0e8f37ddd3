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
from dataclasses import dataclass

import torch

from .measures import QUANTITIES
from .null import NullTail, fit_tail, leave_one_out_z

# signed z of each quantity in the step evidence: a copy's conditional prediction agrees little
# with the unconditional one (the weight is negative: low agreement is evidence)
EVIDENCE_WEIGHTS = {"latent": 0.0, "update": 0.0, "clean": 0.0, "gap": 0.0, "agreement": -1.0}
# regions without agreement statistics: a copy's update and guidance gap run high
LEGACY_WEIGHTS = {"latent": 0.0, "update": 0.5, "clean": 0.0, "gap": 0.5, "agreement": 0.0}


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


def running_mean(e: torch.Tensor) -> torch.Tensor:
    """R_j from e [..., N] over the last axis, summed in order as EvidencePath.push sums."""
    total = torch.zeros_like(e[..., 0])
    out = torch.empty_like(e)
    for j in range(e.shape[-1]):
        total = total + e[..., j]
        out[..., j] = total / (j + 1)
    return out


@dataclass(frozen=True)
class EvidenceNull:
    """What ordinary trajectories do: the per-step mean and spread of R_j, and the tail of the
    largest S_j over the verdict window (steps < window)."""

    mean: torch.Tensor       # [N] float64
    spread: torch.Tensor     # [N] float64
    window: int
    tail: NullTail
    weights: dict            # the step evidence's weights (EVIDENCE_WEIGHTS or LEGACY_WEIGHTS)

    def standardize(self, r: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """S from R: r [..., N] for all steps, or r [...] at `step`."""
        if step is None:
            return (r - self.mean.to(r.device)) / self.spread.to(r.device)
        return (r - float(self.mean[step])) / float(self.spread[step])


def null_from_trajectories(trajectories: torch.Tensor, window: int, weights: dict | None = None) -> EvidenceNull:
    """From a region's calibration runs [R, N, Q] (each scored as if it were new)."""
    weights = weights_for(trajectories) if weights is None else weights
    r = running_mean(step_evidence(leave_one_out_z(trajectories), weights))       # [R, N]
    mean, spread = r.mean(0), r.std(0).clamp(min=1e-6)
    s = (r - mean) / spread
    return EvidenceNull(mean, spread, window, fit_tail(s[:, :window].max(1).values), dict(weights))


def path(z: torch.Tensor, null: EvidenceNull) -> torch.Tensor:
    """S_j [B, N] of whole trajectories from their z-scores [B, N, Q]."""
    return null.standardize(running_mean(step_evidence(z, null.weights)))


class EvidencePath:
    """The same statistic, one step at a time, for a batch of B items."""

    def __init__(self, null: EvidenceNull, batch: int):
        self.null = null
        self.total = torch.zeros(batch, dtype=torch.float64)
        self.count = 0

    def push(self, z_step: torch.Tensor) -> torch.Tensor:
        """S_j [B] from this step's z-scores [Q, B] (steps pushed in order from 0)."""
        self.total = self.total + step_evidence(z_step.T.cpu(), self.null.weights)
        self.count += 1
        return self.null.standardize(self.total / self.count, self.count - 1)
