"""Would evidence pooled over the seeds of one caption flag more copies? (issue 15's suggestion:
a batch of one prompt runs its seeds side by side, so the guard could read them together.)

    python bench/seed_pooling.py --models graded_a,graded_m,graded_p,graded_pb

For each model's recording of --split (bench/bench_graded.py's cache in bench_out/<model>: run it
first), the verdict's standardized evidence path S_j of every generation (core/evidence.py) is
averaged over the generations of the same caption (the split's token and scene captions have 6
seeds each; novel captions one, so ordinary generations are pooled only in the calibration runs,
2 seeds a caption, scored leave-one-out), and the window's largest mean is held against the
pack's threshold at its false-flag rate. Printed: verbatim copies, partial copies and ordinary
generations flagged by the item's own path, by the caption's pooled path, and by either; the
calibration runs flagged alone and pooled. Validation splits for a choice; prints measurements,
not a test.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.bench_graded import copy_groups, model_parser, prepared, zscores  # noqa: E402
from core import evidence  # noqa: E402
from core.detect import DetectionConfig  # noqa: E402
from core.null import leave_one_out_z  # noqa: E402


def pooled(s: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """S [B, N] with each row replaced by the mean over the rows of the same caption."""
    groups = defaultdict(list)
    for i, c in enumerate(captions):
        groups[c].append(i)
    out = s.clone()
    for idx in groups.values():
        out[idx] = s[idx].nanmean(0, keepdim=True).expand(len(idx), -1)
    return out


def flags(s: torch.Tensor, window: int, threshold: float) -> torch.Tensor:
    return evidence.window_max(s, window) > threshold


def main() -> None:
    args = model_parser(__doc__).parse_args()
    config = DetectionConfig()
    for m in args.models.split(","):
        weights = Path("bench/testbeds/weights") / f"{m}.safetensors"
        _, _, _, calib, region, recs, tr, partial = prepared(weights, Path("bench_out") / m, args.split, args.threads)
        rec = recs[args.split]
        verbatim, part, ordinary = copy_groups(rec, tr[args.split]["corr"], partial)
        window = config.active_window(region.steps)
        null = evidence.null_from_trajectories(region.trajectories, window)
        threshold = null.tail.threshold(config.false_flag_rate)

        s = evidence.path(zscores(rec, region), null)
        own, pool = flags(s, window, threshold), flags(pooled(s, [g.caption for g in rec.gens]), window, threshold)
        either = own | pool
        s_cal = evidence.path(leave_one_out_z(region.trajectories), null)
        cal_own = flags(s_cal, window, threshold)
        cal_pool = flags(pooled(s_cal, [g.caption for g in calib.gens]), window, threshold)

        def n(f, idx):
            return f"{int(f[idx].sum())}/{len(idx)}"

        print(f"{m} {args.split} (threshold {threshold:.2f}): verbatim copies own {n(own, verbatim)}, pooled "
              f"{n(pool, verbatim)}, either {n(either, verbatim)}; partial own {n(own, part)}, either {n(either, part)}; "
              f"ordinary own {n(own, ordinary)}, either {n(either, ordinary)}; calibration runs own "
              f"{int(cal_own.sum())}/{len(cal_own)}, pooled over their seeds {int(cal_pool.sum())}", flush=True)


if __name__ == "__main__":
    main()
