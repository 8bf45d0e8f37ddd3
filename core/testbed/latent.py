"""The testbed's exact, weightless "VAE": a 32x32 RGB image is pixel-unshuffled to a 12x16x16 latent."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FACTOR = 2


def encode(images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> latents [B, 12, H/2, W/2] (lossless)."""
    return F.pixel_unshuffle(images, FACTOR)


def decode(latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, 12, h, w] -> images [B, 3, 2h, 2w] in [-1, 1] (clamped)."""
    return F.pixel_shuffle(latents.float(), FACTOR).clamp(-1, 1)
