"""How rare is a trajectory's score among ordinary ones? The null distribution from calibration.

A region keeps its calibration trajectories. Scored against a region built *without* it (leave
one out: otherwise each run is judged by statistics it helped make, and looks tamer than a new
run would), each calibration run gives one sample of the score an ordinary trajectory gets. The
scores are maxima over steps, so their upper tail is fitted with a Gumbel law (the limit law of
maxima, fitted by its first two moments). From it: the threshold a user's false-flag rate asks
for, and for any score the rate at which ordinary trajectories reach it ("1 in N").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .region import SD_FLOOR_ABS, SD_FLOOR_REL

EULER_GAMMA = 0.5772156649015329


def leave_one_out_z(trajectories: torch.Tensor) -> torch.Tensor:
    """z-scores [R, N, Q] of each of R trajectories [R, N, Q] against the other R - 1 (spreads
    floored as the region floors them); NaN where fewer than 3 runs measured a value."""
    v = trajectories.double()
    ok = torch.isfinite(v)
    x = torch.where(ok, v, torch.zeros_like(v))
    n = ok.sum(0, keepdim=True).double()
    s1, s2 = x.sum(0, keepdim=True), (x * x).sum(0, keepdim=True)
    n_o = n - ok.double()                                   # runs left when this one is out
    mean = (s1 - x) / n_o.clamp(min=1)
    var = ((s2 - x * x) - n_o * mean * mean) / (n_o - 1).clamp(min=1)
    sd = var.clamp(min=0).sqrt().clamp(min=SD_FLOOR_ABS)
    sd = torch.maximum(sd, SD_FLOOR_REL * mean.abs())
    z = (v - mean) / sd
    return torch.where(ok & (n_o >= 2), z, torch.full_like(z, float("nan"))).float()


@dataclass(frozen=True)
class NullTail:
    """A Gumbel fit to the scores of ordinary trajectories."""

    location: float
    scale: float
    samples: int

    def threshold(self, rate: float) -> float:
        """The score ordinary trajectories exceed at `rate` (e.g. 0.001: 1 in 1,000)."""
        if not 0 < rate < 1:
            raise ValueError(f"a false-flag rate must be in (0, 1), got {rate}")
        return self.location - self.scale * math.log(-math.log1p(-rate))

    def rate(self, score: float) -> float:
        """The share of ordinary trajectories whose score is at least `score`."""
        if not math.isfinite(score):
            return float("nan")
        return -math.expm1(-math.exp(-(score - self.location) / self.scale))


def fit_tail(scores: torch.Tensor) -> NullTail:
    s = scores.double()
    s = s[torch.isfinite(s)]
    if s.numel() < 10:
        raise ValueError(f"the null distribution needs at least 10 calibration runs, got {s.numel()}")
    scale = max(float(s.std()) * math.sqrt(6) / math.pi, 1e-6)
    return NullTail(float(s.mean()) - EULER_GAMMA * scale, scale, int(s.numel()))


def null_tail(trajectories: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> NullTail:
    """Fit the tail of `score(z [R, N, Q]) -> [R]` over the calibration runs, each left out."""
    return fit_tail(score(leave_one_out_z(trajectories)))
