"""Mitigation: pure functions that pull a flagged trajectory back, per batch item.

- `stability_correction`: the method's per-step correction of a proposal (rescale the clean
  prediction to the calibrated norm, then clamp the update and latent norms into their bands).
- `guided`: classifier-free guidance with a per-item scale, so a flagged item can run with
  guidance off (or opposite) while the others keep theirs (delayed guidance, Jain et al. 2025).
- `project_out`: guidance minus its component along a direction; with the direction guidance
  took at the flagged step (the pull toward the memorized image) it keeps the prompt's other
  guidance (orthogonal strategy; the projection is APG's, the choice of direction ours).
- `unit_pattern` / `repel`: a clean prediction's spatial pattern (each channel's mean removed, unit
  norm) and a prediction with its positive component along such a pattern removed. With the
  pattern the conditional model's clean prediction showed at the flagged step (the memorized image
  taking shape), later predictions can no longer move towards that image while guidance and colours
  stay (repel strategy; guidance away from the image being copied as in AMG, Chen et al. 2024, with
  the copy estimated from the run itself instead of a training-set index).
- `shifted_prediction`: the cheap stand-in for re-evaluating the model at a corrected latent.
"""

from __future__ import annotations

import torch

from .measures import item_norm, to_vp


def _per_item(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def _clamp_norm(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    n = item_norm(v)
    target = torch.minimum(torch.maximum(n, lo), hi)
    return v * _per_item(target / n.clamp(min=1e-12), v)


def stability_correction(x_prev: torch.Tensor, x_next: torch.Tensor, denoised_next: torch.Tensor | None,
                         sigma_prev: float, sigma_next: float, clean_mean: float,
                         update_band: tuple[float, float], latent_band: tuple[float, float],
                         strong: torch.Tensor) -> torch.Tensor:
    """The corrected proposal x' (k-diffusion x-space, float32) for every item given.

    1. x0' = x0_hat * mu_clean / ||x0_hat||; in VP space z' = z_next + sqrt(abar_next) (x0' - x0_hat),
       which in x-space is x' = x_next + (x0' - x0_hat).
    2. strong items only: clamp ||z' - z_prev|| into the update band.
    3. clamp ||z'|| into the latent band.
    """
    x_next = x_next.float()
    x0 = denoised_next.float() if denoised_next is not None else x_next
    x0_rescaled = x0 * _per_item(clean_mean / item_norm(x0).clamp(min=1e-12), x0)
    z_prev = to_vp(x_prev, sigma_prev)
    z = to_vp(x_next + (x0_rescaled - x0), sigma_next)
    lo_d = torch.full_like(strong, max(update_band[0], 0.0), dtype=torch.float32)
    hi_d = torch.full_like(lo_d, update_band[1])
    clamped = z_prev + _clamp_norm(z - z_prev, lo_d, hi_d)
    z = torch.where(_per_item(strong, z), clamped, z)
    lo_x = torch.full_like(lo_d, max(latent_band[0], 0.0))
    z = _clamp_norm(z, lo_x, torch.full_like(lo_d, latent_band[1]))
    return z * (1.0 + sigma_next * sigma_next) ** 0.5


def shifted_prediction(denoised: torch.Tensor, x: torch.Tensor, x_corrected: torch.Tensor) -> torch.Tensor:
    """D(x') ~ D(x) + (x' - x): the model's noise estimate held fixed while the latent moves."""
    return denoised.float() + (x_corrected.float() - x.float())


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """uncond + scale * (cond - uncond) with a per-item scale [B]."""
    return uncond + _per_item(scale.to(cond.dtype), cond) * (cond - uncond)


def project_out(g: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """g minus its component along `direction`, per item (computed in float32)."""
    gf, d = g.float().flatten(1), direction.float().flatten(1)
    d = d / d.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return (gf - (gf * d).sum(dim=1, keepdim=True) * d).view_as(g).to(g.dtype)


def _centred(v: torch.Tensor) -> torch.Tensor:
    """Each channel's spatial mean removed ([B, C, ...spatial], float32)."""
    v = v.float()
    return v - v.mean(dim=tuple(range(2, v.ndim)), keepdim=True)


def _smoothed(v: torch.Tensor) -> torch.Tensor:
    """A 3 x 3 box blur over the last two (spatial) dims: the layout without the fine texture."""
    if v.ndim < 4 or min(v.shape[-2:]) < 3:
        return v
    flat = v.reshape(-1, 1, *v.shape[-2:])
    return torch.nn.functional.avg_pool2d(flat, 3, stride=1, padding=1, count_include_pad=False).view_as(v)


def unit_pattern(x0: torch.Tensor) -> torch.Tensor:
    """The spatial layout of a clean prediction (fine texture blurred away, so that repelling it
    does not print the texture's negative into the image), unit norm per item."""
    c = _centred(_smoothed(x0.float()))
    return c / item_norm(c).clamp(min=1e-12).view(-1, *([1] * (c.ndim - 1)))


def repel(d: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """`d` minus its positive component along the unit `pattern` (computed on d's centred part, so
    each channel's mean, the colours, is left alone), per item, in float32."""
    a = (_centred(d).flatten(1) * pattern.flatten(1)).sum(dim=1).clamp(min=0)
    return d.float() - a.view(-1, *([1] * (d.ndim - 1))) * pattern
