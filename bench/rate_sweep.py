"""What the false-flag rate a user sets buys: copies flagged online against ordinary generations flagged.

    python bench/rate_sweep.py --models graded_a,graded_m,graded_p,graded_pb --split validation

The verdict's threshold comes from the rate (`false_flag_rate`, an input of every guard node;
default 0.001) through the Gumbel fit of the calibration runs' evidence. For each model's recording
of --split (bench/bench_graded.py's cache in bench_out/<model>; sampled here if missing) and each
rate, it prints the threshold and the
verbatim copies, partial-only copies and ordinary generations flagged online, then the same pooled
over the models. The verdict's ranking is fixed; only the threshold moves, so this is the operating
curve a user walks by changing the rate. Prints measurements; nothing is chosen on it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.bench_graded import copy_groups, model_parser, prepared, scorers, zscores  # noqa: E402
from core.detect import DetectionConfig  # noqa: E402

RATES = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03)


def flagged_counts(score, groups: dict[str, list[int]], threshold: float) -> dict[str, tuple[int, int]]:
    """(flagged, total) per group of item indices, flagged meaning a score above the threshold."""
    return {name: (int((score[ids] > threshold).sum()) if ids else 0, len(ids)) for name, ids in groups.items()}


def share(flagged: int, total: int) -> str:
    """'flagged/total (percent)', or a dash for an empty group."""
    return f"{flagged:3d}/{total:<3d} ({100 * flagged / total:5.1f} %)" if total else "   -           "


def main() -> None:
    ap = model_parser(__doc__)
    ap.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES))
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    default = DetectionConfig().false_flag_rate
    pooled = {r: {} for r in rates}
    for model in args.models.split(","):
        weights = Path("bench/testbeds/weights") / f"{model}.safetensors"
        _, _, _, _, region, recs, tr, partial = prepared(weights, Path("bench_out") / model, args.split, args.threads)
        rec, corr = recs[args.split], tr[args.split]["corr"]
        verdict = scorers(region)[0]        # the pack's verdict; its score does not depend on the rate
        score = verdict.score(zscores(rec, region))
        verbatim, part, ordinary = copy_groups(rec, corr, partial)
        groups = {"verbatim": verbatim, "partial": part, "ordinary": ordinary}
        print(f"\n{model} {args.split}: {len(verbatim)} verbatim copies, {len(part)} partial-only, "
              f"{len(ordinary)} ordinary generations")
        print(f"  {'rate':>7}  {'threshold':>9}  {'verbatim flagged':<18} "
              f"{'partial flagged':<18} {'ordinary flagged':<18}")
        for r in rates:
            thr = verdict.tail.threshold(r)
            counts = flagged_counts(score, groups, thr)
            for name, (f, n) in counts.items():
                pf, pn = pooled[r].get(name, (0, 0))
                pooled[r][name] = (pf + f, pn + n)
            mark = "  <- default" if r == default else ""
            print(f"  {r:7g}  {thr:9.2f}  {share(*counts['verbatim'])}  "
                  f"{share(*counts['partial'])}  {share(*counts['ordinary'])}{mark}")
    print(f"\npooled over {args.models} ({args.split}):")
    for r in rates:
        p = pooled[r]
        print(f"  rate {r:7g}: verbatim {share(*p['verbatim'])}  partial {share(*p['partial'])}  "
              f"ordinary {share(*p['ordinary'])}{'  <- default' if r == default else ''}")


if __name__ == "__main__":
    main()
