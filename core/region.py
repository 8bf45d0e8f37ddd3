"""Empirical stability regions: per-step mean and spread of each measured quantity.

A region is built from calibration trajectories on ordinary prompts with streaming statistics
(Chan et al.'s parallel mean/variance merge). The band of quantity k at step j is
[mu_k(j) - gamma * sd_k(j), mu_k(j) + gamma * sd_k(j)]. The region also keeps the calibration
trajectories' measurements themselves (a few numbers per step each: 120 runs of 50 steps are
96 KB), because a false-flag rate is a property of whole trajectories, not of per-step bands
(core/null.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .measures import QUANTITIES
from .settings import RunSettings

SD_FLOOR_ABS = 1e-5
SD_FLOOR_REL = 1e-4


@dataclass
class StabilityRegion:
    settings: RunSettings
    mean: torch.Tensor      # [Q, N] float32, Q = len(QUANTITIES), N = steps
    std: torch.Tensor       # [Q, N] float32, floored
    count: torch.Tensor     # [Q, N] int64: trajectories behind each statistic
    meta: dict = field(default_factory=dict)
    trajectories: torch.Tensor | None = None   # [R, N, Q] float32, the calibration runs (None: not kept)
    # the verdict's null fit per window (core/evidence.py), made once per region, not once per run
    nulls: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def steps(self) -> int:
        return int(self.mean.shape[1])

    def row(self, name: str) -> int:
        return QUANTITIES.index(name)

    def zscores(self, step: int, values: torch.Tensor) -> torch.Tensor:
        """Signed z-scores [Q, B] of `values` [Q, B] at `step` (NaN where a statistic is missing)."""
        mu = self.mean[:, step].to(values.device).unsqueeze(1)
        sd = self.std[:, step].to(values.device).unsqueeze(1)
        return (values.float() - mu) / sd

    def band(self, name: str, step: int, gamma: float) -> tuple[float, float]:
        q = self.row(name)
        mu, sd = float(self.mean[q, step]), float(self.std[q, step])
        return mu - gamma * sd, mu + gamma * sd

    def check(self, run: RunSettings) -> None:
        """Raise RegionMismatch naming every setting that differs from the calibrated ones."""
        problems = self.settings.mismatches(run)
        if problems:
            raise RegionMismatch(
                "This stability region was calibrated for other settings: " + "; ".join(problems)
                + ". Calibrate for these settings (or load the region that matches them).")


class RegionMismatch(ValueError):
    """A region used with settings it was not calibrated for."""


class RegionBuilder:
    """Streaming per-step statistics of calibration trajectories."""

    def __init__(self, settings: RunSettings):
        self.settings = settings
        n, q = settings.steps, len(QUANTITIES)
        self.n = torch.zeros(q, n, dtype=torch.float64)
        self.mu = torch.zeros(q, n, dtype=torch.float64)
        self.m2 = torch.zeros(q, n, dtype=torch.float64)
        self.runs = 0
        self._kept: list[torch.Tensor] = []   # whole trajectories added with add_run, [B, N, Q] each

    def add(self, step: int, values: torch.Tensor) -> None:
        """Merge a batch of measurements [Q, B] at `step`; non-finite entries are skipped."""
        if not 0 <= step < self.settings.steps:
            raise IndexError(f"step {step} outside the {self.settings.steps} calibrated steps")
        v = values.detach().double().cpu()
        ok = torch.isfinite(v)
        nb = ok.sum(dim=1).double()
        vz = torch.where(ok, v, torch.zeros_like(v))
        mb = vz.sum(dim=1) / nb.clamp(min=1)
        m2b = (torch.where(ok, v - mb.unsqueeze(1), torch.zeros_like(v)) ** 2).sum(dim=1)
        na, ma = self.n[:, step], self.mu[:, step]
        total = na + nb
        delta = mb - ma
        w = torch.where(total > 0, nb / total.clamp(min=1), torch.zeros_like(total))
        self.mu[:, step] = ma + delta * w
        self.m2[:, step] = self.m2[:, step] + m2b + delta ** 2 * na * w
        self.n[:, step] = total

    def add_run(self, values: torch.Tensor) -> None:
        """Merge whole trajectories: values [N, Q, B]."""
        for step in range(values.shape[0]):
            self.add(step, values[step])
        self.runs += values.shape[2]
        if values.shape[0] == self.settings.steps:
            self._kept.append(values.detach().float().cpu().permute(2, 0, 1).contiguous())

    def build(self, meta: dict | None = None) -> StabilityRegion:
        if self.runs == 0 and float(self.n.max()) == 0:
            raise ValueError("no calibration trajectories were added")
        var = torch.where(self.n > 1, self.m2 / (self.n - 1).clamp(min=1), torch.zeros_like(self.m2))
        mean = torch.where(self.n > 0, self.mu, torch.full_like(self.mu, float("nan")))
        std = var.sqrt().clamp(min=SD_FLOOR_ABS)
        std = torch.maximum(std, SD_FLOOR_REL * mean.abs().nan_to_num(0.0))
        std = torch.where(self.n > 0, std, torch.full_like(std, float("nan")))
        kept = torch.cat(self._kept) if self._kept else None
        return StabilityRegion(self.settings, mean.float(), std.float(), self.n.long(), dict(meta or {}), kept)
