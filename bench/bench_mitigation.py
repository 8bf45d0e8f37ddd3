"""Mitigation benchmark on a graded-family model: what each strategy removes and what it keeps.

    python bench/bench_mitigation.py --weights bench/testbeds/weights/graded_a.safetensors --split validation
    python bench/bench_mitigation.py --weights ... --split test --strategies unconditional

Samples the split's generations once per strategy in mitigate mode, with the same region, seeds
and batches as the detect-mode recording of bench/bench_graded.py (whose cache in --out it shares),
and prints per strategy:
- copies after mitigation (bench/copies.py, against the replayed training stream): of the
  flagged generations of memorized captions, and of all of them (verbatim and partial);
- adherence of the flagged, mitigated images (bench/checker.py) against the checker's reading of
  ordinary generations of the same kind of caption (one object: token and template captions; two
  objects: scene captions), as a ratio;
- the Frechet distance of the flagged, mitigated images to ordinary generations, beside its noise
  floor (bench/fidelity.py), and their grain: the share of their energy at periods under 8 pixels
  beside ordinary generations' (the distance does not see grain), and how much of that detail
  they share with the detect-mode image (the copy) they replaced; and their share at periods under
  2.7 pixels (a grid: the finest patterns a 32 px image holds) beside ordinary generations';
- the share of generations of non-memorized prompts that come out bit-identical to detect mode;
- the cost: extra model evaluations per flagged image (and, with --timing, wall time on a quiet
  machine: non-memorized generations over plain sampling, flagged ones over detect mode).
Strategy "none" is detect mode itself (the copies as they come). It also writes, per strategy, a
picture of the flagged generations (first row detect mode, second the strategy) and a
copy-versus-adherence plot, into --out. Nothing here is a test: it prints measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.bench_graded import CFG, prepared, scorers, zscores  # noqa: E402
from bench.checker import checker_for, load_checker  # noqa: E402
from bench.copies import VERBATIM, stream_bank  # noqa: E402
from bench.fidelity import fine_detail, matched_frechet, shared_fine_detail  # noqa: E402
from bench.testbeds.prompts import MEMORIZED_KINDS, split_set  # noqa: E402
from bench.trajectories import latents_digest, record  # noqa: E402
from core.guard import STRATEGIES, GuardConfig  # noqa: E402
from core.sampling import guarded_sample, plain_sample  # noqa: E402
from core.schedule import start_latent  # noqa: E402

ONE_OBJECT_KINDS, TWO_OBJECT_KINDS = ("token", "template"), ("scene",)
GRID_PERIOD = 2.7   # px: the finest periods a 32 px image holds (its Nyquist period is 2)


def timing(tb, gens, sigmas, settings, region, strategy: str, ordinary: list[int], flagged: list[int],
           repeats: int = 3) -> dict:
    """Quiet-machine cost of `strategy`: wall time of 8 non-memorized generations in mitigate mode
    over plain sampling (nothing flagged: the guard only measures), and the extra seconds per image
    of 8 flagged ones over detect mode; best of `repeats`, alternating."""
    def batch(idx):
        part = [gens[i] for i in idx[:8]]
        return tb.pair([g.caption for g in part]), start_latent(tb.noise([g.seed for g in part]), sigmas, tb.schedule.sigma_max)

    def best(fn):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    mitigate, detect = GuardConfig(mode="mitigate", strategy=strategy), GuardConfig(mode="detect")
    pair_o, x_o = batch(ordinary)
    pair_f, x_f = batch(flagged)
    t_plain = best(lambda: plain_sample(pair_o, x_o, sigmas, CFG, "ddim"))
    t_guard = best(lambda: guarded_sample(pair_o, x_o, sigmas, settings, CFG, region=region, config=mitigate))
    t_det = best(lambda: guarded_sample(pair_f, x_f, sigmas, settings, CFG, region=region, config=detect))
    t_mit = best(lambda: guarded_sample(pair_f, x_f, sigmas, settings, CFG, region=region, config=mitigate))
    n_f = x_f.shape[0]
    return {"non_memorized_ratio": t_guard / t_plain, "flagged_extra_seconds_per_image": (t_mit - t_det) / n_f,
            "flagged_seconds_per_image_detect": t_det / n_f, "batch": n_f}


def strip(images: torch.Tensor, rows: list[torch.Tensor], path: Path, scale: int = 3) -> None:
    """Rows of 32x32 images side by side (one row per tensor), upscaled, as a PNG."""
    cols = max((r.shape[0] for r in rows), default=0)
    if cols == 0:
        return
    canvas = torch.ones(3, len(rows) * 34, cols * 34)
    for r, row in enumerate(rows):
        for c in range(row.shape[0]):
            canvas[:, r * 34 + 1:r * 34 + 33, c * 34 + 1:c * 34 + 33] = (row[c].clamp(-1, 1) + 1) / 2
    arr = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(arr).resize((cols * 34 * scale, len(rows) * 34 * scale), Image.NEAREST).save(path)


def tradeoff_plot(rows: dict, path: Path) -> None:
    """Copies left (x, of all generations of memorized captions, partial level) against adherence
    ratio (y), one dot per strategy."""
    w, h, m = 560, 420, 60
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    d.rectangle([m, 20, w - 20, h - m], outline=(90, 90, 90))
    xmax = max([r["all_partial"] for r in rows.values()] + [0.05]) * 1.1
    to_xy = lambda cx, cy: (m + (w - 20 - m) * cx / xmax, h - m - (h - m - 20) * min(max(cy, 0.0), 1.1) / 1.1)  # noqa: E731
    y95 = to_xy(0, 0.95)[1]
    d.line([m, y95, w - 20, y95], fill=(200, 120, 120))
    d.text((w - 150, y95 - 14), "0.95 x ordinary", fill=(200, 120, 120))
    for name, r in rows.items():
        ratio = r["adherence_ratio"]
        if ratio != ratio:   # NaN: nothing flagged
            continue
        x, y = to_xy(r["all_partial"], ratio)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(30, 90, 220))
        d.text((x + 6, y - 6), name, fill=(20, 20, 20))
    d.text((m, h - m + 8), f"copies left (partial or verbatim), share of memorized captions' generations; x max {xmax:.2f}",
           fill=(20, 20, 20))
    d.text((4, 4), "adherence of flagged images / ordinary", fill=(20, 20, 20))
    im.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="default: bench_out/<weights name>")
    ap.add_argument("--split", choices=("validation", "test"), default="validation")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated; 'none' is always included")
    ap.add_argument("--checker", type=Path, default=None,
                    help="default: the model's own checker (checker_<weights name>) if trained, else the render checker")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timing", action="store_true",
                    help="also time the first strategy given (run it alone on a quiet machine)")
    args = ap.parse_args()
    strategies = [s for s in args.strategies.split(",") if s and s != "none"]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise SystemExit(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}")
    out = args.out or Path("bench_out") / args.weights.stem
    tb, sigmas, settings, calib, region, recs, tr, partial = prepared(args.weights, out, args.split, args.threads)
    rec = recs[args.split]
    gens = split_set(tb.data, args.split)
    assert [g.seed for g in gens] == [g.seed for g in rec.gens]
    kinds = [g.kind for g in gens]
    detector = scorers(region)[0]
    flagged = detector.flag(zscores(rec, region))
    memorized = [i for i, k in enumerate(kinds) if k in MEMORIZED_KINDS]
    hit = [i for i in memorized if flagged[i]]
    # not memorized: generations of the other prompt kinds that detect mode draws below the partial level
    others = [i for i, k in enumerate(kinds) if k not in MEMORIZED_KINDS and tr[args.split]["corr"][i] < partial]
    print(f"{args.weights.name} ({tb.identity}), split {args.split}: {len(memorized)} generations of memorized captions, "
          f"{len(hit)} of them flagged; {len(others)} non-memorized generations (other prompts, no copy in detect mode), "
          f"{int(flagged[others].sum())} of them flagged; partial-copy level {partial:.2f}")

    runs = {"none": (rec.latents, 0)}
    for strategy in strategies:   # sampling first (cached): the analysis below can be rerun alone
        # the detect recording's batches (bench/trajectories.py): the same batches give the same arithmetic
        m = record(tb, gens, sigmas, settings, CFG, cache=out / f"{args.split}_mitigate_{strategy}.safetensors",
                   config=GuardConfig(mode="mitigate", strategy=strategy), region=region,
                   progress=lambda msg, s=strategy: print(f"  {s}:{msg}", flush=True))
        runs[strategy] = (m.latents, m.extra_model_calls)
    checker_path = args.checker or checker_for(args.weights)
    checker = load_checker(checker_path)
    detect_images = tb.decode(rec.latents)
    ordinary_images = tb.decode(calib.latents)
    ref_feat = checker.features(ordinary_images)
    novel = [i for i, k in enumerate(kinds) if k in ("novel_one", "novel_two")]
    novel_feat = checker.features(detect_images[novel])
    ordinary_detail = float(fine_detail(detect_images[novel]).mean())
    ordinary_grid = float(fine_detail(detect_images[novel], GRID_PERIOD).mean())
    # for scale: each flagged detect image against the next flagged one of another caption
    other = [next((j for j in hit[k + 1:] + hit[:k] if gens[j].caption != gens[i].caption), i) for k, i in enumerate(hit)]
    unrelated_detail = float(shared_fine_detail(detect_images[hit], detect_images[other]).mean()) if hit else float("nan")
    base_adherence = checker.adherence(detect_images, [g.caption for g in gens])
    ordinary_one = float(base_adherence[[i for i, k in enumerate(kinds) if k == "novel_one"]].nanmean())
    ordinary_two = float(base_adherence[[i for i, k in enumerate(kinds) if k == "novel_two"]].nanmean())
    print(f"checker {checker_path.name} (trained on {checker.meta.get('trained_on', 'renders')}), held out: "
          f"{json.dumps(checker.meta.get('held_out', {}))}; adherence of ordinary "
          f"generations: one object {ordinary_one:.3f}, two objects {ordinary_two:.3f}")

    bank = None
    rows = {}
    for strategy, (latents, extra) in runs.items():
        images = tb.decode(latents)
        truth_path = out / f"truth_{args.split}_mitigate_{strategy}.json"
        cached = json.loads(truth_path.read_text()) if truth_path.is_file() else {}
        if strategy == "none":
            corr = tr[args.split]["corr"]
        elif isinstance(cached, dict) and cached.get("latents") == latents_digest(latents):
            corr = torch.tensor(cached["corr"])
        else:   # none yet, or measured on other samples (a new recording): measure these
            if bank is None:
                bank = stream_bank(tb)
            corr = bank.truth(images).corr
            truth_path.write_text(json.dumps({"latents": latents_digest(latents), "corr": corr.tolist()}))
        adherence = checker.adherence(images, [g.caption for g in gens])
        one = [i for i in hit if kinds[i] in ONE_OBJECT_KINDS]
        two = [i for i in hit if kinds[i] in TWO_OBJECT_KINDS]
        expected = (len(one) * ordinary_one + len(two) * ordinary_two) / max(1, len(one) + len(two))
        got = float(adherence[one + two].nanmean()) if hit else float("nan")
        fd, floor, n_fd = matched_frechet(checker.features(images[hit]), ref_feat, novel_feat)
        identical = float((latents[others] == rec.latents[others]).flatten(1).all(1).float().mean())
        row = {
            "flagged": len(hit),
            "flagged_verbatim": int((corr[hit] >= VERBATIM).sum()), "flagged_partial": int((corr[hit] >= partial).sum()),
            "all_verbatim": float((corr[memorized] >= VERBATIM).float().mean()),
            "all_partial": float((corr[memorized] >= partial).float().mean()),
            "adherence": got, "adherence_expected": expected, "adherence_ratio": got / expected if expected else float("nan"),
            "adherence_one": float(adherence[one].nanmean()) if one else float("nan"),
            "adherence_two": float(adherence[two].nanmean()) if two else float("nan"),
            "fd": fd, "fd_floor": floor, "fd_n": n_fd, "others_identical": identical,
            "fine_detail": float(fine_detail(images[hit]).mean()) if hit else float("nan"),
            "fine_detail_ordinary": ordinary_detail,
            "grid": float(fine_detail(images[hit], GRID_PERIOD).mean()) if hit else float("nan"),
            "grid_ordinary": ordinary_grid,
            "fine_detail_shared": float(shared_fine_detail(images[hit], detect_images[hit]).mean()) if hit else float("nan"),
            "fine_detail_shared_unrelated": unrelated_detail,
            "extra_calls_per_flagged": extra / max(1, int(flagged.sum())),
        }
        rows[strategy] = row
        print(f"\n  {strategy}")
        print(f"    flagged generations of memorized captions still copies: verbatim {row['flagged_verbatim']}/{len(hit)}, "
              f"partial {row['flagged_partial']}/{len(hit)}")
        print(f"    all generations of memorized captions: verbatim {row['all_verbatim'] * 100:.1f} %, partial or verbatim "
              f"{row['all_partial'] * 100:.1f} %")
        print(f"    adherence of flagged images {got:.3f} (one object {row['adherence_one']:.3f}, two {row['adherence_two']:.3f}) "
              f"vs ordinary {expected:.3f}: ratio {row['adherence_ratio']:.3f}")
        print(f"    quality: Frechet distance {fd:.2f} vs noise floor {floor:.2f} (n = {n_fd}): ratio {fd / floor:.2f}")
        print(f"    grain: share of energy at periods under 8 px {row['fine_detail']:.3f} vs ordinary generations "
              f"{ordinary_detail:.3f}; fine detail shared with the detect-mode image {row['fine_detail_shared']:.2f} "
              f"(flagged images of two captions: {unrelated_detail:.2f})")
        print(f"    grid: share of energy at periods under {GRID_PERIOD} px {row['grid']:.3f} vs ordinary generations "
              f"{ordinary_grid:.3f}")
        print(f"    non-memorized generations bit-identical to detect mode: {identical * 100:.1f} %")
        if strategy != "none":
            print(f"    cost: {row['extra_calls_per_flagged']:.1f} extra model evaluations per flagged image "
                  f"(a 50-step run makes 50); wall time: --timing")
        strip(images, [detect_images[hit], images[hit]], out / f"{args.split}_flagged_{strategy}.png")
    if args.timing and strategies:
        ordinary = [i for i in others if not flagged[i]]
        t = timing(tb, gens, sigmas, settings, region, strategies[0], ordinary, hit)
        rows[strategies[0]]["timing"] = t
        print(f"\ntiming, {strategies[0]} (best of 3, batches of {t['batch']}): non-memorized generations "
              f"{t['non_memorized_ratio']:.3f} x plain sampling; flagged ones +{t['flagged_extra_seconds_per_image']:.2f} s "
              f"per image over detect mode's {t['flagged_seconds_per_image_detect']:.2f} s")
    tradeoff_plot(rows, out / f"{args.split}_tradeoff.png")
    (out / f"{args.split}_mitigation.json").write_text(json.dumps({"split": args.split, "partial_threshold": partial,
                                                                   "strategies": rows}, indent=2))
    print(f"\nwrote {out / (args.split + '_mitigation.json')}, pictures and {args.split}_tradeoff.png")


if __name__ == "__main__":
    main()
