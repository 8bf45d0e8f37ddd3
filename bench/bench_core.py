"""Benchmark of the core engine on the memorizing testbed (issue: core engine).

    python bench/bench_core.py [--out bench_out/core] [--split test] [--seeds-per-memorized 12] [--timing-only]

Calibrates on 50 ordinary prompts x 2 seeds, then samples memorized, novel and control
generations (disjoint from calibration) plainly, with detection, and with each mitigation, and
prints: ground truth per generation (a copy = luminance correlation >= 0.9 with its nearest
neighbour in the replayed training stream), AUC and TPR at 1 % FPR for each score, memorization
rates, how many non-memorized generations mitigation touched and by how much, and wall-time
ratios guarded / plain measured in this run. Nothing here is a test: it prints measurements.

--split picks the generations (calibration is always the same): `test` is what the README reports;
`validation` (other seeds, other novel prompts) is where the defaults tau_mild and off_scale were
chosen; `fresh` (other seeds and prompts again) was used for no choice at all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core`

from turn_taking import Turns, share_one_malloc_arena  # noqa: E402

from core.detect import SCORES, roc_auc, tpr_at_fpr  # noqa: E402
from core.guard import STRATEGIES, GuardConfig  # noqa: E402
from core.region_file import save_region  # noqa: E402
from core.sampling import calibrate, guarded_sample, plain_sample  # noqa: E402
from core.schedule import start_latent  # noqa: E402
from core.settings import RunSettings  # noqa: E402
from core.testbed import load_testbed  # noqa: E402
from core.testbed.dataset import all_general_combos, general_caption, memorized_image, special_items  # noqa: E402
from core.testbed.similarity import COPY_THRESHOLD, luminance_bank, luminance_correlation, nearest_neighbours, ssim  # noqa: E402

STEPS, CFG, SAMPLER, SCHEDULER = 50, 7.5, "ddim", "normal"
# per split: (first novel prompt, novel seed base, memorized/control seed offset); no seed or novel
# prompt is shared between splits or with calibration (prompts general[:50], seeds 1000-1099)
SPLITS = {"test": (50, 5000, 0), "validation": (150, 6000, 50), "fresh": (250, 3000, 30)}
UNGUIDED_SEEDS = {"test": 40000, "validation": 41000, "fresh": 42000}


def unguided_set(split: str, n: int = 60) -> list[tuple[str, int]]:
    """Empty-prompt generations: the unconditional model alone (cond = uncond, so cfg does nothing).
    What it copies bounds what the `unconditional` strategy can remove."""
    return [("", UNGUIDED_SEEDS[split] + i) for i in range(n)]


def prompt_sets(seeds_per_memorized: int, seeds_per_control: int, novel: int, split: str = "test"):
    first_novel, novel_seed, offset = SPLITS[split]
    if max(seeds_per_memorized, seeds_per_control) > 20 or novel > 100:
        raise ValueError("at most 20 seeds per special prompt and 100 novel prompts keep the splits disjoint")
    combos = all_general_combos()
    order = torch.randperm(len(combos), generator=torch.Generator().manual_seed(4242)).tolist()
    general = [general_caption(*combos[i]) for i in order]
    calib = [(c, 1000 + 2 * i + s) for i, c in enumerate(general[:50]) for s in range(2)]
    novel_set = [(c, novel_seed + i) for i, c in enumerate(general[first_novel:first_novel + novel])]
    items = special_items()
    memorized = [(it.caption, 9000 + 100 * k + offset + s)
                 for k, it in enumerate(i for i in items if i.kind == "memorized") for s in range(seeds_per_memorized)]
    control = [(it.caption, 7000 + 100 * k + offset + s)
               for k, it in enumerate(i for i in items if i.kind != "memorized") for s in range(seeds_per_control)]
    return calib, memorized, novel_set, control


def calibrate_region(tb, calib, start, sigmas, settings, chunk):
    """The benchmark's stability region, from the calibration (caption, seed) pairs in batches."""
    runs = ((tb.pair([c for c, _ in calib[i:i + chunk]]), start(tb.noise([s for _, s in calib[i:i + chunk]])))
            for i in range(0, len(calib), chunk))
    return calibrate(runs, sigmas, settings, CFG, meta={"prompts": sorted({c for c, _ in calib}), "seeds_per_prompt": 2})


