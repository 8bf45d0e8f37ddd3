"""Detection: per-step flags and per-item scores from z-scores against a stability region.

A step is out of the band when |s_update| > tau_mild and |s_clean| > tau_mild; the first such
step flags the item, strongly if |s_clean| > tau_strong there. Scores rank items for ROC curves by
the same per-step measure the flag uses, min(|s_update|, |s_clean|): its largest value over all
steps, over the first steps only, or its mean. (The paper ranks by |s_update| alone; on the testbed
a novel generation whose step-0 update spiked while its clean prediction stayed in the band then
outranked copies.)
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
    tau_mild: float = 4.5           # z above which a step is out of the band (the paper: 3; 4.5 chosen
                                    # on the testbed's validation split, docs/testbed.md)
    tau_strong: float = 14.0        # clean-prediction z that makes a flag strong
    active_fraction: float = 0.2    # mild flags act only in the first 20 % of steps (10 of 50)
    first_fraction: float = 0.1     # the "first" score looks at the first 10 % of steps
    score: str = "first"            # the score the verdict and the nodes report by default

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose one of {', '.join(SCORES)}")
        for name in ("gamma", "tau_mild", "tau_strong"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.tau_strong < self.tau_mild:
            raise ValueError(f"tau_strong ({self.tau_strong}) must not be below tau_mild ({self.tau_mild})")
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


def scores(z_update: torch.Tensor, z_clean: torch.Tensor, cfg: DetectionConfig, steps: int) -> dict[str, torch.Tensor]:
    """Per-item scores from the z histories [n_observed, B]; NaN where nothing was observed."""
    a = step_excess(z_update, z_clean).float()
    if a.shape[0] == 0:
        nan = torch.full((a.shape[1],), float("nan"))
        return {name: nan.clone() for name in SCORES}
    k = cfg.first_window(steps)
    return {"max": a.max(dim=0).values, "first": a[:k].max(dim=0).values, "mean": a.mean(dim=0)}


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
