"""Do the seeds of one prompt agree early when the prompt copies? (issue 15: a batch of one prompt
runs its seeds side by side, and a memorized caption pulls every seed towards the same image.)

    python bench/seed_agreement.py --models graded_a,graded_m,graded_p,graded_pb --split validation

Every generation of the split (bench_graded's recording, whose copy truth and groups it uses) is
sampled again beside --group - 1 more seeds of its caption (DDIM, the benchmark's 50-step
schedule, only the first --steps steps run), keeping the conditional (Dc) and unconditional (Du)
clean predictions; the calibration set is sampled the same way. A generation's agreement at step
j is the cosine of its centred prediction (each channel's spatial mean removed) with that of each
other seed, pooled by their mean or their max, and standardised per step on the calibration set.
Printed per model and split:
- for D, Dc and the guidance Dc - Du, mean and max: AUC and TPR at 1 % FPR of the largest z over
  the first K steps, verbatim copies against ordinary generations;
- for the form chosen on the validation splits of graded_a/m/p/pb (the guidance, max over the
  other seeds, as -log(1 - cos), the first WINDOW steps), in batches of --group down to 2 seeds:
  what it flags on its own at CLOSENESS_RATE (threshold from a Gumbel fit to the calibration's
  scores, as core/null.py fits the verdict's), and with the pack's verdict beside it (flagged when
  either flags), against the verdict alone; pooled over the models given, with the operating
  curves of the pair and of the verdict alone over the rates SWEEP.
A diagnostic of a signal the guard does not compute (it needs a batch's seeds side by side);
prints measurements, not a test.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from bench.bench_graded import copy_groups, model_parser, prepared, scorers, zscores  # noqa: E402
from bench.detection_signals import _centred, predictions  # noqa: E402
from bench.testbeds.prompts import MEMORIZED_KINDS  # noqa: E402
from core.detect import DetectionConfig, roc_auc, tpr_at_fpr  # noqa: E402
from core.null import fit_tail, leave_one_out_z  # noqa: E402

EXTRA_SEED = 1_000_003   # the k-th extra seed of a generation: its seed + k * EXTRA_SEED (+ --draw * 7 * EXTRA_SEED)
CLOSENESS_RATE = 0.002   # its own false-flag rate, by a rule fixed on the validation splits (docs/testbed.md)
SWEEP = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)   # the closeness's own false-flag rate, in the pooled summary
WINDOW = 10   # steps (the first 20 % of 50): chosen on the validation splits of graded_a/m/p/pb


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = _centred(v).flatten(2)
    return v / v.norm(dim=2, keepdim=True).clamp(min=1e-8)


def agreement(gens, tb, sigmas, steps: int, group: int, draw: int = 0) -> dict[str, torch.Tensor]:
    """[N, steps, group - 1] per prediction: each generation's cosine with `group` - 1 more seeds of its caption."""
    extra = [replace(g, seed=g.seed + (k + 7 * draw) * EXTRA_SEED) for k in range(1, group) for g in gens]
    p = predictions(tb, list(gens) + extra, [float(s) for s in sigmas], chunk=96, steps=steps)
    n = len(gens)
    res = {}
    for name, v in (("Dc", p["Dc"]), ("D", p["D"]), ("Dc - Du", p["Dc"] - p["Du"])):
        u = _unit(v)
        own, others = u[:n], u[n:].view(group - 1, n, *u.shape[1:])
        res[name] = (own.unsqueeze(0) * others).sum(-1).permute(1, 2, 0)
    return res


def cached_agreement(path: Path, gens, tb, sigmas, steps: int, group: int, draw: int = 0) -> dict[str, torch.Tensor]:
    """agreement(), kept in `path` (reused only for the same generations, steps and group)."""
    key = repr(([(g.caption, g.seed) for g in gens], steps, group, "pairs") + ((draw,) if draw else ()))
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") == key:
                return load_file(str(path))
    res = agreement(gens, tb, sigmas, steps, group, draw)
    save_file({k: v.contiguous() for k, v in res.items()}, str(path), metadata={"key": key})
    return res


def closeness(cos: torch.Tensor) -> torch.Tensor:
    """-log(1 - cos): a cosine bounded by 1 stretched so that near-identical predictions stand out
    (a copy's siblings sit at 0.9-0.99 where ordinary ones reach 0.8), as a z-score needs."""
    return -torch.log1p(-cos.clamp(max=1 - 1e-6))


def rarity(tail, score: torch.Tensor) -> torch.Tensor:
    """-log of the rate at which ordinary trajectories reach `score` by `tail` (core.null.NullTail),
    kept finite far in the tail, where the rate itself underflows (there -log(rate) ~ the score in
    the tail's units)."""
    u = (score.double() - tail.location) / tail.scale
    r = -torch.expm1(-torch.exp(-u))
    return torch.where(r > 0, -torch.log(r.clamp(min=1e-300)), u)


