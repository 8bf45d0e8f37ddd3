"""What the false-flag-rate verdict adds to a guarded run, against the model calls it watches.

    python bench/bench_verdict_cost.py [--batch 64] [--repeats 20]

Times, in one run on the demo testbed with its shipped region (50 steps, cfg 7.5): the null fit a
region gets on first use (leave-one-out z of the calibration runs, running means, the tail
fit), the verdict's per-step work (the evidence push), and one model call (cond + uncond for the
batch); prints each as a share of a plain 50-step run of that batch. Best of --repeats each, so
that a busy machine slows every line alike. Nothing here is a test: it prints measurements.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core`

from core import evidence  # noqa: E402
from core.detect import DetectionConfig  # noqa: E402
from core.region_file import load_region  # noqa: E402
from core.schedule import start_latent  # noqa: E402
from core.testbed import WEIGHTS, load_testbed  # noqa: E402


def best(fn, repeats: int) -> float:
    out = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tb = load_testbed()
    region = load_region(WEIGHTS.parent / "testbed_region.safetensors")
    steps = region.steps
    window = DetectionConfig().active_window(steps)
    sigmas = tb.schedule.sigmas_for(steps, "normal")
    pair = tb.pair(["a red circle on a blue background"] * args.batch)
    x = start_latent(tb.noise(list(range(args.batch))), sigmas, tb.schedule.sigma_max)
    sigma = torch.full((args.batch,), float(sigmas[10]))

    fit = best(lambda: evidence.null_from_trajectories(region.trajectories, window), args.repeats)
    null = evidence.null_from_trajectories(region.trajectories, window)
    z = torch.randn(len(region.mean), args.batch)

    def run_pushes():
        p = evidence.EvidencePath(null, args.batch)
        for _ in range(steps):
            p.push(z)

    pushes = best(run_pushes, args.repeats)
    call = best(lambda: pair(x, sigma, None, True), max(3, args.repeats // 4))
    plain = call * steps
    print(f"demo testbed, batch {args.batch}, {steps} steps, {region.trajectories.shape[0]} calibration runs, "
          f"threads={args.threads}, best of {args.repeats}")
    print(f"  one model call (cond + uncond): {call * 1e3:.2f} ms; a plain run: {plain:.3f} s")
    print(f"  null fit (once per region):     {fit * 1e3:.2f} ms = {100 * fit / plain:.3f} % of the plain run")
    print(f"  evidence pushes, all steps:     {pushes * 1e3:.2f} ms = {100 * pushes / plain:.3f} % of the plain run")


if __name__ == "__main__":
    main()
