"""When do a model's verbatim copies show in the agreement? Decided at once, or a few steps in.

    python bench/signal_timing.py --weights bench/testbeds/weights/graded_p.safetensors --split test

On bench/bench_graded.py's recording of the split (run it first), prints the median agreement
z-score of the verbatim copies per step (0-10), and how many copies show only early (mean z of
steps 0-1 below -4 and of steps 4-7 above -2) or only a few steps in (the reverse). A verdict whose
evidence starts late misses the first kind; one that averages from step 0 dilutes the second
(docs/testbed.md, "The verdict's starts"). Prints measurements; not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.bench_graded import prepared, zscores  # noqa: E402
from bench.copies import VERBATIM  # noqa: E402
from core.measures import QUANTITIES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--split", choices=("validation", "test"), default="validation")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    _, _, _, _, region, recs, tr, _ = prepared(args.weights, Path("bench_out") / args.weights.stem, args.split, args.threads)
    rec, corr = recs[args.split], tr[args.split]["corr"]
    verbatim = [i for i in range(len(rec.gens)) if corr[i] >= VERBATIM]
    z = zscores(rec, region)[verbatim][..., QUANTITIES.index("agreement")]
    first, later = z[:, :2].mean(1), z[:, 4:8].mean(1)
    print(f"{args.weights.stem} {args.split}: {len(verbatim)} verbatim copies; median agreement z per step 0-10: "
          + " ".join(f"{float(v):.1f}" for v in z[:, :11].median(0).values))
    print(f"  only early (steps 0-1 < -4, steps 4-7 > -2): {int(((first < -4) & (later > -2)).sum())}; "
          f"only a few steps in (the reverse): {int(((first > -2) & (later < -4)).sum())}")


if __name__ == "__main__":
    main()
