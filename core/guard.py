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

from . import detect, evidence, heatmap, mitigate
from .detect import MILD, NONE, STRONG, DetectionConfig
from .measures import QUANTITIES, guidance_gap, measure_step, prediction_agreement, scratch_for, update_energy_map
from .region import StabilityRegion
from .report import ItemReport, RunReport
from .settings import RunSettings

MODES = ("detect", "mitigate")
# how mitigate steers a flagged item (see core/mitigate.py):
#   unconditional     guidance off (off_scale) for the rest of the run: no copy, but the prompt stops steering
#   orthogonal        keep guiding, minus the direction guidance pointed in at the flagged step
#   delayed_guidance  guidance off (off_scale) until ||eps_c - eps_u|| passes a local minimum
#   stability         rescale the clean prediction and clamp the latent into the band (the paper)
#   reprompt          after the run, move the flagged item's prompt embedding until its pull is ordinary
#                     (Wen et al. 2024) and sample it again from the same noise (core/reprompt.py)
#   repel             keep guiding, but take out of every later clean prediction the pattern the
#                     conditional prediction showed at the flagged step (the copy taking shape); colours stay
STRATEGIES = ("unconditional", "orthogonal", "delayed_guidance", "stability", "reprompt", "repel")
RESTART_STRATEGIES = ("reprompt",)   # need the whole run in hand: the guarded sampler restarts the item
GUIDANCE_STRATEGIES = ("orthogonal", "delayed_guidance", "unconditional", "repel")
_Q = {name: i for i, name in enumerate(QUANTITIES)}
MIN_NULL_RUNS = 20   # calibration runs below which a false-flag rate cannot be estimated


