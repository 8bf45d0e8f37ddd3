"""Driving the guard from hooks inside someone else's sampler loop (ComfyUI's, for example).

A host gives us two kinds of events and we never see the loop itself:
- every model evaluation: its input x, sigma, the cond/uncond clean predictions and the guided
  `denoised` the sampler is about to use, which we may replace (a post-CFG hook);
- every step start: the sampler's x_i and the denoised of its first evaluation (a callback).

Samplers that evaluate the model once per step, at the schedule's sigmas, are observed at the
evaluation itself, so a decision can still change the denoised that step uses ("per_eval").
Others (Heun, DPM-2, ...) are observed at the step callback and act from their next evaluation.
Corrections of the latent are folded into the denoised: for an Euler-type step from sigma to
sigma_next with r = sigma_next / sigma, x_next = r x + (1 - r) D, so starting from a corrected x'
instead is the same as using D'' = D(x') + (x' - x) r / (1 - r) from x. That is exact for Euler
and DDIM and an approximation for multistep and ancestral samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .guard import StabilityGuard
from .mitigate import shifted_prediction

Reevaluate = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]

# samplers that evaluate the model exactly once per step, at sigmas[i] (the k-diffusion names)
SINGLE_EVAL_SAMPLERS = frozenset({
    "euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu", "lms", "ipndm", "ipndm_v", "deis", "ddpm", "lcm", "unipc", "unipc_bh2",
    "res_multistep", "res_multistep_ancestral", "gradient_estimation", "euler_cfg_pp",
    "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "res_multistep_cfg_pp", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "er_sde", "gradient_estimation_cfg_pp", "res_multistep_ancestral_cfg_pp",
})
# ... and of those, the ones for which a folded correction is exact
FIRST_ORDER_DETERMINISTIC = frozenset({"euler"})


class HookedRun:
    def __init__(self, guard: StabilityGuard, cfg: float, sampler: str):
        self.guard, self.cfg, self.sampler = guard, float(cfg), sampler
        self.per_eval = sampler in SINGLE_EVAL_SAMPLERS
        self.sigmas = guard.sigmas
        self.next_step = 0
        self.prev_x: torch.Tensor | None = None
        self.last_eval: tuple[float, torch.Tensor, torch.Tensor | None] | None = None
        self.prev_eval: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None  # at prev_x
        self.finished = False

    # -- events --------------------------------------------------------------------------------
    def on_eval(self, x: torch.Tensor, sigma: float, cond: torch.Tensor, uncond: torch.Tensor | None,
                denoised: torch.Tensor, reevaluate: Reevaluate | None = None) -> torch.Tensor:
        """A model evaluation; returns the denoised the sampler should use."""
        if self.cfg == 1.0:
            uncond = None
        k = self.next_step
        boundary = self.per_eval and k < self.guard.steps and _same(sigma, self.sigmas[k])
        if boundary:
            if k == 0:
                self.prev_x = x.detach().clone()
                self.guard.begin(cond, uncond)
                start = (cond, uncond, denoised)
            else:
                denoised, start = self._observe(k - 1, x, denoised, cond, uncond, reevaluate)
            if self.guard.mitigating:   # the predictions at this step's (effective) start, for a redo
                self.prev_eval = start
            self.next_step = k + 1
        elif uncond is not None and bool(self.guard.steering.any()):
            denoised = self._reguide(denoised, cond, uncond, self.guard.steering)
        self.last_eval = (sigma, cond, uncond)
        return denoised

    def on_step(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        """The sampler's callback at the start of step i (after its first evaluation)."""
        if i >= self.guard.steps or self.guard.observed >= i + (0 if i else 1):
            return  # already observed at the evaluation
        if i == 0 or self.prev_x is None:
            self.prev_x = x.detach().clone()
            if self.last_eval is not None:
                self.guard.begin(self.last_eval[1], self.last_eval[2])
            self.next_step = max(self.next_step, i + 1)
            return
        cond = uncond = None
        if self.last_eval is not None and _same(self.last_eval[0], self.sigmas[i]):
            _, cond, uncond = self.last_eval
        act = self.guard.observe(i - 1, self.prev_x, x, denoised, cond, uncond)  # steers from the next evaluation
        if bool(act.correct.any()):
            # the step is over before the callback sees it: a latent correction cannot be applied
            # here, so the report must not claim it (guidance strategies still act from the next call)
            self.guard.corrected[i - 1] &= ~act.correct
            note = f"'{self.sampler}' is observed once per step, after it: latent corrections are not applied"
            if note not in self.guard.notes:
                self.guard.notes.append(note)
        self.prev_x = x.detach().clone()
        self.next_step = max(self.next_step, i + 1)

    def finish(self, x_final: torch.Tensor) -> torch.Tensor:
        """The sampler's output: observe the last step (its clean norm is the latent's) and return
        the output, with the last step's correction applied where the strategy corrects latents."""
        last = self.guard.steps - 1
        if not self.finished and self.prev_x is not None and self.guard.observed == last:
            act = self.guard.observe(last, self.prev_x, x_final, None)
            if bool(act.correct.any()):
                rows = act.correct.nonzero().flatten().to(x_final.device)
                x_final = x_final.clone()
                x_final[rows] = act.x_corrected[rows.cpu()].to(x_final.device, x_final.dtype)
        self.finished = True
        return x_final

    # -- decisions -----------------------------------------------------------------------------
    def _observe(self, step, x, denoised, cond, uncond, reevaluate):
        """Observe step `step` at the evaluation of its proposal x; returns the denoised the
        sampler should use from x, and the predictions at the step's effective start."""
        act = self.guard.observe(step, self.prev_x, x, denoised, cond, uncond)
        prev_eval = self.prev_eval
        self.prev_x = x.detach().clone()
        changed = act.reguide if act.reguide is not None else torch.zeros_like(act.active)
        if uncond is not None and bool((changed | self.guard.steering).any()):
            denoised = self._reguide(denoised, cond, uncond, changed | self.guard.steering)
            if act.rewind is not None and bool(act.rewind.any()) and prev_eval is not None:
                # the step just taken used the old guidance: the state a redo with the new guidance
                # would reach is x + (D_new - D_old)(1 - sigma_k / sigma_{k-1}) (exact for Euler)
                c0, u0, d0 = prev_eval
                r = self.sigmas[step + 1] / self.sigmas[step]
                x_redo = (x.float() + (self.guard.guided_prediction(c0, u0, self.cfg).float() - d0.float()) * (1 - r))
                act.correct = act.rewind
                act.x_corrected = x_redo.cpu()
        start = (cond, uncond, denoised)
        if bool(act.correct.any()):
            denoised, start = self._fold(step + 1, x, denoised, cond, uncond, act, reevaluate)
        return denoised, start

    def _reguide(self, denoised, cond, uncond, rows_mask):
        rows = rows_mask.nonzero().flatten().to(denoised.device)
        out = denoised.clone()
        out[rows] = self.guard.guided_prediction(cond, uncond, self.cfg)[rows].to(out.dtype)
        return out

    def _fold(self, k, x, denoised, cond, uncond, act, reevaluate):
        """Use, from x, the denoised that takes the step as if it started at the corrected x'.
        Also returns the predictions at x' (re-evaluated, or shifted with the latent)."""
        rows = act.correct.nonzero().flatten().to(x.device)
        x_fix = x.clone()
        x_fix[rows] = act.x_corrected[rows.cpu()].to(x.device, x.dtype)
        shift = (x_fix - x).float()
        r = self.sigmas[k + 1] / self.sigmas[k] if k + 1 < len(self.sigmas) else 0.0
        if reevaluate is not None:
            cond_f, uncond_f = reevaluate(x_fix)
            self.guard.note_extra_evals(len(rows))
            d_fix = cond_f if uncond_f is None else self.guard.guided_prediction(cond_f, uncond_f, self.cfg)
        else:   # the noise estimate held fixed while the latent moves
            cond_f = cond + shift.to(cond.dtype)
            uncond_f = None if uncond is None else uncond + shift.to(uncond.dtype)
            d_fix = shifted_prediction(denoised, x, x_fix)
        out, start_c, start_u, start_d = denoised.clone(), cond.clone(), None if uncond is None else uncond.clone(), denoised.clone()
        out[rows] = (d_fix[rows].float() + shift[rows] * (r / (1 - r))).to(out.dtype)
        start_c[rows], start_d[rows] = cond_f[rows], d_fix[rows].to(start_d.dtype)
        if start_u is not None:
            start_u[rows] = uncond_f[rows]
        self.prev_x[rows] = x_fix[rows]
        return out, (start_c, start_u, start_d)


def _same(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-4, abs_tol=1e-6)
