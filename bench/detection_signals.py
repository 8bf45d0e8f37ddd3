"""Which per-step signal separates copies from ordinary generations on a graded-family model?

    python bench/detection_signals.py --weights bench/testbeds/weights/graded_p.safetensors --split validation

Samples the calibration set and a split with DDIM (50 steps, cfg 7.5) keeping, at every step, the
guided, conditional and unconditional clean predictions, and prints for each candidate signal its
AUC (verbatim copies against ordinary generations, copy truth from bench_graded's cache in --out)
per step and aggregated over the first K steps, each standardised per step on the calibration
runs. The candidates: the guidance gap and its spatial pattern, the clean norm, how much the
prediction moves from step to step, and the agreement cos(D_c, D_u) between the conditional and
unconditional predictions (each channel's spatial mean removed); and whether the conditional
prediction or the guidance settles on one image early (its cosine with itself one or three steps
back). This is how the agreement was
found (docs/testbed.md); run bench/bench_graded.py first for the copy truth. Prints measurements;
not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.copies import VERBATIM, partial_threshold  # noqa: E402
from bench.testbeds.prompts import ORDINARY_KINDS, REFERENCE_KINDS, calibration_set, split_set  # noqa: E402
from core.detect import roc_auc, tpr_at_fpr  # noqa: E402
from core.sampling import step  # noqa: E402
from core.schedule import start_latent  # noqa: E402
from core.testbed import load_testbed  # noqa: E402

STEPS, CFG = 50, 7.5


def predictions(tb, gens, sigmas, chunk: int = 64, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """Per generation and step, the guided (D), conditional (Dc) and unconditional (Du) predictions
    (of the first `steps` steps: the sampler stops there)."""
    out = {"D": [], "Dc": [], "Du": []}
    for s0 in range(0, len(gens), chunk):
        part = gens[s0:s0 + chunk]
        cond, uncond = tb.encode([g.caption for g in part]), tb.encode([""] * len(part))
        x = start_latent(tb.noise([g.seed for g in part]), torch.tensor(sigmas), tb.schedule.sigma_max)
        per = {"D": [], "Dc": [], "Du": []}
        for j in range(steps):
            s = torch.full((x.shape[0],), sigmas[j])
            with torch.no_grad():
                c, u = tb.denoise(x, s, cond), tb.denoise(x, s, uncond)
            d = u + CFG * (c - u)
            for k, v in (("D", d), ("Dc", c), ("Du", u)):
                per[k].append(v)
            x = step("ddim", x, d, sigmas[j], sigmas[j + 1])
        for k in out:
            out[k].append(torch.stack(per[k], 1))
    return {k: torch.cat(v) for k, v in out.items()}


def _centred(v):
    return v - v.mean(dim=(-2, -1), keepdim=True)


def _norm(v):
    return v.flatten(2).norm(dim=2)


def _cos(a, b):
    a, b = a.flatten(2), b.flatten(2)
    return (a * b).sum(2) / (a.norm(dim=2) * b.norm(dim=2)).clamp(min=1e-8)


def signals(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """[N, STEPS] per candidate; the sign is such that copies are expected high or low (see AUC < 0.5)."""
    d, c, u = p["D"], p["Dc"], p["Du"]
    g = c - u
    first = torch.zeros_like(_norm(d)[:, :1])
    return {
        "gap": _norm(g),
        "gap pattern": _norm(_centred(g)),
        "clean": _norm(d),
        "clean pattern": _norm(_centred(d)),
        "gap / cond pattern": _norm(_centred(g)) / _norm(_centred(c)),
        "step change of D": torch.cat([first, _norm(d[:, 1:] - d[:, :-1]) / _norm(d[:, 1:])], 1),
        "cos(D, previous D)": torch.cat([first, _cos(_centred(d[:, 1:]), _centred(d[:, :-1]))], 1),
        "agreement cos(Dc, Du)": _cos(_centred(c), _centred(u)),
        # does a copy's conditional prediction settle early on one image? (it does not separate better)
        "cos(Dc, previous Dc)": torch.cat([first, _cos(_centred(c[:, 1:]), _centred(c[:, :-1]))], 1),
        "cos(Dc, Dc 3 steps back)": torch.cat([first.expand(-1, 3), _cos(_centred(c[:, 3:]), _centred(c[:, :-3]))], 1),
        "cos(g, previous g)": torch.cat([first, _cos(_centred(g[:, 1:]), _centred(g[:, :-1]))], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--split", choices=("validation", "test"), default="validation")
    ap.add_argument("--out", type=Path, default=None, help="bench_graded's output folder (default bench_out/<weights name>)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path("bench_out") / args.weights.stem
    truth = {}
    for split in ("validation", args.split):
        path = out / f"truth_{split}.json"
        if not path.is_file():
            raise SystemExit(f"{path}: no copy truth; run python bench/bench_graded.py --weights {args.weights} --split {split}")
        truth[split] = torch.tensor(json.loads(path.read_text())["corr"])
    tb = load_testbed(args.weights)
    sigmas = [float(s) for s in tb.schedule.sigmas_for(STEPS, "normal")]
    val = split_set(tb.data, "validation")
    partial = partial_threshold(truth["validation"][[i for i, g in enumerate(val) if g.kind in REFERENCE_KINDS]])
    gens = split_set(tb.data, args.split)
    corr = truth[args.split]
    copy = corr >= VERBATIM
    ordinary = torch.tensor([g.kind in ORDINARY_KINDS for g in gens]) & (corr < partial)
    cal = signals(predictions(tb, calibration_set(tb.data), sigmas))
    ev = signals(predictions(tb, gens, sigmas))
    print(f"{args.weights.name}, split {args.split}: {int(copy.sum())} verbatim copies, {int(ordinary.sum())} ordinary "
          f"generations; AUC per step (0-11) of the signal standardised on the calibration runs, and of its largest "
          f"(or, where copies run low, smallest) standardised value over the first K steps")
    for name in cal:
        m, s = cal[name].mean(0), cal[name].std(0).clamp(min=1e-6)
        z = (ev[name] - m) / s
        per_step = [roc_auc(z[copy, j], z[ordinary, j]) for j in range(12)]
        sign = 1.0 if sum(per_step) / len(per_step) >= 0.5 else -1.0
        agg = []
        for k in (5, 10, 15):
            sc = (sign * z[:, :k]).max(1).values
            agg.append(f"K={k} {roc_auc(sc[copy], sc[ordinary]):.3f} (TPR@1%FPR {tpr_at_fpr(sc[copy], sc[ordinary]):.2f})")
        print(f"  {name:22s} {'high' if sign > 0 else 'low '}  " + "  ".join(agg) + "   per step "
              + " ".join(f"{a:.2f}" for a in per_step))


if __name__ == "__main__":
    main()