@dataclass(frozen=True)
class GuardConfig:
    mode: str = "mitigate"               # "detect" watches; "mitigate" also steers flagged items
    strategy: str = "repel"              # how to steer, see STRATEGIES (chosen in docs/mitigation.md)
    exact: bool = True                   # re-evaluate the model where a correction moved the latent
    off_scale: float = -0.5              # guidance scale while a flagged item's guidance is off: 0 is the
                                         # unconditional model, which can draw a memorized image itself;
                                         # below 0 also pushes away from where the prompt pulls
    escalate: bool = True                # orthogonal, repel: guidance off if the item leaves the band again
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
    reguide: torch.Tensor | None = None        # guidance changed: recombine cond/uncond for these rows
    rewind: torch.Tensor | None = None         # guidance changed at the flag: redo this step (exact mode)

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
        self.steered_steps = torch.zeros(n, batch, dtype=torch.bool)
        self.first_flag = torch.full((batch,), -1, dtype=torch.long)
        self.severity = torch.zeros(batch, dtype=torch.int8)
        self.non_finite = torch.full((batch,), -1, dtype=torch.long)
        self.observed = 0
        self.heat: torch.Tensor | None = None
        self.override = torch.full((batch,), float("nan"))   # per-item guidance scale (NaN: the run's cfg)
        self.projected = torch.zeros(batch, dtype=torch.bool)
        self.g_star: torch.Tensor | None = None    # the direction projected out, per projected item
        self.repelled = torch.zeros(batch, dtype=torch.bool)
        self.copy_pattern: torch.Tensor | None = None   # per repelled item, the unit pattern repelled
        self._dir_start: torch.Tensor | None = None   # cond - uncond at the current step's start
        self._gap_prev = torch.full((batch,), float("inf"))
        self.extra_evals = 0
        self.notes: list[str] = []
        self.k_active = config.detection.active_window(self.steps)
        self._scratch: torch.Tensor | None = None      # the measures' working memory, kept across steps
        self.evidence = torch.full((n, batch), float("nan"))   # S_j, the verdict's statistic (core/evidence.py)
        self.null, self.threshold, self._path = None, float("nan"), None
        runs = 0 if region is None or region.trajectories is None else region.trajectories.shape[0]
        if runs >= MIN_NULL_RUNS:
            if self.k_active not in region.nulls:
                region.nulls[self.k_active] = evidence.null_from_trajectories(region.trajectories, self.k_active)
            self.null = region.nulls[self.k_active]
            self.threshold = self.null.tail.threshold(config.detection.false_flag_rate)
            self._path = evidence.EvidencePath(self.null, batch)
            if self.null.weights == evidence.LEGACY_WEIGHTS:
                self.notes.append("the region was calibrated before the prediction agreement was measured: the "
                                  "verdict uses the update and guidance gap, which miss more copies. Recalibrate.")
        elif region is not None:
            self.notes.append(f"the region keeps {runs} calibration trajectories (a false-flag rate needs "
                              f"{MIN_NULL_RUNS}; regions saved by version 0.1 keep none): the verdict uses the band "
                              f"rule with tau_mild {config.detection.tau_mild}. Recalibrate to flag by false-flag rate.")

    # -- guidance ------------------------------------------------------------------------------
    @property
    def steering(self) -> torch.Tensor:
        """[B] bool: items whose guidance the guard currently changes."""
        return ~torch.isnan(self.override) | self.projected | self.repelled

    def guidance_scales(self, cfg: float) -> torch.Tensor:
        """Per-item guidance scale for the next model call: the override where set, else cfg."""
        return torch.where(torch.isnan(self.override), torch.tensor(float(cfg)), self.override)

    def guided_prediction(self, cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
        """Classifier-free guidance as the guard wants it, per item. Items it does not steer get
        exactly uncond + cfg * (cond - uncond)."""
        out = mitigate.guided(cond, uncond, self.guidance_scales(cfg).to(cond.device))
        if bool(self.projected.any()):
            rows = self.projected.nonzero().flatten().to(cond.device)
            g = mitigate.project_out(cond[rows] - uncond[rows], self.g_star[rows])
            scale = self.guidance_scales(cfg)[rows.cpu()].to(cond.device, cond.dtype)
            out[rows] = (uncond[rows] + scale.view(-1, *([1] * (g.ndim - 1))) * g).to(out.dtype)
        if bool(self.repelled.any()):
            rows = self.repelled.nonzero().flatten().to(cond.device)
            out[rows] = mitigate.repel(out[rows], self.copy_pattern[rows]).to(out.dtype)
        return out

    def begin(self, cond: torch.Tensor, uncond: torch.Tensor | None) -> None:
        """The first model call's predictions (at x_0): the orthogonal strategy needs its direction."""
        if self.mitigating and self.config.strategy == "orthogonal" and uncond is not None:
            self._dir_start = (cond - uncond).detach()

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
        self._scratch = scratch_for(x_next, self._scratch)
        gap = guidance_gap(cond_next, uncond_next, s_next, self._scratch)
        agreement = prediction_agreement(cond_next, uncond_next, self._scratch)
        m = measure_step(x_prev, x_next, s_prev, s_next, denoised_next, gap, self._scratch, agreement)
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
        if self._path is not None:   # the verdict: accumulated evidence past the false-flag threshold
            s_now = self._path.push(z)
            self.evidence[step] = s_now.float()
            trigger = (s_now > self.threshold) & valid & (step < self.k_active)
        else:                        # a region without calibration trajectories: the band rule
            trigger = out
        first = trigger & (self.first_flag < 0)
        self.first_flag[first] = step
        self.severity[first] = torch.where(strong_now[first], STRONG, MILD).to(torch.int8)
        flagged = self.first_flag >= 0
        over = z[_Q["update"]].abs() > cfg.tau_mild
        active = flagged & valid & (over | first) & ((self.severity == STRONG) | (step < self.k_active))
        self.active[step] = active
        if bool(out.any()):
            self._accumulate_heat(step, x_prev, x_next, m.update, out)

        correct, reguide, rewind, x_corr = none, none.clone(), none.clone(), None
        if self.mitigating:
            strategy = self.config.strategy
            if strategy == "stability" and bool(active.any()):
                correct = active
                x_corr = self._stability_target(step, x_prev, x_next, denoised_next, active)
                self.corrected[step] = active
            elif strategy in GUIDANCE_STRATEGIES:
                reguide, rewind = self._steer(step, active, gap, cond_next, uncond_next, denoised_next)
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

    def _steer(self, step, active, gap, cond_next, uncond_next, denoised_next=None):
        """Change the guidance of items flagged at this step (and release delayed guidance)."""
        strategy = self.config.strategy
        new = active & ~self.steering & (self.first_flag == step)
        changed = new.clone()
        if strategy in ("orthogonal", "repel") and self.config.escalate:
            # still out of band after the projection (repulsion) took over: the pull is elsewhere
            # too, so this item's guidance goes off for the rest of the run (the copy is never allowed)
            steered = self.projected if strategy == "orthogonal" else self.repelled
            again = active & steered & (self.first_flag < step) & torch.isnan(self.override)
            self.override[again] = 0.0
            new |= again
            changed |= again
        if strategy == "orthogonal" and bool(new.any()) and self._dir_start is not None:
            if self.g_star is None:
                self.g_star = torch.zeros_like(self._dir_start)
            rows = new.nonzero().flatten().to(self._dir_start.device)
            self.g_star[rows] = self._dir_start[rows]
            self.projected |= new
        elif strategy == "unconditional":
            self.override[new] = self.config.off_scale
        elif strategy == "repel" and bool((new & ~self.repelled).any()) and denoised_next is not None:
            first = new & ~self.repelled    # escalated items keep the pattern of their first flag
            # the conditional model's own clean prediction is its estimate of the image the caption
            # maps to (the copy); the guided one overshoots it and, on an image not yet heading for the
            # copy, shows its own layout, whose removal let the copy in (docs/mitigation.md)
            source = cond_next if cond_next is not None else denoised_next
            if self.copy_pattern is None:
                self.copy_pattern = torch.zeros(source.shape, dtype=torch.float32, device=source.device)
            rows = first.nonzero().flatten().to(source.device)
            self.copy_pattern[rows] = mitigate.unit_pattern(source[rows])
            self.repelled |= first
        elif strategy == "delayed_guidance":
            gap_now = gap.cpu() if gap is not None else torch.full((self.batch,), float("nan"))
            off = ~torch.isnan(self.override)
            resume = off & (gap_now > self._gap_prev)           # past the first local minimum
            self.override[new] = self.config.off_scale
            self.override[resume] = float("nan")
            changed |= resume
            self._gap_prev = torch.where(~torch.isnan(self.override), gap_now, torch.full_like(gap_now, float("inf")))
        if strategy == "orthogonal" and uncond_next is not None:
            self._dir_start = (cond_next - uncond_next).detach()   # the direction at the next step's start
        if step + 1 < self.steps:
            self.steered_steps[step + 1] = self.steering
        self.steered_steps[step] |= new   # exact mode redoes this step with the new guidance
        return changed, new

    # -- heatmap -------------------------------------------------------------------------------
    def _accumulate_heat(self, step, x_prev, x_next, update_norm, out):
        hi = self.region.band("update", step, self.config.detection.gamma)[1]
        energy = update_energy_map(x_prev, x_next, self.sigmas[step], self.sigmas[step + 1], self._scratch)
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
        n = self.observed
        if self.null is not None:
            return detect.window_scores(self.evidence[:n], self.config.detection, self.steps)
        return detect.legacy_scores(self.z[:n, _Q["update"]], self.z[:n, _Q["clean"]], self.config.detection, self.steps)

    def rarity(self) -> list[float | None]:
        """Per item, the share of ordinary trajectories whose evidence in the verdict window
        reaches this item's (None without calibration trajectories)."""
        if self.null is None or self.observed == 0:
            return [None] * self.batch
        top = detect.nan_max(self.evidence[:min(self.observed, self.k_active)])
        return [finite_or_none(self.null.tail.rate(float(v))) for v in top]

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
            elif self.observed == 0:
                out.append("unavailable: no sampling step was observed")
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
        rarity = self.rarity()
        items = []
        n = self.observed
        for i in range(self.batch):
            first = int(self.first_flag[i])
            items.append(ItemReport(
                index=i, verdict=verdicts[i], flagged=verdicts[i] == "memorized",
                severity=detect.SEVERITY_NAMES[int(self.severity[i])],
                first_flagged_step=first if first >= 0 else None,
                scores={k: finite_or_none(v[i]) for k, v in sc.items()},
                norms={q: [finite_or_none(v) for v in self.values[:n, j, i]] for q, j in _Q.items()},
                zscores={q: [finite_or_none(v) for v in self.z[:n, j, i]] for q, j in _Q.items()},
                step_flags=[int(v) for v in self.flags[:n, i]],
                active_steps=self.active[:n, i].nonzero().flatten().tolist(),
                corrected_steps=self.corrected[:n, i].nonzero().flatten().tolist(),
                steered_steps=self.steered_steps[:n, i].nonzero().flatten().tolist(),
                non_finite_step=int(self.non_finite[i]) if self.non_finite[i] >= 0 else None,
                evidence=[finite_or_none(v) for v in self.evidence[:n, i]],
                ordinary_rate=rarity[i],
            ))
        region = None
        if self.region is not None:
            g = self.config.detection.gamma
            region = {"settings": self.region.settings.to_dict(), "gamma": g, "meta": self.region.meta,
                      "band": {q: {"low": [finite_or_none(v) for v in (self.region.mean[j] - g * self.region.std[j])],
                                   "high": [finite_or_none(v) for v in (self.region.mean[j] + g * self.region.std[j])]}
                               for q, j in _Q.items()},
                      "verdict": self.verdict_rule()}
        return RunReport(settings=self.settings.to_dict(), config=_config_dict(self.config), sigmas=self.sigmas,
                         steps_observed=n, region=region, items=items, extra_model_calls=self.extra_evals,
                         notes=list(self.notes))

    def verdict_rule(self) -> dict:
        d = self.config.detection
        if self.null is None:
            return {"rule": "band", "tau_mild": d.tau_mild, "window": None}
        return {"rule": "evidence", "false_flag_rate": d.false_flag_rate, "threshold": finite_or_none(self.threshold),
                "window": self.k_active, "calibration_runs": self.null.tail.samples,
                "weights": dict(self.null.weights), "starts": list(self.null.starts)}


def finite_or_none(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _config_dict(c: GuardConfig) -> dict:
    d = {k: getattr(c, k) for k in ("mode", "strategy", "exact", "off_scale")}
    d["detection"] = dict(c.detection.__dict__)
    return d
