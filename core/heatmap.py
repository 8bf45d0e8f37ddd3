"""Heatmaps of "broken" pixels, and how to draw them over an image.

- Instability map (latent space, accumulated during sampling): on every step whose update norm
  overshoots the band, the excess energy ||dz||^2 - hi^2 is shared among latent locations in
  proportion to their part of the update energy. Where the trajectory blew up, the map is hot.
- Burnt-pixel map (image space): how clipped each pixel of the decoded image is.
- Rendering: normalise, upsample to the image size, colormap, alpha-blend over the greyed image.
Images are [B, H, W, 3] floats in [0, 1] (ComfyUI's IMAGE layout); maps are [B, H, W].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def excess_share(energy: torch.Tensor, update_norm: torch.Tensor, band_hi: float) -> torch.Tensor:
    """This step's contribution [B, *spatial]: the overshoot energy spread by location share."""
    total = energy.flatten(1).sum(dim=1).clamp(min=1e-12)
    excess = (update_norm.float() ** 2 - band_hi ** 2).clamp(min=0.0)
    weight = (excess / total).view(-1, *([1] * (energy.ndim - 1)))
    return energy * weight


def to_image_map(latent_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A latent-space energy map [B, *spatial] -> [B, height, width] in [0, 1]: the square root
    (a magnitude, so the hot area reads at its size) upsampled and max-normalised per item.

    Video maps [B, T, h, w] are summed over time first: the mask marks where, not when.
    """
    m = latent_map.float()
    while m.ndim > 3:
        m = m.sum(dim=1)
    if m.shape[0] == 0:
        return torch.zeros(0, height, width)
    m = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0).sqrt()   # energy -> magnitude
    m = F.interpolate(m.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False).squeeze(1)
    peak = m.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return (m / peak).clamp(0, 1)


def burnt_map(images: torch.Tensor, low: float = 0.02, high: float = 0.98) -> torch.Tensor:
    """Share of colour channels clipped at each pixel, [B, H, W] in [0, 1]."""
    img = images.float()
    clipped = (img <= low) | (img >= high)
    return clipped.float().mean(dim=-1)


_LUMA = torch.tensor([0.2126, 0.7152, 0.0722])   # Rec. 709 luminance weights

# a perceptual, colour-blind-safe ramp (a coarse "inferno")
_INFERNO = torch.tensor([
    [0.001, 0.000, 0.014], [0.258, 0.039, 0.406], [0.578, 0.148, 0.404],
    [0.865, 0.317, 0.226], [0.988, 0.645, 0.040], [0.988, 0.998, 0.645],
])


def colormap(m: torch.Tensor) -> torch.Tensor:
    """[B, H, W] in [0, 1] -> [B, H, W, 3] colours."""
    lut = _INFERNO.to(m.device)
    pos = m.float().clamp(0, 1) * (len(lut) - 1)
    lo = pos.floor().long().clamp(max=len(lut) - 2)
    frac = (pos - lo.float()).unsqueeze(-1)
    return lut[lo] * (1 - frac) + lut[lo + 1] * frac


def overlay(images: torch.Tensor, heat: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """Blend the coloured heat over images. The image fades towards its own grey by `alpha`, so the
    heat's colours stand out on any picture (an orange object under an orange-hot map did not);
    cold pixels keep the image's brightness, hot ones become the colour."""
    if images.shape[0] != heat.shape[0]:
        raise ValueError(f"overlay needs one map per image: {images.shape[0]} images, {heat.shape[0]} maps")
    if tuple(images.shape[1:3]) != tuple(heat.shape[1:3]):
        heat = F.interpolate(heat.unsqueeze(1).float(), size=tuple(images.shape[1:3]), mode="bilinear",
                             align_corners=False).squeeze(1)
    img = images.float()
    grey = (img * _LUMA.to(img.device)).sum(dim=-1, keepdim=True).expand_as(img)
    base = img * (1 - alpha) + grey * alpha
    a = (alpha * heat.float().clamp(0, 1)).unsqueeze(-1)
    return (base * (1 - a) + colormap(heat) * a).clamp(0, 1)
