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

from bench.testbeds.graded import GradedStream, clean_kinds
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
    """The replayed training stream: its luminance vectors, and images on demand.

    Every image is searched, except the kinds in `skip`: a recipe whose general data is clean
    renders (bench/testbeds/graded.py) skips them, because a simple shape drawn fresh for each
    sample is matched by any legible drawing of that caption (generalization, not a copy of an
    image the model saw once)."""

    def __init__(self, stream, batches: int, skip: tuple[str, ...] = ()):
        self.stream, self.batches = stream, batches
        self.index: list[tuple[int, int]] = []      # bank row -> (batch, position)

        def kept(k: int) -> torch.Tensor:
            images, _, kinds = stream.batch(k)
            rows = [i for i, kind in enumerate(kinds) if kind not in skip]
            self.index += [(k, i) for i in rows]
            return images[rows]

        self.bank = luminance_bank(kept, batches)

    def _sample(self, index: int):
        k, i = self.index[int(index)]
        images, captions, _ = self.stream.batch(k)
        return images[i], captions[i]

    def image(self, index: int) -> torch.Tensor:
        return self._sample(index)[0]

    def caption(self, index: int) -> str:
        return self._sample(index)[1]

    def truth(self, images: torch.Tensor) -> CopyTruth:
        corr, where = nearest_neighbours(images, self.bank)
        neighbours = torch.stack([self.image(w) for w in where.tolist()]) if len(where) else images
        return CopyTruth(corr, ssim(images, neighbours), where)


def stream_bank(tb) -> StreamBank:
    """The replayed stream of a graded-family model, with the kinds its recipe keeps out of the search."""
    stream = GradedStream(tb.data, int(tb.training["seed"]), int(tb.training["batch"]))
    return StreamBank(stream, int(tb.training["steps"]), clean_kinds(tb.data))


def partial_threshold(ordinary_corr: torch.Tensor) -> float:
    """Where ordinary generations do not reach: their largest correlation, rounded up to 0.01."""
    return min(VERBATIM, math.ceil(float(ordinary_corr.max()) * 100 + 1e-9) / 100)
