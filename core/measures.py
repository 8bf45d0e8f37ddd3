"""Per-step measurements of a sampling trajectory, per batch item, in float32.

For a step j that moves the k-diffusion state x_j (at sigma_j) to the proposal x_{j+1} (at
sigma_{j+1}), with the clean prediction D(x_{j+1}) that the next model call makes anyway:

    latent  ||z_{j+1}||              z = x / sqrt(1 + sigma^2), the VP latent
    update  ||z_{j+1} - z_j||        the latent update
    clean   ||D(x_{j+1})||           the clean prediction at the proposal (the latent at the end)
    gap     ||eps_c - eps_u||        Wen et al.'s text-conditional noise magnitude at the proposal,
                                     (D_u - D_c) / sigma in x-space; NaN when no uncond exists
    agreement  cos(D_c, D_u)         the cosine between the conditional and unconditional clean
                                     predictions at the proposal, each channel's spatial mean removed:
                                     how much the prompt's picture looks like the model's picture
                                     without it. A trajectory falling into a memorized image has a
                                     conditional prediction of its own (low agreement) even where the
                                     gap's size stays ordinary; NaN when no uncond exists

Norms are plain L2 over every non-batch element, so [B,C,H,W] and [B,C,T,H,W] both work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QUANTITIES = ("latent", "update", "clean", "gap", "agreement")


def item_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm over all non-batch elements, in float32, as a [B] tensor."""
    return t.float().flatten(1).norm(dim=1)


def to_vp(x: torch.Tensor, sigma: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """z = x / sqrt(1 + sigma^2) in float32; into `out` (float32, x's shape) when given."""
    scale = (1.0 + sigma * sigma) ** 0.5
    return x.float() / scale if out is None else out.copy_(x).div_(scale)


@dataclass
class StepMeasures:
    """The quantities of one step, each a [B] float32 tensor on the caller's device."""

    latent: torch.Tensor
    update: torch.Tensor
    clean: torch.Tensor
    gap: torch.Tensor
    agreement: torch.Tensor

    def stack(self) -> torch.Tensor:
        """[len(QUANTITIES), B] in QUANTITIES order."""
        return torch.stack([self.latent, self.update, self.clean, self.gap, self.agreement])


def scratch_for(x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Two float32 latents' worth of working memory for the measures, reused from step to step:
    fresh latent-sized temporaries every step make the allocator hand memory back to the system
    and fault it in again around the model call, which cost more than the measures themselves."""
    if scratch is None or scratch.shape[1:] != x.shape or scratch.device != x.device:
        scratch = torch.empty((2, *x.shape), dtype=torch.float32, device=x.device)
    return scratch


def guidance_gap(cond: torch.Tensor | None, uncond: torch.Tensor | None, sigma: float,
                 scratch: torch.Tensor | None = None) -> torch.Tensor | None:
    """||eps_c - eps_u|| per item from the cond/uncond clean predictions, or None without both."""
    if cond is None or uncond is None or sigma <= 0:
        return None
    diff = scratch_for(cond, scratch)[0].copy_(uncond).sub_(cond)     # uncond.float() - cond.float()
    return item_norm(diff) / sigma


def prediction_agreement(cond: torch.Tensor | None, uncond: torch.Tensor | None,
                         scratch: torch.Tensor | None = None) -> torch.Tensor | None:
    """cos(D_c, D_u) per item, each channel's spatial mean removed, or None without both."""
    if cond is None or uncond is None:
        return None
    buf = scratch_for(cond, scratch)
    spatial = tuple(range(2, cond.ndim))
    c = buf[0].copy_(cond)
    c = c.sub_(c.mean(dim=spatial, keepdim=True)) if spatial else c
    u = buf[1].copy_(uncond)
    u = u.sub_(u.mean(dim=spatial, keepdim=True)) if spatial else u
    dot = (c.flatten(1) * u.flatten(1)).sum(dim=1)
    return dot / (item_norm(c) * item_norm(u)).clamp(min=1e-12)


def measure_step(x_prev: torch.Tensor, x_next: torch.Tensor, sigma_prev: float, sigma_next: float,
                 denoised_next: torch.Tensor | None, gap_next: torch.Tensor | None = None,
                 scratch: torch.Tensor | None = None, agreement_next: torch.Tensor | None = None) -> StepMeasures:
    """Measure the step x_prev -> x_next. `denoised_next` is D(x_next); None at the last step.
    `scratch` (from scratch_for) is working memory; the results do not depend on it, to the bit."""
    buf = scratch_for(x_next, scratch)
    z_next = to_vp(x_next, sigma_next, out=buf[1])
    latent = item_norm(z_next)
    update = item_norm(z_next.sub_(to_vp(x_prev, sigma_prev, out=buf[0])))
    clean = item_norm(denoised_next) if denoised_next is not None else item_norm(x_next)
    nan = torch.full_like(latent, float("nan"))
    gap = gap_next if gap_next is not None else nan
    agreement = agreement_next if agreement_next is not None else nan
    return StepMeasures(latent, update, clean, gap.float(), agreement.float())


def update_energy_map(x_prev: torch.Tensor, x_next: torch.Tensor, sigma_prev: float, sigma_next: float,
                      scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Per-location squared update summed over channels: [B, *spatial] (the heatmaps' raw material).
    With `scratch` (from scratch_for) the update is formed in it, as in measure_step, to the bit."""
    buf = scratch_for(x_next, scratch)
    dz = to_vp(x_next, sigma_next, out=buf[1]).sub_(to_vp(x_prev, sigma_prev, out=buf[0]))
    return dz.square_().sum(dim=1)
