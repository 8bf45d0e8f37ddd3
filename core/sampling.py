"""A sampler-agnostic guarded sampler: bring any denoiser, sigmas and a starting latent.

    pair = cfg_pair(denoise, cond, uncond)            # denoise(x, sigma, c) -> clean prediction
    region = calibrate([(pair_i, x_i) ...], sigmas, settings, cfg=7.5)
    result = guarded_sample(pair, x, sigmas, settings, cfg=7.5, region=region,
                            config=GuardConfig(mode="mitigate"))
    result.latent, result.report

Conventions are k-diffusion's: x = x0 + sigma * eps, sigmas decreasing to 0. Start x as ComfyUI
does (core.schedule.start_latent): noise * sqrt(1 + sigmas[0]^2) for a full denoise, so that
regions calibrated here and inside ComfyUI agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from . import reprompt
from .guard import RESTART_STRATEGIES, GuardConfig, StabilityGuard
from .mitigate import guided, shifted_prediction
from .region import RegionBuilder, StabilityRegion
from .report import RunReport
from .settings import RunSettings

SAMPLERS = ("euler", "ddim")


class PairDenoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor | None,
                 need_uncond: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditional and unconditional clean predictions for `x` [b, ...] at `sigma` [b].

        `rows` are the batch rows that x holds (None: all of them), so a denoiser can pick the
        matching conditioning; the uncond prediction may be None when `need_uncond` is False.
        """


class CfgPair:
    """A PairDenoiser from `denoise(x, sigma, c) -> x0` and its conditioning. Tensor conds [B, ...]
    are sliced by row and, with `batched`, cond and uncond run in one call as ComfyUI does. It
    keeps what it was made from, so a strategy that moves the conditioning (core/reprompt.py) can
    make the pair of a sub-batch with another cond (`subset`)."""

    def __init__(self, denoise: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], cond: Any, uncond: Any,
                 batched: bool = True):
        self.denoise, self.cond, self.uncond, self.batched = denoise, cond, uncond, batched

    @staticmethod
    def _pick(c, rows):
        return c if rows is None or not isinstance(c, torch.Tensor) else c[rows.to(c.device)]

    def __call__(self, x, sigma, rows, need_uncond):
        c = self._pick(self.cond, rows)
        if not need_uncond:
            return self.denoise(x, sigma, c), None
        u = self._pick(self.uncond, rows)
        if self.batched and isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor) and c.shape == u.shape:
            out = self.denoise(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([c, u]))
            return out.chunk(2)
        return self.denoise(x, sigma, c), self.denoise(x, sigma, u)

    @property
    def tensor_conds(self) -> bool:
        return isinstance(self.cond, torch.Tensor) and isinstance(self.uncond, torch.Tensor)

    def subset(self, rows: torch.Tensor, cond: torch.Tensor | None = None) -> "CfgPair":
        """The pair of batch rows `rows` (tensor conds only), with `cond` in place of theirs if given."""
        return CfgPair(self.denoise, self._pick(self.cond, rows) if cond is None else cond,
                       self._pick(self.uncond, rows), self.batched)


def cfg_pair(denoise: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], cond: Any, uncond: Any,
             batched: bool = True) -> CfgPair:
    """A PairDenoiser from `denoise(x, sigma, c) -> x0` (see CfgPair)."""
    return CfgPair(denoise, cond, uncond, batched)


