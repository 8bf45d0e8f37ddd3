"""How the verdict's evidence weights, window and starts were chosen.

    python bench/choose_verdict.py --models graded_a,graded_m,graded_p,graded_pb
    python bench/choose_verdict.py --models graded_p,graded_once_r --split test --weights 0,0,-1 --starts 0,0.06,0+0.06

For each candidate (weights of the update, guidance-gap and agreement z-scores; window of the
first K steps; where the evidence paths start, one or the larger of two), on each model's
recording of --split (bench/bench_graded.py's cache in bench_out/<model>: run it first), it prints
the verbatim-copy AUC and TPR at 1 % FPR against ordinary generations, the share of verbatim /
partial copies flagged online at false-flag rate 0.001, and the ordinary generations flagged; then
the mean verbatim AUC over the models. The rule fixed before the numbers, on validation splits:
the highest mean verbatim AUC, and among equals the fewest quantities (then the fewest paths and
the earliest start). The weights and window were chosen so at e4c4dc5 (one path from step 0,
--starts 0). On 2026-12-07 the rule picked one path from 6 % of the steps; on the held-out splits
it lost the copies decided in the first steps, and the two-path candidate was then shipped by a
go/no-go rule on those held-out splits fixed beforehand (docs/testbed.md, "The verdict's starts").
Prints measurements; not a test.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.bench_graded import copy_groups, model_parser, prepared, zscores  # noqa: E402
from core import evidence  # noqa: E402
from core.detect import roc_auc, tpr_at_fpr  # noqa: E402

CANDIDATES = [  # (update, gap, agreement) weights
    (0.5, 0.5, 0.0), (0.25, 0.25, -0.5), (0.33, 0.33, -0.33), (0.0, 0.0, -1.0), (0.0, 0.5, -0.5), (0.5, 0.0, -0.5),
]
WINDOWS = (10, 15)
# where the evidence paths start, as shares of the steps (0-4 of 50); "0+0.06": the larger of two paths
STARTS = ("0", "0.02", "0.04", "0.06", "0.08", "0+0.06")
RATE = 0.001


def main() -> None:
    ap = model_parser(__doc__)
    ap.add_argument("--starts", default=",".join(STARTS),
                    help="comma-separated shares of the steps where the paths start; + joins the starts of one candidate")
    ap.add_argument("--weights", default=None, help='update,gap,agreement triples joined by ";" (default: the grid)')
    args = ap.parse_args()
    data = {}
    for m in args.models.split(","):
        weights = Path("bench/testbeds/weights") / f"{m}.safetensors"
        _, _, _, _, region, recs, tr, partial = prepared(weights, Path("bench_out") / m, args.split, args.threads)
        rec = recs[args.split]
        verbatim, part, ordinary = copy_groups(rec, tr[args.split]["corr"], partial)
        data[m] = (region, zscores(rec, region), verbatim, part, ordinary)
    best = None
    grid = CANDIDATES if args.weights is None else [tuple(float(w) for w in t.split(",")) for t in args.weights.split(";")]
    for (wu, wg, wa), window, shares in itertools.product(grid, WINDOWS, args.starts.split(",")):
        weights = {"latent": 0.0, "update": wu, "clean": 0.0, "gap": wg, "agreement": wa}
        cells, aucs = [], []
        for m, (region, z, verbatim, part, ordinary) in data.items():
            starts = sorted({min(int(float(f) * region.steps + 1e-9), window - 1) for f in shares.split("+")})
            null = evidence.null_from_trajectories(region.trajectories, window, weights, starts)
            s = evidence.window_max(evidence.path(z, null), window)
            flag = s > null.tail.threshold(RATE)
            auc = roc_auc(s[verbatim], s[ordinary])
            aucs.append(auc)
            part_share = f"{float(flag[part].float().mean()):.2f}" if part else "-"
            cells.append(f"{m}: AUC {auc:.3f} TPR {tpr_at_fpr(s[verbatim], s[ordinary]):.2f} flagged "
                         f"{float(flag[verbatim].float().mean()):.2f}/{part_share} ordinary {int(flag[ordinary].sum())}")
        mean = round(sum(aucs) / len(aucs), 4)
        print(f"update {wu} gap {wg} agreement {wa}, first {window} steps, from {shares} of the steps: "
              f"mean verbatim AUC {mean:.4f}\n    " + "\n    ".join(cells), flush=True)
        key = (mean, -sum(w != 0 for w in (wu, wg, wa)), -len(shares), -max(float(f) for f in shares.split("+")))
        if best is None or key > best[0]:
            best = (key, f"update {wu} gap {wg} agreement {wa}, first {window} steps, from {shares} of the steps")
    print(f"by the rule: {best[1]} (mean verbatim AUC {best[0][0]:.4f})")


if __name__ == "__main__":
    main()
