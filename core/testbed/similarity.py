"""Ground truth for the testbed: is a generation a copy of a training image?

At CFG 7.5 in pixel space every seed gets its own colour cast, so copies are judged by a
colour-robust similarity, the Pearson correlation of luminance (COPY_THRESHOLD), next to SSIM,
and checked against an exact nearest-neighbour search over the replayed training stream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

COPY_THRESHOLD = 0.9  # luminance correlation at or above which a generation is a copy


def luminance(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] (any range) -> [B, H, W]."""
    w = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    return (images.float() * w).sum(dim=1)


def _unit(lum: torch.Tensor) -> torch.Tensor:
    v = lum.flatten(1)
    v = v - v.mean(dim=1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp(min=1e-8)


def luminance_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise-aligned correlation of a[i] and b[i] ([B, 3, H, W] each) -> [B]."""
    return (_unit(luminance(a)) * _unit(luminance(b))).sum(dim=1)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of luminance (images in [-1, 1]), gaussian window 11, sigma 1.5 -> [B]."""
    x, y = ((luminance(a) + 1) / 2).unsqueeze(1), ((luminance(b) + 1) / 2).unsqueeze(1)
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    g = (g / g.sum()).to(x.device)
    win = (g[:, None] * g[None, :]).view(1, 1, 11, 11)
    blur = lambda t: F.conv2d(t, win, padding=5)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


def luminance_bank(batches: Callable[[int], torch.Tensor], n_batches: int) -> torch.Tensor:
    """Unit-normalised, mean-free luminance vectors [N, H*W] of every image of a replayed stream."""
    return torch.cat([_unit(luminance(batches(k))) for k in range(n_batches)])


def nearest_neighbours(generated: torch.Tensor, bank: torch.Tensor, chunk: int = 16384,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact search: each generation's largest luminance correlation with any image in the bank,
    and that image's index in the bank."""
    q = _unit(luminance(generated))
    best = torch.full((q.shape[0],), -2.0)
    where = torch.full((q.shape[0],), -1, dtype=torch.long)
    for start in range(0, bank.shape[0], chunk):
        val, idx = (q @ bank[start:start + chunk].T).max(dim=1)
        better = val > best
        best = torch.where(better, val, best)
        where = torch.where(better, start + idx, where)
    return best, where
