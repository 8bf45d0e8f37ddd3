"""Is a generation a copy? Measured against every image of the replayed training stream.

Two levels, both from the exact nearest neighbour by luminance correlation (colour-robust: at
cfg 7.5 every seed gets its own colour cast; core/testbed/similarity.py):
- verbatim: correlation >= VERBATIM (0.9: near-exact; fresh renders of the stream stay below it);
- partial:  correlation >= the partial threshold, placed where ordinary generations do not reach:
            the largest nearest-neighbour correlation of the validation split's generations of
            never-titled, never-duplicated captions (prompts.REFERENCE_KINDS) of the same model,
            rounded up (a rule applied per model, never tuned by hand).
SSIM to that neighbour is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.testbed.similarity import luminance_bank, nearest_neighbours, ssim

VERBATIM = 0.9


@dataclass
class CopyTruth:
    corr: torch.Tensor        # [N] nearest-neighbour luminance correlation
    ssim: torch.Tensor        # [N] SSIM to that neighbour
    where: torch.Tensor       # [N] the neighbour's index in the stream

    def verbatim(self) -> torch.Tensor:
        return self.corr >= VERBATIM

    def partial(self, threshold: float) -> torch.Tensor:
        return self.corr >= threshold


class StreamBank:
    """The replayed training stream: its luminance vectors, and images on demand."""

    def __init__(self, stream, batches: int):
        self.stream, self.batches = stream, batches
        self.bank = luminance_bank(lambda k: stream.batch(k)[0], batches)
        self.per_batch = self.bank.shape[0] // batches

    def image(self, index: int) -> torch.Tensor:
        k, i = divmod(int(index), self.per_batch)
        return self.stream.batch(k)[0][i]

    def caption(self, index: int) -> str:
        k, i = divmod(int(index), self.per_batch)
        return self.stream.batch(k)[1][i]

    def truth(self, images: torch.Tensor) -> CopyTruth:
        corr, where = nearest_neighbours(images, self.bank)
        neighbours = torch.stack([self.image(w) for w in where.tolist()]) if len(where) else images
        return CopyTruth(corr, ssim(images, neighbours), where)


def partial_threshold(ordinary_corr: torch.Tensor) -> float:
    """Where ordinary generations do not reach: their largest correlation, rounded up to 0.01."""
    return min(VERBATIM, math.ceil(float(ordinary_corr.max()) * 100 + 1e-9) / 100)
