"""Stable Diffusion's discrete VP noise schedule in k-diffusion form, and the usual step spacings.

Mirrors ComfyUI's `ModelSamplingDiscrete` and its schedulers, so that the core's own samplers and
ComfyUI's KSampler see the same sigmas for the same settings.
"""

from __future__ import annotations

import math

import torch

SCHEDULERS = ("normal", "karras", "simple", "ddim_uniform")


class DiscreteSchedule:
    """sigma(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t) over SD's scaled-linear betas."""

    def __init__(self, linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000):
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.alphas_cumprod = alphas_cumprod.float()
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest discrete timestep (as ComfyUI does), same shape as sigma."""
        dists = sigma.float().log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.float().clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigmas_for(self, steps: int, scheduler: str = "normal", denoise: float = 1.0) -> torch.Tensor:
        """steps + 1 decreasing sigmas ending in 0, like ComfyUI's KSampler (denoise < 1 keeps the tail)."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if not 0.0 < denoise <= 1.0:
            raise ValueError(f"denoise must be in (0, 1], got {denoise}")
        total = steps if denoise >= 1.0 else int(steps / denoise)
        if scheduler == "normal":
            ts = torch.linspace(len(self.sigmas) - 1, 0, total)
            sig = torch.cat([self.sigma(ts), torch.zeros(1)])
        elif scheduler == "karras":
            rho = 7.0
            ramp = torch.linspace(0, 1, total)
            lo, hi = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
            sig = torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1)])
        elif scheduler == "simple":
            ss = len(self.sigmas) / total
            sig = torch.tensor([float(self.sigmas[-(1 + int(i * ss))]) for i in range(total)] + [0.0])
        elif scheduler == "ddim_uniform":
            ss = max(len(self.sigmas) // total, 1)
            sig = torch.tensor([0.0] + [float(s) for s in self.sigmas[1::ss]]).flip(0)
        else:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        return sig[-(steps + 1):].float()


def start_latent(noise: torch.Tensor, sigmas: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """The starting x for pure noise, as ComfyUI's epsilon models make it: at the top of the
    schedule (a full denoise) noise * sqrt(1 + sigma^2), so the VP latent is exactly the unit
    noise; further down noise * sigma (add the encoded image for img2img)."""
    sigma = float(sigmas[0])
    top = math.isclose(sigma, sigma_max, rel_tol=1e-5) or sigma > sigma_max
    return noise * (vp_scale(sigma) if top else sigma)


def vp_scale(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """x = z * sqrt(1 + sigma^2): the factor between k-diffusion's x and the VP latent z."""
    if isinstance(sigma, torch.Tensor):
        return (1 + sigma.float() ** 2).sqrt()
    return math.sqrt(1 + sigma * sigma)