def run_chunks(tb, jobs, fn, chunk):
    """Apply fn(pair, x) -> latent (or result) to the jobs in chunks; returns the list of outputs."""
    out = []
    for i in range(0, len(jobs), chunk):
        part = jobs[i:i + chunk]
        caps, seeds = [c for c, _ in part], [s for _, s in part]
        out.append(fn(tb.pair(caps), tb.noise(seeds)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench_out/core"))
    ap.add_argument("--split", choices=list(SPLITS), default="test")
    ap.add_argument("--seeds-per-memorized", type=int, default=12)
    ap.add_argument("--seeds-per-control", type=int, default=10)
    ap.add_argument("--novel", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=66)
    ap.add_argument("--timing-repeats", type=int, default=4,
                    help="0 skips the timing; keep it even: the side that starts swaps every repeat")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timing-only", action="store_true", help="calibrate, then only the wall-time ratios")
    args = ap.parse_args()
    if args.timing_repeats % 2:
        ap.error("--timing-repeats must be even (0 skips the timing): with an odd count one side "
                 "starts more often, and the harness favours whoever starts")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    tb = load_testbed(args.weights) if args.weights else load_testbed()
    sigmas = tb.schedule.sigmas_for(STEPS, SCHEDULER)

    def start(noise):                 # ComfyUI's scaling of the starting noise
        return start_latent(noise, sigmas, tb.schedule.sigma_max)

    settings = RunSettings(tb.identity, SAMPLER, SCHEDULER, STEPS, CFG, tb.latent_shape)
    calib, memorized, novel, control = prompt_sets(args.seeds_per_memorized, args.seeds_per_control, args.novel, args.split)
    tests = memorized + novel + control
    kind = ["memorized"] * len(memorized) + ["novel"] * len(novel) + ["control"] * len(control)
    print(f"testbed {tb.identity}, split {args.split}: {SAMPLER}/{SCHEDULER} {STEPS} steps, cfg {CFG}; "
          f"{len(calib)} calibration runs, {len(memorized)} memorized-prompt, {len(novel)} novel and "
          f"{len(control)} control generations")

    # -- calibration --------------------------------------------------------------------------
    t0 = time.perf_counter()
    region = calibrate_region(tb, calib, start, sigmas, settings, args.chunk)
    save_region(region, args.out / "testbed_region.safetensors")
    print(f"calibrated in {time.perf_counter() - t0:.1f}s")

    def plain(pair, x):
        return plain_sample(pair, start(x), sigmas, CFG, SAMPLER)

    def guarded(config):
        return lambda pair, x: guarded_sample(pair, start(x), sigmas, settings, CFG, region=region, config=config)

    if args.timing_only:
        results = {"timing": timing(tb, tests, kind, plain, guarded, args)}
        (args.out / "timing.json").write_text(json.dumps(results, indent=2))
        return

    # -- plain, detect, mitigate --------------------------------------------------------------
    base = torch.cat(run_chunks(tb, tests, plain, args.chunk))
    det = run_chunks(tb, tests, guarded(GuardConfig(mode="detect")), args.chunk)
    det_latent = torch.cat([r.latent for r in det])
    det_items = [it for r in det for it in r.report.items]
    strategies = {f"{s}/{'exact' if e else 'cheap'}": GuardConfig(mode="mitigate", strategy=s, exact=e)
                  for s in STRATEGIES for e in (True, False)}
    mitigated = {}
    for name, cfg in strategies.items():
        res = run_chunks(tb, tests, guarded(cfg), args.chunk)
        mitigated[name] = (torch.cat([r.latent for r in res]), [it for r in res for it in r.report.items])

    # -- ground truth -------------------------------------------------------------------------
    images = tb.decode(base)
    steps, batch = int(tb.training["steps"]), int(tb.training["batch"])
    stream = tb.training_stream()
    t0 = time.perf_counter()
    bank = luminance_bank(lambda k: stream.batch(k)[0], steps)
    print(f"\nreplayed the training stream ({bank.shape[0]} images) in {time.perf_counter() - t0:.0f}s")
    nn_corr, _ = nearest_neighbours(images, bank)
    memo_ref = {it.caption: memorized_image(it) for it in special_items() if it.kind == "memorized"}
    copy = nn_corr >= COPY_THRESHOLD
    results = {}

    def copies_of(latents):
        imgs = tb.decode(latents)
        corr, _ = nearest_neighbours(imgs, bank)
        return corr >= COPY_THRESHOLD, corr

    idx_m = [i for i, k in enumerate(kind) if k == "memorized"]
    idx_n = [i for i, k in enumerate(kind) if k != "memorized"]
    ref = torch.stack([memo_ref[tests[i][0]] for i in idx_m])
    corr_ref = luminance_correlation(images[idx_m], ref)
    ssim_ref = ssim(images[idx_m], ref)
    print(f"\nground truth (copy = nearest-neighbour luminance correlation >= {COPY_THRESHOLD} over "
          f"{steps * batch} replayed training images)")
    for k in ("memorized", "novel", "control"):
        ids = [i for i, kk in enumerate(kind) if kk == k]
        print(f"  {k:9s}: {int(copy[ids].sum())}/{len(ids)} generations are copies "
              f"(NN corr median {float(nn_corr[ids].median()):.3f}, max {float(nn_corr[ids].max()):.3f})")
    print(f"  memorized prompts vs their training image: corr median {float(corr_ref.median()):.3f}, "
          f"SSIM median {float(ssim_ref.median()):.3f}; corr>=0.9 agrees with NN copy for "
          f"{int(((corr_ref >= COPY_THRESHOLD) == copy[idx_m]).sum())}/{len(idx_m)}")
    unguided = unguided_set(args.split)
    ung_corr, _ = nearest_neighbours(tb.decode(torch.cat(run_chunks(tb, unguided, plain, args.chunk))), bank)
    results["unguided_copies"] = int((ung_corr >= COPY_THRESHOLD).sum())
    print(f"  unguided (empty prompt, the unconditional model alone): {results['unguided_copies']}/{len(unguided)} "
          f"generations are copies (NN corr median {float(ung_corr.median()):.3f}, max {float(ung_corr.max()):.3f})")
    per_prompt = {}
    for i in idx_m:
        per_prompt.setdefault(tests[i][0], []).append(bool(copy[i]))
    print("  per memorized prompt, copies/seeds: " + ", ".join(f"{sum(v)}/{len(v)}" for v in per_prompt.values()))

    # -- detection ----------------------------------------------------------------------------
    pos = [i for i in idx_m if copy[i]]
    neg = [i for i in idx_n if not copy[i]]
    print(f"\ndetection: {len(pos)} copies vs {len(neg)} novel+control generations")
    results["detection"] = {}
    for s in SCORES:
        v = torch.tensor([float("nan") if det_items[i].scores[s] is None else det_items[i].scores[s] for i in range(len(tests))])
        auc, tpr = roc_auc(v[pos], v[neg]), tpr_at_fpr(v[pos], v[neg], 0.01)
        results["detection"][s] = {"auc": auc, "tpr_at_1pct_fpr": tpr}
        print(f"  score {s:5s}: AUC {auc:.4f}  TPR@1%FPR {tpr:.3f}")
    # the paper's ranking, max over steps of |z_update| alone, for comparison
    v = torch.tensor([max((abs(z) for z in det_items[i].zscores["update"] if z is not None), default=float("nan"))
                      for i in range(len(tests))])
    auc, tpr = roc_auc(v[pos], v[neg]), tpr_at_fpr(v[pos], v[neg], 0.01)
    results["detection"]["paper_max_update"] = {"auc": auc, "tpr_at_1pct_fpr": tpr}
    print(f"  the paper's max |z_update|: AUC {auc:.4f}  TPR@1%FPR {tpr:.3f}")
    flagged = torch.tensor([it.flagged for it in det_items])
    print(f"  online flag: {int(flagged[pos].sum())}/{len(pos)} copies flagged, "
          f"{int(flagged[neg].sum())}/{len(neg)} non-memorized flagged")
    firsts = [det_items[i].first_flagged_step for i in pos if det_items[i].first_flagged_step is not None]
    if firsts:
        print(f"  first flagged step of copies: median {statistics.median(firsts)}, max {max(firsts)}")
    print(f"  detect mode bit-identical to plain: {torch.equal(det_latent, base)}")
    zc = lambda ids, q: torch.tensor([[v if v is not None else float("nan") for v in det_items[i].zscores[q]] for i in ids])  # noqa: E731
    for q in ("update", "clean", "latent", "gap"):
        zp, zn = zc(pos, q), zc(neg, q)
        cols = [0, 1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 40, 49]
        print(f"  median z_{q:6s} copies: " + " ".join(f"{float(zp[:, c].nanmedian()):6.1f}" for c in cols))
        print(f"  median z_{q:6s} others: " + " ".join(f"{float(zn[:, c].nanmedian()):6.1f}" for c in cols))

    # -- mitigation ---------------------------------------------------------------------------
    print(f"\nmemorization rate on memorized prompts: detection only {float(copy[idx_m].float().mean()) * 100:.1f} %")
    results["mitigation"] = {}
    for name, (lat, items) in mitigated.items():
        is_copy, _ = copies_of(lat[idx_m])
        touched = [i for i in idx_n if not torch.equal(lat[i], base[i])]
        change = max((float((tb.decode(lat[i:i + 1]) - tb.decode(base[i:i + 1])).abs().max()) for i in touched), default=0.0)
        rate = float(is_copy.float().mean()) * 100
        results["mitigation"][name] = {"memorization_rate": rate, "non_memorized_touched": len(touched),
                                       "largest_pixel_change": change,
                                       "extra_model_calls": sum(1 for it in items if it.corrected_steps or it.steered_steps)}
        print(f"  {name:25s}: {rate:5.1f} % copies; non-memorized touched {len(touched)}/{len(idx_n)} "
              f"({100 - 100 * len(touched) / len(idx_n):.1f} % bit-identical), largest pixel change {change:.3f}")

    if args.timing_repeats > 0:
        results["timing"] = timing(tb, tests, kind, plain, guarded, args)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out / 'results.json'}")


class ReplayedPair:
    """A PairDenoiser that answers with the predictions a real run recorded, per sigma (rows
    sliced as asked): a sampling loop driven by it costs its own work and nothing of the model's."""

    def __init__(self, pair):
        self.pair, self.seen = pair, {}

    def record(self, x, sigma, rows, need_uncond):
        out = self.pair(x, sigma, rows, need_uncond)
        self.seen[float(sigma[0])] = out
        return out

    def __call__(self, x, sigma, rows, need_uncond):
        c, u = self.seen[float(sigma[0])]
        return (c, u) if rows is None else (c[rows], None if u is None else u[rows])


def timing(tb, tests, kind, plain, guarded, args) -> dict:
    """Wall time guarded / plain for the same seeds, in the same run: per batch, the plain and the
    guarded loop run in turns, one model call each (Turns), and each side's time is what it held;
    which side starts swaps every repeat.

    The guard's own work is also timed directly: both loops are driven again by the model
    predictions the plain run recorded (ReplayedPair), many times, and the difference of their best
    times is what the guard adds to the plain run's real time. It leaves out what the guard's
    tensors cost the model through the caches and the allocator (memory handed back to the system
    and faulted in again around the model call), and the model calls of exact redos (the one falsely
    flagged image of the test split: 1 of 7,000 image-steps). The plain loop against itself, in
    the same harness, shows what a ratio of two identical sides looks like on this machine."""
    default = GuardConfig(mode="mitigate")          # the pack's default strategy
    default_name = f"{default.strategy}/{'exact' if default.exact else 'cheap'}"
    nonmem = [t for t, k in zip(tests, kind) if k != "memorized"]
    pairs = {"detect (all)": (tests, guarded(GuardConfig(mode="detect"))),
             f"mitigate {default_name} (non-memorized)": (nonmem, guarded(default)),
             "plain again (non-memorized): the noise floor": (nonmem, plain)}
    replays = 4 * args.timing_repeats + 1
    arena = "one malloc arena" if share_one_malloc_arena() else "a malloc arena per thread (not glibc)"
    print(f"\nwall time, same seeds, plain and guarded in turns one model call at a time, batches of "
          f"{args.chunk}, {args.timing_repeats} repeats (threads={args.threads}, {arena}); the guard's own "
          f"work: best of {replays} replays of the recorded predictions", flush=True)
    out = {}
    for label, (jobs, fn) in pairs.items():
        tp = tg = guard_work = 0.0
        for part in (jobs[i:i + args.chunk] for i in range(0, len(jobs), args.chunk)):
            replay = ReplayedPair(tb.pair([cap for cap, _ in part]))
            noise = tb.noise([seed for _, seed in part])
            for r in range(args.timing_repeats):
                turns = Turns(("plain", "guarded"), first="plain" if r % 2 == 0 else "guarded")
                spent = turns.run({"plain": (plain, replay.pair, noise), "guarded": (fn, replay.pair, noise)}, args.threads)
                tp, tg = tp + spent["plain"], tg + spent["guarded"]
            plain(replay.record, noise)
            best = [float("inf"), float("inf")]   # plain, the other side
            for r in range(replays):
                for side in (0, 1) if r % 2 == 0 else (1, 0):
                    t = time.perf_counter()
                    (plain, fn)[side](replay, noise)
                    best[side] = min(best[side], time.perf_counter() - t)
            guard_work += best[1] - best[0]
        plain_run = tp / args.timing_repeats        # one plain pass over the jobs
        out[label] = {"plain_s": tp, "guarded_s": tg, "ratio": tg / tp, "guard_work_s": guard_work,
                      "guard_work_share": guard_work / plain_run}
        print(f"  {label:45s}: plain {tp:.2f}s, this {tg:.2f}s, ratio {tg / tp:.4f}; the guard's own work "
              f"{guard_work:.2f}s = {100 * guard_work / plain_run:.2f} % of plain", flush=True)
    return out


if __name__ == "__main__":
    main()
