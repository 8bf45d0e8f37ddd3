"""Which ordinary generations outscore the copies? (issue 15: where TPR at 1 % FPR is low.)

    python bench/ordinary_outliers.py --models graded_once_p,graded_once_r --split test

For each model's recording of --split (bench/bench_graded.py's cache in bench_out/<model>: run it
first), the verdict's score (the pack's default) of every ordinary generation and verbatim copy, and
prints: the threshold at the pack's false-flag rate; the highest-scoring ordinary generations with
their prompt kind, caption and luminance correlation to the nearest training image; ordinary
generations flagged, by kind; and, as a diagnostic only, verbatim AUC and the share of copies above all
but the top 0 or 1 ordinary generations, with and without one kind (--without, default `unseen_title`: captions
in the memorized titles' format with a title the model never saw trained). The benchmark's
numbers count every ordinary kind; this says which of them sets the false-positive side. With
--picture, the flagged ordinary generations (first row) beside their nearest training images (second
row) are written to that PNG. Prints measurements, not a test.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.bench_graded import copy_groups, model_parser, prepared, scorers, zscores  # noqa: E402
from bench.bench_mitigation import strip  # noqa: E402
from bench.copies import stream_bank  # noqa: E402
from core.detect import roc_auc, tpr_at_fpr  # noqa: E402


def above(score, positive: list[int], negative: list[int], allowed: int) -> float:
    """The share of `positive` scoring above all but the `allowed` highest of `negative` (a fixed
    count, so sets of different sizes compare; TPR at 1 % FPR allows 0 or 1 by the set's size)."""
    top = score[negative].sort(descending=True).values
    return float((score[positive] > top[allowed]).float().mean()) if len(negative) > allowed else float("nan")


def main() -> None:
    ap = model_parser(__doc__)
    ap.add_argument("--without", default="unseen_title", help="the ordinary prompt kind the diagnostic leaves out")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--picture", type=Path, help="write the flagged ordinary generations and their nearest training images here")
    args = ap.parse_args()
    shown, nearest = [], []
    for model in args.models.split(","):
        weights = Path("bench/testbeds/weights") / f"{model}.safetensors"
        tb, sigmas, settings, calib, region, recs, tr, partial = prepared(weights, Path("bench_out") / model,
                                                                         args.split, args.threads)
        rec, corr = recs[args.split], tr[args.split]["corr"]
        scorer = scorers(region)[0]
        z = zscores(rec, region)
        score, flag = scorer.score(z), scorer.flag(z)
        verbatim, _, ordinary = copy_groups(rec, corr, partial)
        kept = [i for i in ordinary if rec.gens[i].kind != args.without]
        print(f"\n{model} {args.split}: {scorer.name}; {len(verbatim)} verbatim copies, {len(ordinary)} ordinary "
              f"generations (partial level {partial:.2f})")
        for i in sorted(ordinary, key=lambda i: -float(score[i]))[:args.top]:
            g = rec.gens[i]
            print(f"  ordinary, score {float(score[i]):6.2f}{' FLAGGED' if flag[i] else '        '}  {g.kind:<13} "
                  f"correlation {float(corr[i]):.2f}  {g.caption!r}")
        flagged = Counter(rec.gens[i].kind for i in ordinary if flag[i])
        if args.picture and flagged:
            images = tb.decode(rec.latents[[i for i in ordinary if flag[i]]])
            bank = stream_bank(tb)
            shown.append(images)
            nearest.append(torch.stack([bank.image(int(k)) for k in bank.truth(images).where]).to(images.dtype))
        print(f"  ordinary flagged by kind: {dict(flagged) or 'none'} of {len(ordinary)}")
        s = score
        print(f"  verbatim AUC {roc_auc(s[verbatim], s[ordinary]):.4f}, TPR at 1 % FPR {tpr_at_fpr(s[verbatim], s[ordinary]):.3f} "
              f"(with {len(ordinary)} ordinary generations 1 % allows {int(0.01 * len(ordinary))} above the threshold); "
              f"copies above every ordinary generation / all but the top one: {above(s, verbatim, ordinary, 0):.3f} / "
              f"{above(s, verbatim, ordinary, 1):.3f}")
        print(f"  without {args.without} ({len(ordinary) - len(kept)} left out): AUC {roc_auc(s[verbatim], s[kept]):.4f}, "
              f"copies above every ordinary generation / all but the top one: {above(s, verbatim, kept, 0):.3f} / "
              f"{above(s, verbatim, kept, 1):.3f}, ordinary flagged {int(flag[kept].sum())}/{len(kept)}")
    if args.picture and shown:
        strip(torch.cat(shown), [torch.cat(shown), torch.cat(nearest)], args.picture)
        print(f"\nwrote {args.picture}: the flagged ordinary generations over their nearest training images")


if __name__ == "__main__":
    main()
