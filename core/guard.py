"""The stability guard: one sampling run's measurements, flags, mitigation decisions and report.

Samplers drive it the same way whether they are the core's own loops (core/sampling.py) or
ComfyUI's (through the pack's hooks): after each step j they call `observe` with the step's start
x_j, its proposal x_{j+1} and the clean prediction D(x_{j+1}) of the next model call, and act on
what it returns. The guard never calls the model itself, so it works with any sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from . import detect, heatmap, mitigate
from .detect import MILD, NONE, STRONG, DetectionConfig
from .measures import QUANTITIES, guidance_gap, measure_step, update_energy_map
from .region import StabilityRegion
from .report import ItemReport, RunReport
from .settings import RunSettings

MODES = ("detect", "mitigate")
STRATEGIES = ("stability", "delayed_guidance")
_Q = {name: i for i, name in enumerate(QUANTITIES)}


@dataclass(frozen=True)
class GuardConfig:
    mode: str = "detect"                 # "detect" watches; "mitigate" also steers flagged items
    strategy: str = "delayed_guidance"   # how to steer, see core/mitigate.py
    exact: bool = True                   # re-evaluate the model where a correction moved the latent
    off_scale: float = 0.0               # guidance scale while a flagged item's guidance is off
    detection: DetectionConfig = field(default_factory=DetectionConfig)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")


@dataclass
class Action:
    """What the sampler should do after observing a step (all masks [B] bool, on the CPU)."""

    active: torch.Tensor                       # out of band on an active step (acted on when mitigating)
    correct: torch.Tensor                      # replace the proposal by `x_corrected` (stability strategy)
    x_corrected: torch.Tensor | None = None    # [B, ...] float32; meaningful on `correct` rows
    reguide: torch.Tensor | None = None        # guidance scale changed: recombine cond/uncond for these rows
    rewind: torch.Tensor | None = None         # guidance switched off here: redo this step (exact mode)

    @property
    def any(self) -> bool:
        return bool(self.correct.any() or (self.reguide is not None and self.reguide.any()))


class StabilityGuard:
    """Per-run state. Create one per sampling run; it is cheap."""

    def __init__(self, settings: RunSettings, sigmas: torch.Tensor, batch: int,
                 region: StabilityRegion | None = None, config: GuardConfig = GuardConfig()):
        if not settings.sigmas:
            settings = replace(settings, sigmas=tuple(float(s) for s in sigmas))
        if region is not None:
            region.check(settings)
        self.settings, self.region, self.config = settings, region, config
        self.sigmas = [float(s) for s in sigmas]
        self.steps = len(self.sigmas) - 1
        if self.steps != settings.steps:
            raise ValueError(f"the run has {self.steps} steps but its settings say {settings.steps}")
        self.batch = batch
        n, q = self.steps, len(QUANTITIES)
        self.values = torch.full((n, q, batch), float("nan"))
        self.z = torch.full((n, q, batch), float("nan"))
        self.flags = torch.zeros(n, batch, dtype=torch.int8)       # 0 in band, 1 mild, 2 strong
        self.active = torch.zeros(n, batch, dtype=torch.bool)
        self.corrected = torch.zeros(n, batch, dtype=torch.bool)
        self.guidance_off_steps = torch.zeros(n, batch, dtype=torch.bool)
        self.first_flag = torch.full((batch,), -1, dtype=torch.long)
        self.severity = torch.zeros(batch, dtype=torch.int8)
        self.non_finite = torch.full((batch,), -1, dtype=torch.long)
        self.observed = 0
        self.heat: torch.Tensor | None = None
        self.guidance_off = torch.zeros(batch, dtype=torch.bool)
        self._gap_prev = torch.full((batch,), float("inf"))
        self.extra_evals = 0
        self.notes: list[str] = []
        self.k_active = config.detection.active_window(self.steps)

    # -- guidance ------------------------------------------------------------------------------
    def guidance_scales(self, cfg: float) -> torch.Tensor:
        """Per-item guidance scale for the next model call: cfg, or off_scale where guidance is off."""
        return torch.where(self.guidance_off, torch.tensor(self.config.off_scale), torch.tensor(float(cfg)))

    @property
    def mitigating(self) -> bool:
        return self.config.mode == "mitigate" and self.region is not None

    # -- the per-step entry point --------------------------------------------------------------
    def observe(self, step: int, x_prev: torch.Tensor, x_next: torch.Tensor, denoised_next: torch.Tensor | None,
                cond_next: torch.Tensor | None = None, uncond_next: torch.Tensor | None = None) -> Action:
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} is outside this run's {self.steps} steps")
        if x_next.shape[0] != self.batch:
            raise ValueError(f"batch of {x_next.shape[0]} observed by a guard made for {self.batch}")
        s_prev, s_next = self.sigmas[step], self.sigmas[step + 1]
        gap = guidance_gap(cond_next, uncond_next, s_next)
        m = measure_step(x_prev, x_next, s_prev, s_next, denoised_next, gap)
        values = m.stack().cpu()
        self.values[step] = values
        self.observed = max(self.observed, step + 1)
        finite = torch.isfinite(values[:3]).all(dim=0)
        newly_bad = ~finite & (self.non_finite < 0)
        if bool(newly_bad.any()):
            self.non_finite[newly_bad] = step
            self.notes.append(f"step {step}: non-finite latent or prediction in item(s) "
                              f"{newly_bad.nonzero().flatten().tolist()}")
        none = torch.zeros(self.batch, dtype=torch.bool)
        if self.region is None:
            return Action(active=none, correct=none)

        z = self.region.zscores(step, values)
        self.z[step] = z
        cfg = self.config.detection
        valid = self.non_finite < 0
        out = detect.out_of_band(z[_Q["update"]], z[_Q["clean"]], cfg.tau_mild) & valid
        strong_now = z[_Q["clean"]].abs() > cfg.tau_strong
        self.flags[step] = torch.where(out, torch.where(strong_now, STRONG, MILD), NONE).to(torch.int8)
        first = out & (self.first_flag < 0)
        self.first_flag[first] = step
        self.severity[first] = torch.where(strong_now[first], STRONG, MILD).to(torch.int8)
        flagged = self.first_flag >= 0
        over = z[_Q["update"]].abs() > cfg.tau_mild
        active = flagged & valid & over & ((self.severity == STRONG) | (step < self.k_active))
        self.active[step] = active
        if bool(out.any()):
            self._accumulate_heat(step, x_prev, x_next, m.update, out)

        correct, reguide, rewind, x_corr = none, none.clone(), none.clone(), None
        if self.mitigating:
            if self.config.strategy == "stability" and bool(active.any()):
                correct = active
                x_corr = self._stability_target(step, x_prev, x_next, denoised_next, active)
                self.corrected[step] = active
            elif self.config.strategy == "delayed_guidance":
                reguide, rewind = self._delayed_guidance(step, active, gap)
        return Action(active=active, correct=correct, x_corrected=x_corr, reguide=reguide, rewind=rewind)

    def note_extra_evals(self, n: int) -> None:
        self.extra_evals += int(n)

    # -- strategies ----------------------------------------------------------------------------
    def _stability_target(self, step, x_prev, x_next, denoised_next, active) -> torch.Tensor:
        r, g = self.region, self.config.detection.gamma
        strong = (self.severity == STRONG).to(x_next.device)
        return mitigate.stability_correction(
            x_prev, x_next, denoised_next, self.sigmas[step], self.sigmas[step + 1],
            clean_mean=float(r.mean[_Q["clean"], step]), update_band=r.band("update", step, g),
            latent_band=r.band("latent", step, g), strong=strong)

    def _delayed_guidance(self, step: int, active: torch.Tensor, gap: torch.Tensor | None):
        """Guidance off from an item's first active step until ||eps_c - eps_u|| passes a local minimum."""
        gap_now = gap.cpu() if gap is not None else torch.full((self.batch,), float("nan"))
        was_off = self.guidance_off.clone()
        switch_off = active & ~self.guidance_off & (self.first_flag == step)
        resume = was_off & (gap_now > self._gap_prev)           # past the first local minimum
        self.guidance_off = (self.guidance_off | switch_off) & ~resume
        self._gap_prev = torch.where(self.guidance_off, gap_now, torch.full_like(gap_now, float("inf")))
        if step + 1 < self.steps:
            self.guidance_off_steps[step + 1] = self.guidance_off
        return switch_off | resume, switch_off

    # -- heatmap -------------------------------------------------------------------------------
    def _accumulate_heat(self, step, x_prev, x_next, update_norm, out):
        hi = self.region.band("update", step, self.config.detection.gamma)[1]
        energy = update_energy_map(x_prev, x_next, self.sigmas[step], self.sigmas[step + 1])
        mask = out.to(energy.device).view(-1, *([1] * (energy.ndim - 1)))
        contrib = heatmap.excess_share(energy, update_norm, hi) * mask
        self.heat = contrib if self.heat is None else self.heat + contrib

    def heat_map(self, height: int, width: int) -> torch.Tensor:
        """[B, height, width] in [0, 1]; zeros for items that never left the band."""
        if self.heat is None:
            return torch.zeros(self.batch, height, width)
        return heatmap.to_image_map(self.heat.cpu(), height, width)

    # -- results -------------------------------------------------------------------------------
    def scores(self) -> dict[str, torch.Tensor]:
        return detect.scores(self.z[: self.observed, _Q["update"]], self.config.detection, self.steps)

    def flagged(self) -> torch.Tensor:
        """[B] bool: the item had an active step (what mitigation acts on)."""
        return self.active.any(dim=0)

    def verdicts(self) -> list[str]:
        out = []
        flagged = self.flagged()
        for i in range(self.batch):
            if self.settings.cfg <= 1.0:
                out.append("unavailable: no classifier-free guidance (cfg <= 1), the signal needs it")
            elif self.region is None:
                out.append("unavailable: no stability region for these settings")
            elif self.non_finite[i] >= 0:
                out.append(f"invalid: non-finite values from step {int(self.non_finite[i])}")
            elif flagged[i]:
                out.append("memorized")
            else:
                out.append("clean")
        return out

    def report(self) -> RunReport:
        sc = self.scores()
        verdicts = self.verdicts()
        items = []
        n = self.observed
        for i in range(self.batch):
            first = int(self.first_flag[i])
            items.append(ItemReport(
                index=i, verdict=verdicts[i], flagged=verdicts[i] == "memorized",
                severity=detect.SEVERITY_NAMES[int(self.severity[i])],
                first_flagged_step=first if first >= 0 else None,
                scores={k: _num(v[i]) for k, v in sc.items()},
                norms={q: [_num(v) for v in self.values[:n, j, i]] for q, j in _Q.items()},
                zscores={q: [_num(v) for v in self.z[:n, j, i]] for q, j in _Q.items()},
                step_flags=[int(v) for v in self.flags[:n, i]],
                active_steps=self.active[:n, i].nonzero().flatten().tolist(),
                corrected_steps=self.corrected[:n, i].nonzero().flatten().tolist(),
                guidance_off_steps=self.guidance_off_steps[:n, i].nonzero().flatten().tolist(),
                non_finite_step=int(self.non_finite[i]) if self.non_finite[i] >= 0 else None,
            ))
        region = None
        if self.region is not None:
            g = self.config.detection.gamma
            region = {"settings": self.region.settings.to_dict(), "gamma": g, "meta": self.region.meta,
                      "band": {q: {"low": [_num(v) for v in (self.region.mean[j] - g * self.region.std[j])],
                                   "high": [_num(v) for v in (self.region.mean[j] + g * self.region.std[j])]}
                               for q, j in _Q.items()}}
        return RunReport(settings=self.settings.to_dict(), config=_config_dict(self.config), sigmas=self.sigmas,
                         steps_observed=n, region=region, items=items, extra_model_calls=self.extra_evals,
                         notes=list(self.notes))


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _config_dict(c: GuardConfig) -> dict:
    d = {k: getattr(c, k) for k in ("mode", "strategy", "exact", "off_scale")}
    d["detection"] = dict(c.detection.__dict__)
    return d
