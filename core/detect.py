"""Detection: per-step band marks, the verdict's settings, and ROC helpers.

A step is out of the band when |s_update| > tau_mild and |s_clean| > tau_mild (the heatmap and
the curves show these steps). The verdict is the accumulated evidence of core/evidence.py against
a threshold set by `false_flag_rate` on the region's calibration trajectories. A region without
them (saved by version 0.1 of the pack) falls back to the band rule: the first out-of-band step
flags the item, and scores are min(|s_update|, |s_clean|) over the first steps, all steps, or
their mean (`legacy_scores`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCORES = ("max", "first", "mean")

NONE, MILD, STRONG = 0, 1, 2
SEVERITY_NAMES = {NONE: "none", MILD: "mild", STRONG: "strong"}


@dataclass(frozen=True)
class DetectionConfig:
    gamma: float = 3.0              # band half-width in spreads (mitigation clamps to it)
    tau_mild: float = 4.5           # z above which a step is out of the band (the paper: 3); with a
                                    # region of version 0.1, also the verdict's threshold
    tau_strong: float = 14.0        # clean-prediction z that makes a flag strong
    active_fraction: float = 0.3    # the verdict's window: the first 30 % of steps (15 of 50)
    first_fraction: float = 0.1     # the "first" score looks at the first 10 % of steps
    score: str = "first"            # the score the nodes report by default
    false_flag_rate: float = 0.001  # the verdict flags this share of ordinary trajectories

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose one of {', '.join(SCORES)}")
        for name in ("gamma", "tau_mild", "tau_strong"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.tau_strong < self.tau_mild:
            raise ValueError(f"tau_strong ({self.tau_strong}) must not be below tau_mild ({self.tau_mild})")
        if not 0.0 < self.false_flag_rate < 0.5:
            raise ValueError(f"false_flag_rate must be in (0, 0.5), got {self.false_flag_rate}")
        for name in ("active_fraction", "first_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")

    def active_window(self, steps: int) -> int:
        """k: mild flags act on steps j < k."""
        return max(1, math.ceil(self.active_fraction * steps))

    def first_window(self, steps: int) -> int:
        return max(1, math.ceil(self.first_fraction * steps))


def out_of_band(z_update: torch.Tensor, z_clean: torch.Tensor, tau: float) -> torch.Tensor:
    return step_excess(z_update, z_clean) > tau


def step_excess(z_update: torch.Tensor, z_clean: torch.Tensor) -> torch.Tensor:
    """How far a step is out of the band on both norms: a step is out when this exceeds tau."""
    return torch.minimum(z_update.abs(), z_clean.abs())


def legacy_scores(z_update: torch.Tensor, z_clean: torch.Tensor, cfg: DetectionConfig, steps: int) -> dict[str, torch.Tensor]:
    """Per-item scores of the band rule from the z histories [n_observed, B]; NaN where nothing was observed."""
    return window_scores(step_excess(z_update, z_clean).float(), cfg, steps)


def window_scores(a: torch.Tensor, cfg: DetectionConfig, steps: int) -> dict[str, torch.Tensor]:
    """"max", "first" (first_fraction of the steps) and "mean" of a per-step statistic [n_observed, B]."""
    if a.shape[0] == 0:
        nan = torch.full((a.shape[1],), float("nan"))
        return {name: nan.clone() for name in SCORES}
    k = cfg.first_window(steps)   # NaN steps (before the evidence starts) are skipped
    return {"max": nan_max(a), "first": nan_max(a[:k]), "mean": a.nanmean(dim=0)}


def nan_max(a: torch.Tensor) -> torch.Tensor:
    """Max over dim 0 ignoring NaN; NaN where a column holds nothing else."""
    top = a.nan_to_num(nan=-math.inf).max(dim=0).values
    return torch.where(torch.isnan(a).all(dim=0), torch.full_like(top, float("nan")), top)


def roc_auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Area under the ROC curve (ties count half): P(score_pos > score_neg)."""
    p, n = positive.double().flatten(), negative.double().flatten()
    if p.numel() == 0 or n.numel() == 0:
        return float("nan")
    greater = (p[:, None] > n[None, :]).double().sum()
    ties = (p[:, None] == n[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (p.numel() * n.numel()))


def tpr_at_fpr(positive: torch.Tensor, negative: torch.Tensor, fpr: float = 0.01) -> float:
    """True-positive rate at the strictest threshold whose false-positive rate is <= fpr."""
    p, n = positive.double().flatten(), negative.double().flatten()
    if p.numel() == 0 or n.numel() == 0:
        return float("nan")
    allowed = math.floor(fpr * n.numel())
    sorted_n = n.sort(descending=True).values
    threshold = sorted_n[allowed] if allowed < n.numel() else -math.inf  # scores above it are positives
    return float((p > threshold).double().mean())
