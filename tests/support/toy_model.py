"""An analytic toy denoiser for unit tests: data ~ N(base + mu, I) per element, so the exact
posterior mean is D(x, sigma) = (x + sigma^2 (base + mu)) / (1 + sigma^2). `base` is a fixed
pattern per item shape, what every prompt shares (mu = 0 is the unconditional model). A large
|mu| plays a memorized prompt (a sharp, far-away target of its own that guidance overshoots and
that agrees little with the unconditional prediction); small mu an ordinary one."""

import torch


def base(shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum((i + 1) * d for i, d in enumerate(shape)))
    return torch.randn(shape, generator=g)


def denoise(x: torch.Tensor, sigma: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    s2 = sigma.float().view(-1, *([1] * (x.ndim - 1))) ** 2
    target = base(tuple(x.shape[1:])) + mu.float()
    return ((x.float() + s2 * target) / (1 + s2)).to(x.dtype)


def karras(steps: int, sigma_min: float = 0.03, sigma_max: float = 14.6) -> torch.Tensor:
    ramp = torch.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / 7), sigma_max ** (1 / 7)
    return torch.cat([(hi + ramp * (lo - hi)) ** 7, torch.zeros(1)])