def online(cal: torch.Tensor, ev: torch.Tensor, window: int, rate: float) -> tuple[torch.Tensor, float, torch.Tensor]:
    """The flags a guard would raise with this signal: its largest z over the first `window` steps
    (z per step against the calibration set) passes the Gumbel tail of the calibration's own
    scores (each calibration run left out of its own z, as core/null.py does) at `rate`; and each
    score's rarity by the same tail."""
    mean, sd = cal.mean(0), cal.std(0).clamp(min=1e-6)
    tail = fit_tail(leave_one_out_z(cal[:, :window, None])[..., 0].max(1).values)
    score = ((ev[:, :window] - mean[:window]) / sd[:window]).max(1).values
    thr = tail.threshold(rate)
    return score > thr, thr, rarity(tail, score)


def main() -> None:
    ap = model_parser(__doc__)
    ap.add_argument("--group", type=int, default=4, help="seeds per caption, as in a batch of one prompt")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--draw", type=int, default=0,
                    help="which draw of the other seeds (0: the one reported; others: how much the numbers move "
                         "with other siblings)")
    args = ap.parse_args()
    rate = DetectionConfig().false_flag_rate
    pooled: dict[int, torch.Tensor] = {}   # batch size -> counts, as in the per-split lines
    swept: dict[tuple, torch.Tensor] = {}   # (batch size, rate, what moves) -> the same counts
    for name in args.models.split(","):
        weights = Path("bench/testbeds/weights") / f"{name}.safetensors"
        out = Path("bench_out") / name
        tb, sigmas, settings, calib, region, recs, tr, partial = prepared(weights, out, args.split, args.threads)
        rec = recs[args.split]
        cp, pa, od = copy_groups(rec, tr[args.split]["corr"], partial)   # verbatim, partial, ordinary
        tag = f"{args.group}" + (f"_draw{args.draw}" if args.draw else "")
        cal = cached_agreement(out / f"seed_agreement_calibration_{tag}.safetensors", calib.gens, tb, sigmas,
                               args.steps, args.group, args.draw)
        ev = cached_agreement(out / f"seed_agreement_{args.split}_{tag}.safetensors", rec.gens, tb, sigmas,
                              args.steps, args.group, args.draw)
        # generations of memorized captions that did not copy: what a prompt-level signal flags besides the copies
        nc = [i for i, g in enumerate(rec.gens) if g.kind in MEMORIZED_KINDS and tr[args.split]["corr"][i] < partial]
        pack = scorers(region)[0]
        z_rec = zscores(rec, region)
        verdict, flagged = pack.score(z_rec), pack.flag(z_rec)
        verdict_rarity = rarity(pack.tail, verdict)
        print(f"\n{name} {args.split}: {len(cp)} verbatim copies, {len(pa)} partial copies, {len(od)} ordinary "
              f"generations; {args.group} seeds a caption. The pack's verdict on the same generations: verbatim AUC "
              f"{roc_auc(verdict[cp], verdict[od]):.3f}, TPR@1%FPR {tpr_at_fpr(verdict[cp], verdict[od]):.2f}; flagged: "
              f"verbatim {int(flagged[cp].sum())}/{len(cp)}, partial {int(flagged[pa].sum())}/{len(pa)}, ordinary "
              f"{int(flagged[od].sum())}/{len(od)}")
        print("  agreement with the other seeds (cosine; z per step on the calibration set), largest z over the first "
              "K steps, verbatim copies vs ordinary: AUC (TPR@1%FPR)")
        for key in cal:
            for pool in ("mean", "max"):
                zs = []
                c_p, e_p = (cal[key].mean(-1), ev[key].mean(-1)) if pool == "mean" else (cal[key].amax(-1), ev[key].amax(-1))
                z = (e_p - c_p.mean(0)) / c_p.std(0).clamp(min=1e-6)
                for k in (5, 10, 15):
                    if k <= args.steps:
                        sc = z[:, :k].max(1).values
                        zs.append(f"K={k} {roc_auc(sc[cp], sc[od]):.3f} ({tpr_at_fpr(sc[cp], sc[od]):.2f})")
                print(f"    {key:8s} {pool:4s} of the other seeds  " + "  ".join(zs))
        # the form chosen on the validation splits of graded_a/m/p/pb (docs/testbed.md), in batches of
        # 4, 3 and 2 seeds of a caption (the first 3, 2 or 1 of the other seeds)
        for others in range(args.group - 1, 0, -1):
            c_g = closeness(cal["Dc - Du"][..., :others].amax(-1))
            e_g = closeness(ev["Dc - Du"][..., :others].amax(-1))
            own, thr, own_rarity = online(c_g, e_g, WINDOW, CLOSENESS_RATE)
            # one score for both: the rarer of the two among ordinary trajectories, -log(rate) ("1 in N")
            rarer = torch.maximum(own_rarity, verdict_rarity)
            either = own | flagged
            z = ((e_g[:, :WINDOW] - c_g.mean(0)[:WINDOW]) / c_g.std(0)[:WINDOW].clamp(min=1e-6)).max(1).values
            missed = [k for k in cp if not flagged[k]]
            pooled[others + 1] = pooled.get(others + 1, torch.zeros(9, dtype=torch.long)) + torch.tensor(
                [int(flagged[cp].sum()), int(either[cp].sum()), len(cp), int(flagged[pa].sum()), int(either[pa].sum()),
                 len(pa), int(flagged[od].sum()), int(either[od].sum()), len(od)])
            for r in SWEEP:   # the closeness's own rate moved with the verdict's at the pack's, at r, or alone at r
                own_r = online(c_g, e_g, WINDOW, r)[0]
                verdict_r = verdict > pack.tail.threshold(r)
                for key, f in (("closeness", own_r | flagged), ("both", own_r | verdict_r), ("verdict", verdict_r)):
                    swept[others + 1, r, key] = swept.get((others + 1, r, key), torch.zeros(6, dtype=torch.long)) + \
                        torch.tensor([int(f[cp].sum()), len(cp), int(f[pa].sum()), len(pa), int(f[od].sum()), len(od)])
            print(f"  batches of {others + 1} seeds: the guidance's closeness to its nearest sibling, -log(1 - max cos), "
                  f"first {WINDOW} steps: verbatim AUC {roc_auc(z[cp], z[od]):.3f}, TPR@1%FPR "
                  f"{tpr_at_fpr(z[cp], z[od]):.2f}; at rate {CLOSENESS_RATE:g} (threshold {thr:.2f}) it flags verbatim "
                  f"{int(own[cp].sum())}/{len(cp)}, partial {int(own[pa].sum())}/{len(pa)}, ordinary "
                  f"{int(own[od].sum())}/{len(od)}, memorized captions' generations that did not copy "
                  f"{int(own[nc].sum())}/{len(nc)} (the verdict: {int(flagged[nc].sum())})")
            print(f"    with the verdict (either flags): verbatim {int(either[cp].sum())}/{len(cp)}, partial "
                  f"{int(either[pa].sum())}/{len(pa)}, ordinary {int(either[od].sum())}/{len(od)}; of the {len(missed)} "
                  f"verbatim copies the verdict misses, {int((z[missed] > z[od].max()).sum())} rank above every "
                  f"ordinary generation; ranked by the rarer of the two (1 in N): verbatim AUC "
                  f"{roc_auc(rarer[cp], rarer[od]):.3f}, TPR@1%FPR {tpr_at_fpr(rarer[cp], rarer[od]):.2f}")
    if len(args.models.split(",")) > 1:
        print(f"\npooled over {args.models} ({args.split}): flagged by the verdict ({rate:g}) -> by the verdict or the "
              f"closeness ({CLOSENESS_RATE:g})")
        for size, c in sorted(pooled.items(), reverse=True):
            c = c.tolist()
            print(f"  batches of {size}: verbatim {c[0]} -> {c[1]} of {c[2]} ({100 * c[0] / max(1, c[2]):.1f} % -> "
                  f"{100 * c[1] / max(1, c[2]):.1f} %), partial {c[3]} -> {c[4]} of {c[5]}, ordinary {c[6]} -> {c[7]} of "
                  f"{c[8]} ({100 * c[6] / max(1, c[8]):.1f} % -> {100 * c[7] / max(1, c[8]):.1f} %)")
        print("  the operating curves, flagged: verbatim, partial, ordinary. 'closeness': the verdict at the pack's rate "
              f"({rate:g}) or the closeness at the rate given; 'both': either at the rate given; 'verdict': the verdict "
              "alone at the rate given (bench/rate_sweep.py's rows)")
        for size in sorted(pooled, reverse=True):
            for key in ("closeness", "both", "verdict"):
                if key == "verdict" and size != max(pooled):
                    continue
                print(f"    {key:9s}" + (f" batches of {size}" if key != "verdict" else " (any batch)  ") + ": " + "; ".join(
                    f"{r:g}: {c[0]}/{c[1]} ({100 * c[0] / max(1, c[1]):.1f} %), {c[2]}/{c[3]}, {c[4]}/{c[5]} "
                    f"({100 * c[4] / max(1, c[5]):.1f} %)" for r in SWEEP for c in [swept[size, r, key].tolist()]))

if __name__ == "__main__":
    main()
