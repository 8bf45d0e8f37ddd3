"""How the detection and mitigation defaults were chosen (docs/testbed.md), reproducibly.

    python bench/choose_defaults.py [--split validation]

On one benchmark split (calibration as in bench_core.py) it prints, for the ordinary (novel and
control) generations: how many each tau_mild in a grid would flag, given the flag rule (both
norms out of the band in the active window); for the memorized-prompt ones: how many each tau
still flags; and, per off_scale of the `unconditional` strategy, how many memorized-prompt
generations stay copies of their own prompt's training image (luminance correlation >= 0.9) and
the largest such correlation. bench_core.py measures copies against the whole training stream.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))            # bench_core
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))        # the repo root, for `core`

from bench_core import CFG, SAMPLER, SCHEDULER, SPLITS, STEPS, calibrate_region, prompt_sets, run_chunks  # noqa: E402

from core.detect import DetectionConfig, step_excess  # noqa: E402
from core.guard import GuardConfig  # noqa: E402
from core.sampling import guarded_sample  # noqa: E402
from core.schedule import start_latent  # noqa: E402
from core.settings import RunSettings  # noqa: E402
from core.testbed import load_testbed  # noqa: E402
from core.testbed.dataset import memorized_image, special_items  # noqa: E402
from core.testbed.similarity import COPY_THRESHOLD, luminance_correlation  # noqa: E402

TAUS = (3.0, 3.5, 4.0, 4.5, 5.0)
OFF_SCALES = (0.0, -0.5, -1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=list(SPLITS), default="validation")
    ap.add_argument("--chunk", type=int, default=66)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tb = load_testbed()
    sigmas = tb.schedule.sigmas_for(STEPS, SCHEDULER)
    settings = RunSettings(tb.identity, SAMPLER, SCHEDULER, STEPS, CFG, tb.latent_shape)
    calib, memorized, novel, control = prompt_sets(12, 10, 100, args.split)

    def start(noise):
        return start_latent(noise, sigmas, tb.schedule.sigma_max)

    region = calibrate_region(tb, calib, start, sigmas, settings, args.chunk)

    def guarded(config):
        return lambda pair, x: guarded_sample(pair, start(x), sigmas, settings, CFG, region=region, config=config)

    def excess(jobs):
        """[n, steps]: min(|z_update|, |z_clean|) per generation and step, in detect mode."""
        items = [it for r in run_chunks(tb, jobs, guarded(GuardConfig(mode="detect")), args.chunk) for it in r.report.items]
        z = {q: torch.tensor([[float("nan") if v is None else v for v in it.zscores[q]] for it in items])
             for q in ("update", "clean")}
        return step_excess(z["update"], z["clean"])

    k = DetectionConfig().active_window(STEPS)
    ordinary, memo = excess(novel + control)[:, :k], excess(memorized)[:, :k]
    print(f"split {args.split}: flagged in the first {k} steps, per tau_mild")
    for tau in TAUS:
        print(f"  tau_mild {tau:3.1f}: ordinary {int((ordinary > tau).any(1).sum())}/{len(ordinary)}, "
              f"memorized-prompt {int((memo > tau).any(1).sum())}/{len(memo)}")

    reference = {it.caption: memorized_image(it) for it in special_items() if it.kind == "memorized"}
    own = torch.stack([reference[c] for c, _ in memorized])
    print("unconditional/exact, memorized-prompt generations that copy their own prompt's image, per off_scale")
    for off in OFF_SCALES:
        config = GuardConfig(mode="mitigate", strategy="unconditional", off_scale=off)
        latents = torch.cat([r.latent for r in run_chunks(tb, memorized, guarded(config), args.chunk)])
        corr = luminance_correlation(tb.decode(latents), own).flatten()
        print(f"  off_scale {off:4.1f}: {int((corr >= COPY_THRESHOLD).sum())}/{len(corr)} copies, "
              f"largest correlation {float(corr.max()):.3f}")


if __name__ == "__main__":
    main()
