"""What a mitigated image keeps: prompt adherence and a quality distance, with their yardsticks.

- Adherence (bench/checker.py): the share of the caption's named attributes the checker finds,
  compared with the checker's reading of ordinary generations of the same kind of caption (one
  object, or two), so that the checker's own errors are on both sides of the ratio.
- Quality: the Frechet distance between the checker's features of a set of images and those of a
  reference set of ordinary generations. A distance means little alone at these sample sizes, so
  its noise floor comes with it: the distance from the reference to a *second*, independent set
  of ordinary generations of the same size, averaged over random subsets of that size.
- Fine detail: the share of an image's energy (its mean removed) at spatial periods under 8
  pixels, beside the same share in ordinary generations. The Frechet distance on the checker's
  features sees colour coverage and misses grain; this number sees grain (docs/mitigation.md).
  With it, the fine detail a mitigated image shares with the detect-mode image it replaced.
"""

from __future__ import annotations

import math

import torch


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [n, d] and b [m, d]."""
    a, b = a.double(), b.double()
    mu = a.mean(0) - b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    # tr sqrt(ca cb) through the symmetric form sqrt(ca)^T cb sqrt(ca), whose eigenvalues are real
    va, ua = torch.linalg.eigh(ca)
    sa = ua @ torch.diag(va.clamp(min=0).sqrt()) @ ua.T
    cross = torch.linalg.eigvalsh(sa @ cb @ sa).clamp(min=0).sqrt().sum()
    return float(mu @ mu + ca.trace() + cb.trace() - 2 * cross)


def matched_frechet(images_feat: torch.Tensor, reference: torch.Tensor, ordinary: torch.Tensor,
                    draws: int = 20, seed: int = 0) -> tuple[float, float, int]:
    """(distance of the image set to the reference, the noise floor, the set size both used).

    Both the image set and the second ordinary set are subsampled to the same size n (the smaller
    of the two), `draws` times; each figure is the mean over the draws."""
    n = min(images_feat.shape[0], ordinary.shape[0])
    if n < 3:
        return math.nan, math.nan, n
    g = torch.Generator().manual_seed(seed)
    d_img, d_floor = [], []
    for _ in range(draws):
        ia = torch.randperm(images_feat.shape[0], generator=g)[:n]
        io = torch.randperm(ordinary.shape[0], generator=g)[:n]
        d_img.append(frechet(images_feat[ia], reference))
        d_floor.append(frechet(ordinary[io], reference))
    return sum(d_img) / draws, sum(d_floor) / draws, n


def _spectrum(images: torch.Tensor, period: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The images' 2-D spectra (each channel's mean removed) and the mask of frequencies above
    1 / period cycles per pixel along either axis."""
    x = images.float() - images.float().mean(dim=(-2, -1), keepdim=True)
    fy = torch.fft.fftfreq(x.shape[-2]).abs().view(-1, 1)
    fx = torch.fft.fftfreq(x.shape[-1]).abs().view(1, -1)
    return torch.fft.fft2(x), torch.maximum(fy, fx) >= 1.0 / period


def fine_detail(images: torch.Tensor, period: float = 8.0) -> torch.Tensor:
    """Per image [B, C, H, W]: the share of its energy (each channel's mean removed) at spatial
    periods under `period` pixels."""
    spectrum, fine = _spectrum(images, period)
    power = spectrum.abs().pow(2).sum(1)                                # [B, H, W]
    return (power * fine).sum((-2, -1)) / power.sum((-2, -1)).clamp(min=1e-12)


def shared_fine_detail(a: torch.Tensor, b: torch.Tensor, period: float = 8.0) -> torch.Tensor:
    """Per pair of images: the correlation of their parts at periods under `period` pixels. A
    mitigated image against its detect-mode copy: how much of the copy's fine detail it kept,
    which the luminance correlation of the copy metric, dominated by the layout, does not see."""
    (sa, fine), (sb, _) = _spectrum(a, period), _spectrum(b, period)
    ha = torch.fft.ifft2(sa * fine).real.flatten(1)
    hb = torch.fft.ifft2(sb * fine).real.flatten(1)
    return (ha * hb).sum(1) / (ha.norm(dim=1) * hb.norm(dim=1)).clamp(min=1e-12)