def step(sampler: str, x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One deterministic step from sigma to sigma_next."""
    if sampler == "euler":
        d = (x - denoised) / sigma
        return x + d * (sigma_next - sigma)
    if sampler == "ddim":
        # DDIM in VP form: z' = sqrt(abar') x0 + sqrt(1 - abar') eps, written back in x-space.
        eps = (x - denoised) / sigma
        return denoised + eps * sigma_next
    raise ValueError(f"unknown sampler {sampler!r}; the core samples with {', '.join(SAMPLERS)}")


@dataclass
class SampleResult:
    latent: torch.Tensor
    report: RunReport
    guard: StabilityGuard


def guarded_sample(pair: PairDenoiser, x: torch.Tensor, sigmas: torch.Tensor, settings: RunSettings,
                   cfg: float, region: StabilityRegion | None = None, config: GuardConfig = GuardConfig(),
                   sampler: str | None = None, callback: Callable[[int, StabilityGuard], None] | None = None,
                   ) -> SampleResult:
    """Sample with classifier-free guidance while the guard watches (and, in mitigate mode, steers).

    In detect mode, and for items that are never flagged, the arithmetic is exactly that of
    `plain_sample`: the guard only reads. Strategies that restart a flagged item (RESTART_STRATEGIES)
    sample it again after the run, from the same starting latent.
    """
    result = _guarded_pass(pair, x, sigmas, settings, cfg, region, config, sampler, callback)
    if config.mode == "mitigate" and region is not None and config.strategy in RESTART_STRATEGIES:
        result = _restart_flagged(result, pair, x, sigmas, settings, cfg, region, config, sampler)
    return result


def _restart_flagged(first: SampleResult, pair, x, sigmas, settings, cfg, region, config, sampler) -> SampleResult:
    """Re-prompt the flagged items (core/reprompt.py) and sample them again from the same start;
    the report keeps the first run's detection and says what the second run did."""
    guard = first.guard
    restart = reprompt.restart_rows(guard)
    if not restart:
        return first
    if not isinstance(pair, CfgPair) or not pair.tensor_conds:
        guard.notes.append("reprompt needs the prompt embedding as a tensor (a CfgPair from cfg_pair); "
                           "the flagged items were left as sampled")
        first.report = guard.report()
        return first
    rows = torch.tensor(restart, device=x.device)
    sigma0 = float(sigmas[0])
    target = reprompt.target_gap(region)
    with torch.no_grad():
        d_u = pair.denoise(x[rows], torch.full((len(restart),), sigma0, device=x.device, dtype=x.dtype), pair.uncond[rows])
    moved = reprompt.reprompt(pair.denoise, x[rows], sigma0, pair.cond[rows], d_u, target)
    second = _guarded_pass(pair.subset(rows, moved.context), x[rows], sigmas, settings, cfg, region,
                           replace(config, mode="detect"), sampler, None)
    latent = first.latent.clone()
    latent[rows] = second.latent.to(latent.dtype)
    reprompt.record(guard, restart, moved, target, second.guard.flagged().tolist(), guard.steps * len(restart))
    return SampleResult(latent, guard.report(), guard)


def _guarded_pass(pair, x, sigmas, settings, cfg, region, config, sampler, callback) -> SampleResult:
    sampler = sampler or settings.sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; the core samples with {', '.join(SAMPLERS)}")
    sig = [float(s) for s in sigmas]
    b = x.shape[0]
    guard = StabilityGuard(settings, sigmas, b, region, config)
    if b == 0:
        return SampleResult(x.clone(), guard.report(), guard)
    need_uncond = cfg != 1.0

    def evaluate(xx, s, rows=None):
        sv = torch.full((xx.shape[0],), s, device=xx.device, dtype=xx.dtype)
        return pair(xx, sv, rows, need_uncond)

    def combine(c, u):
        return c if u is None else guard.guided_prediction(c, u, cfg)

    cond, uncond = evaluate(x, sig[0])
    guard.begin(cond, uncond)
    denoised = combine(cond, uncond)
    for j in range(len(sig) - 1):
        x_next = step(sampler, x, denoised, sig[j], sig[j + 1])
        last = j + 1 == len(sig) - 1
        if last:
            cond_n = uncond_n = denoised_n = None
        else:
            cond_n, uncond_n = evaluate(x_next, sig[j + 1])
            denoised_n = combine(cond_n, uncond_n)
        act = guard.observe(j, x, x_next, denoised_n, cond_n, uncond_n)

        if not last and uncond_n is not None and act.reguide is not None and bool(act.reguide.any()):
            if config.exact and act.rewind is not None and bool(act.rewind.any()):
                # redo step j for items whose guidance just changed, from the same start
                back = act.rewind.nonzero().flatten()
                d_back = combine(cond, uncond)[back]
                x_next = x_next.clone()
                x_next[back] = step(sampler, x[back], d_back, sig[j], sig[j + 1]).to(x_next.dtype)
                c_b, u_b = evaluate(x_next[back], sig[j + 1], back)
                cond_n, uncond_n = cond_n.clone(), uncond_n.clone()
                cond_n[back], uncond_n[back] = c_b, u_b
                guard.note_extra_evals(len(back))
            denoised_n = combine(cond_n, uncond_n)

        if bool(act.correct.any()):
            rows = act.correct.nonzero().flatten()
            x_fix = act.x_corrected[rows].to(x_next.dtype)
            x_next = x_next.clone()
            if not last:
                denoised_n = denoised_n.clone()
                if config.exact:
                    c_f, u_f = evaluate(x_fix, sig[j + 1], rows)
                    cond_n, uncond_n = cond_n.clone(), None if uncond_n is None else uncond_n.clone()
                    cond_n[rows] = c_f
                    if uncond_n is not None:
                        uncond_n[rows] = u_f
                    denoised_n[rows] = combine(cond_n, uncond_n)[rows]
                    guard.note_extra_evals(len(rows))
                else:
                    denoised_n[rows] = shifted_prediction(denoised_n[rows], x_next[rows], x_fix).to(denoised_n.dtype)
            x_next[rows] = x_fix

        if callback is not None:
            callback(j, guard)
        x, denoised, cond, uncond = x_next, denoised_n, cond_n, uncond_n
    return SampleResult(x, guard.report(), guard)


def plain_sample(pair: PairDenoiser, x: torch.Tensor, sigmas: torch.Tensor, cfg: float, sampler: str = "euler") -> torch.Tensor:
    """The same sampler with no guard: the baseline for bit-identity and overhead."""
    sig = [float(s) for s in sigmas]
    b = x.shape[0]
    need_uncond = cfg != 1.0
    scales = torch.full((b,), float(cfg))
    for j in range(len(sig) - 1):
        sv = torch.full((b,), sig[j], device=x.device, dtype=x.dtype)
        c, u = pair(x, sv, None, need_uncond)
        denoised = c if u is None else guided(c, u, scales.to(c.device))
        x = step(sampler, x, denoised, sig[j], sig[j + 1])
    return x


def calibrate(runs: Iterable[tuple[PairDenoiser, torch.Tensor]], sigmas: torch.Tensor, settings: RunSettings,
              cfg: float, sampler: str | None = None, meta: dict | None = None,
              progress: Callable[[int], None] | None = None) -> StabilityRegion:
    """A stability region from trajectories on ordinary prompts, accumulated run by run."""
    if cfg <= 1.0:
        raise ValueError(f"Calibration needs classifier-free guidance (cfg > 1, got {cfg}): the signal comes from it.")
    if not settings.sigmas:
        settings = replace(settings, sigmas=tuple(float(s) for s in sigmas))
    builder = RegionBuilder(settings)
    done = 0
    for pair, x in runs:
        result = guarded_sample(pair, x, sigmas, settings, cfg, region=None, sampler=sampler)
        builder.add_run(result.guard.values)
        done += x.shape[0]
        if progress is not None:
            progress(done)
    return builder.build({"trajectories": done, **(meta or {})})
