"""Probes: which kind of intervention can take a graded-family model off a memorized image at all?

    python bench/mitigation_probes.py --weights bench/testbeds/weights/graded_a.safetensors

Not a benchmark of the pack's strategies (bench/bench_mitigation.py is): every generation of the
split's memorized captions is sampled with one intervention applied to all of them (no detector),
and compared with its own item's training image only (luminance correlation, >= 0.9 and >= 0.8).
It answers where the memorized image is decided on this testbed, which is what chose the
strategies worth building:
- guidance schedules (guidance off, conditional only, or opposite until step t, then cfg);
- Gaussian noise on the prompt embedding from step 3 on;
- repulsion of the clean prediction from the run's own prediction at step 5 (its centred
  pattern projected out), for the whole run or until step 30;
- prompt-embedding descent on the first-step guidance gap (core/reprompt.py), at step 0 or 3;
- a redrawn starting noise: of 8 draws, the one whose first-step guidance gap is smallest.
Beside the copies it prints the adherence checker's reading (bench/checker.py) of the images, so
that an intervention which removes the copy by removing the caption shows as such.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.checker import checker_for, load_checker  # noqa: E402
from bench.testbeds.graded import fixed_image, template_render  # noqa: E402
from bench.testbeds.prompts import MEMORIZED_KINDS, split_set  # noqa: E402
from core.reprompt import reprompt  # noqa: E402
from core.sampling import cfg_pair, plain_sample, step  # noqa: E402
from core.schedule import start_latent  # noqa: E402
from core.testbed import load_testbed  # noqa: E402
from core.testbed.similarity import luminance_correlation  # noqa: E402

CFG, STEPS = 7.5, 50
REDRAWS = 8


def own_training_image(item: dict, caption: str) -> torch.Tensor:
    if item["kind"] == "template":   # the layout in this caption's colours
        words = caption.split()
        return template_render(item, [words[1]], [words[5]])[0][0]
    return fixed_image(item)


def centred_unit(v: torch.Tensor) -> torch.Tensor:
    v = (v - v.mean(dim=(2, 3), keepdim=True)).flatten(1)
    return v / v.norm(dim=1, keepdim=True).clamp(min=1e-8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tb = load_testbed(args.weights)
    checker = load_checker(checker_for(args.weights))
    sig = [float(s) for s in tb.schedule.sigmas_for(STEPS, "normal")]
    gens = [g for g in split_set(tb.data, args.split) if g.kind in MEMORIZED_KINDS]
    targets = torch.stack([own_training_image(tb.data["items"][g.item], g.caption) for g in gens])
    cond, uncond = tb.encode([g.caption for g in gens]), tb.encode([""] * len(gens))
    x_start = start_latent(tb.noise([g.seed for g in gens]), torch.tensor(sig), tb.schedule.sigma_max)

    def sample(scale=lambda j: CFG, context=lambda j, x: None, repel=None, start=None):
        x, est, ctx = (x_start if start is None else start()).clone(), None, cond
        for j in range(STEPS):
            ctx = context(j, x) if context(j, x) is not None else ctx
            c, u = cfg_pair(tb.denoise, ctx, uncond)(x, torch.full((x.shape[0],), sig[j]), None, True)
            d = u + scale(j) * (c - u)
            if repel is not None:
                start, until = repel
                if j == start:
                    est = centred_unit(d)
                if est is not None and j < until:
                    a = ((d - d.mean(dim=(2, 3), keepdim=True)).flatten(1) * est).sum(1, keepdim=True)
                    d = (d.flatten(1) - a.clamp(min=0) * est).view_as(d)
            x = step("ddim", x, d, sig[j], sig[j + 1])
        images = tb.decode(x)
        return luminance_correlation(images, targets), checker.adherence(images, [g.caption for g in gens])

    def first_gap(x):
        s0 = torch.full((x.shape[0],), sig[0])
        with torch.no_grad():
            return (tb.denoise(x, s0, cond) - tb.denoise(x, s0, uncond)).flatten(1).norm(dim=1)

    def redrawn():
        """Of REDRAWS fresh starting noises per item, the one with the smallest first-step gap."""
        best, best_gap = x_start, first_gap(x_start)
        for r in range(1, REDRAWS):
            x = start_latent(tb.noise([g.seed + 7919 * r for g in gens]), torch.tensor(sig), tb.schedule.sigma_max)
            gap = first_gap(x)
            better = gap < best_gap
            best = torch.where(better.view(-1, 1, 1, 1), x, best)
            best_gap = torch.where(better, gap, best_gap)
        return best

    noise = torch.randn(cond.shape, generator=torch.Generator().manual_seed(0)) * cond.std(dim=-1, keepdim=True)
    moved = {}

    def descended(at):
        def ctx(j, x):
            if j != at:
                return None
            if at not in moved:
                s0 = torch.full((x.shape[0],), sig[j])
                with torch.no_grad():
                    d_u = tb.denoise(x, s0, uncond)
                moved[at] = reprompt(tb.denoise, x, sig[j], cond, d_u, target=0.0).context
            return moved[at]
        return ctx

    probes = [
        ("cfg 7.5 throughout (detect mode)", {}),
        ("guidance off (scale 0) until step 5", {"scale": lambda j: 0.0 if j < 5 else CFG}),
        ("guidance off (scale 0) until step 10", {"scale": lambda j: 0.0 if j < 10 else CFG}),
        ("guidance off (scale 0) until step 20", {"scale": lambda j: 0.0 if j < 20 else CFG}),
        ("opposite guidance (scale -1) until step 5", {"scale": lambda j: -1.0 if j < 5 else CFG}),
        ("opposite guidance (scale -1) until step 10", {"scale": lambda j: -1.0 if j < 10 else CFG}),
        ("conditional only (scale 1) until step 35", {"scale": lambda j: 1.0 if j < 35 else CFG}),
        ("opposite guidance (scale -1) until step 20", {"scale": lambda j: -1.0 if j < 20 else CFG}),
        ("embedding noise 0.6 x its spread from step 3", {"context": lambda j, x: cond + 0.6 * noise if j == 3 else None}),
        ("repulsion from the step-5 prediction, whole run", {"repel": (5, STEPS)}),
        ("repulsion from the step-5 prediction until step 30", {"repel": (5, 30)}),
        ("embedding descent on the gap at step 0 (20 steps)", {"context": descended(0)}),
        ("embedding descent on the gap at step 3 (20 steps)", {"context": descended(3)}),
        (f"redrawn noise: smallest first-step gap of {REDRAWS}", {"start": redrawn}),
    ]
    kinds = [g.kind for g in gens]
    novel = [g for g in split_set(tb.data, args.split) if g.kind in ("novel_one", "novel_two")]
    x_novel = start_latent(tb.noise([g.seed for g in novel]), torch.tensor(sig), tb.schedule.sigma_max)
    images = tb.decode(plain_sample(tb.pair([g.caption for g in novel]), x_novel, torch.tensor(sig), CFG, "ddim"))
    reference = checker.adherence(images, [g.caption for g in novel])
    one = torch.tensor([g.kind == "novel_one" for g in novel])
    print(f"reference: the checker's adherence for ordinary generations at cfg {CFG}: one object "
          f"{float(reference[one].mean()):.2f}, two objects {float(reference[~one].mean()):.2f}")
    print(f"{args.weights.name}, split {args.split}: {len(gens)} generations of memorized captions "
          f"({', '.join(f'{k} {kinds.count(k)}' for k in MEMORIZED_KINDS)}); correlation with the own training image")
    for name, kw in probes:
        t0 = time.perf_counter()
        corr, adherence = sample(**kw)
        parts = []
        for k in MEMORIZED_KINDS:
            idx = [i for i, kk in enumerate(kinds) if kk == k]
            parts.append(f"{k} {int((corr[idx] >= 0.9).sum())}/{int((corr[idx] >= 0.8).sum())} "
                         f"adh {float(adherence[idx].nanmean()):.2f}")
        print(f"  {name:52s} >= 0.9 / >= 0.8: {'  '.join(parts)}   ({time.perf_counter() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
