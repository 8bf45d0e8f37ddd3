"""How the verdict's threshold is fitted to the calibration runs: the Gumbel fit by moments (the
pack's, core/null.py) against fits that resist a few outlying calibration runs.

    python bench/choose_tail.py --models graded_a,graded_m,graded_p,graded_pb

Why: on graded_once_t two of the 120 calibration runs score like copies (one is a caption one colour
word from a memorized one), the moment fit follows them, and the threshold for 1 in 1,000 lands
above most copies (docs/testbed.md). A user's own calibration prompts will hold such captions too.

Candidates, each on the leave-one-out scores of the calibration runs (core/null.py):
- moments: the Gumbel law with the runs' mean and standard deviation (the pack's fit);
- quantiles: the Gumbel law through the runs' median and 0.9 quantile (the top tenth of the runs
  can be anything);
- robust+quantiles: the same, with the evidence paths also standardized by median and MAD.
For each model's recording of --split (bench/bench_graded.py's cache in bench_out/<model>: run it
first) it prints the threshold at rate 0.001, the verbatim-copy AUC, the verbatim copies and the
ordinary generations flagged, then the totals. Validation splits only for a choice; measurements,
not a test.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.bench_graded import copy_groups, model_parser, prepared, zscores  # noqa: E402
from core import evidence  # noqa: E402
from core.detect import DetectionConfig, roc_auc  # noqa: E402
from core.null import NullTail, fit_tail, leave_one_out_z  # noqa: E402

RATE = DetectionConfig().false_flag_rate
FITS = ("moments", "quantiles", "robust+quantiles")


def quantile_fit(scores: torch.Tensor, p_lo: float = 0.5, p_hi: float = 0.9) -> NullTail:
    """The Gumbel law whose p_lo and p_hi quantiles are the scores' own."""
    s = scores.double()[torch.isfinite(scores)]
    q_lo, q_hi = float(torch.quantile(s, p_lo)), float(torch.quantile(s, p_hi))
    y_lo, y_hi = -math.log(-math.log(p_lo)), -math.log(-math.log(p_hi))
    scale = max((q_hi - q_lo) / (y_hi - y_lo), 1e-6)
    return NullTail(q_lo - scale * y_lo, scale, int(s.numel()))


def null_for(trajectories: torch.Tensor, window: int, fit: str) -> evidence.EvidenceNull:
    weights = evidence.weights_for(trajectories)
    starts = evidence.evidence_starts(trajectories.shape[1], window, weights)
    r = evidence._paths(evidence.step_evidence(leave_one_out_z(trajectories), weights), starts)   # [S, R, N]
    if fit == "robust+quantiles":
        mean = r.median(1).values
        spread = ((r - mean.unsqueeze(1)).abs().median(1).values * 1.4826).clamp(min=1e-6)
    else:
        mean, spread = r.mean(1), r.std(1).clamp(min=1e-6)
    scores = evidence.window_max(evidence._larger_path(r, mean, spread), window)
    tail = fit_tail(scores) if fit == "moments" else quantile_fit(scores)
    return evidence.EvidenceNull(mean, spread, window, tail, dict(weights), starts)


def main() -> None:
    args = model_parser(__doc__).parse_args()
    totals = {fit: [0, 0, 0, 0] for fit in FITS}
    for m in args.models.split(","):
        weights = Path("bench/testbeds/weights") / f"{m}.safetensors"
        _, _, _, _, region, recs, tr, partial = prepared(weights, Path("bench_out") / m, args.split, args.threads)
        rec = recs[args.split]
        verbatim, _, ordinary = copy_groups(rec, tr[args.split]["corr"], partial)
        z, window = zscores(rec, region), DetectionConfig().active_window(region.steps)
        print(f"{m} {args.split}: {len(verbatim)} verbatim copies, {len(ordinary)} ordinary generations", flush=True)
        for fit in FITS:
            null = null_for(region.trajectories, window, fit)
            threshold = null.tail.threshold(RATE)
            s = evidence.window_max(evidence.path(z, null), window)
            flag = s > threshold
            fv, fo = int(flag[verbatim].sum()), int(flag[ordinary].sum())
            t = totals[fit]
            t[0], t[1], t[2], t[3] = t[0] + fv, t[1] + len(verbatim), t[2] + fo, t[3] + len(ordinary)
            print(f"    {fit:17s} threshold {threshold:6.2f}  verbatim AUC {roc_auc(s[verbatim], s[ordinary]):.4f}  "
                  f"flagged {fv}/{len(verbatim)}  ordinary flagged {fo}/{len(ordinary)}", flush=True)
    for fit, (fv, nv, fo, no) in totals.items():
        print(f"all: {fit:17s} verbatim flagged {fv}/{nv} ({100 * fv / nv:.1f} %), ordinary flagged {fo}/{no} "
              f"({100 * fo / no:.2f} %)")


if __name__ == "__main__":
    main()
