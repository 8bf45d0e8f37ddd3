"""Detection benchmark on a graded-family model: per memorization kind, dose and split.

    python bench/bench_graded.py --weights bench/testbeds/weights/graded_a.safetensors --split validation
    python bench/bench_graded.py --weights bench/testbeds/weights/graded_a.safetensors --split test

Calibrates on ordinary captions of both caption families (calibration set, bench/testbeds/prompts.py),
samples the split's generations once in detect mode and keeps every step's measurements
(bench/trajectories.py, cached in --out), measures each generation against the replayed training
stream (bench/copies.py: verbatim and partial copies), and prints, per scorer: AUC and TPR at 1 %
FPR for verbatim and for partial copies against ordinary generations, the same within the first
10 % of steps, the share of copies the online verdict flags and of ordinary generations it flags,
per prompt kind and dose level. The paper's scoring (max |z_update|) is a reference row. Nothing
here is a test: it prints measurements, and writes them to --out/<split>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.copies import VERBATIM, partial_threshold, stream_bank  # noqa: E402
from bench.testbeds.graded import FAMILY  # noqa: E402
from bench.testbeds.prompts import (  # noqa: E402
    MEMORIZED_KINDS,
    NEAR_KINDS,
    ORDINARY_KINDS,
    REFERENCE_KINDS,
    calibration_set,
    split_set,
)  # noqa: E402
from bench.trajectories import latents_digest, record  # noqa: E402
from core import evidence  # noqa: E402
from core.detect import DetectionConfig, roc_auc, step_excess, tpr_at_fpr  # noqa: E402
from core.measures import QUANTITIES  # noqa: E402
from core.region import RegionBuilder  # noqa: E402
from core.settings import RunSettings  # noqa: E402
from core.testbed import load_testbed  # noqa: E402

STEPS, CFG, SAMPLER, SCHEDULER = 50, 7.5, "ddim", "normal"


def setup(weights: Path, out: Path, threads: int):
    torch.set_num_threads(threads)
    tb = load_testbed(weights)
    if tb.data.get("family") != FAMILY:
        raise SystemExit(f"{weights} is not a {FAMILY}-family model (its data: {str(tb.data)[:80]})")
    sigmas = tb.schedule.sigmas_for(STEPS, SCHEDULER)
    settings = RunSettings(tb.identity, SAMPLER, SCHEDULER, STEPS, CFG, tb.latent_shape,
                           sigmas=tuple(float(s) for s in sigmas))
    return tb, sigmas, settings


def recordings(tb, sigmas, settings, out: Path, splits):
    recipe = tb.data
    calib = record(tb, calibration_set(recipe), sigmas, settings, CFG, cache=out / "calibration.safetensors")
    builder = RegionBuilder(settings)
    builder.add_run(calib.values_qnb())
    region = builder.build({"trajectories": len(calib.gens), "id": "bench-calibration"})
    recs = {s: record(tb, split_set(recipe, s), sigmas, settings, CFG, cache=out / f"{s}.safetensors") for s in splits}
    return calib, region, recs


def truths(tb, recs, out: Path):
    """Copy truth per split (cached in --out/truth_<split>.json, reused only for the same samples)."""
    result, bank = {}, None
    for split, rec in recs.items():
        path = out / f"truth_{split}.json"
        digest = latents_digest(rec.latents)
        if path.is_file():
            d = json.loads(path.read_text())
            if d.pop("latents", None) == digest:
                result[split] = {k: torch.tensor(v) for k, v in d.items()}
                continue
        if bank is None:
            t0 = time.perf_counter()
            bank = stream_bank(tb)
            print(f"replayed the training stream ({bank.bank.shape[0]} images) in {time.perf_counter() - t0:.0f}s")
        t = bank.truth(tb.decode(rec.latents))
        d = {"corr": t.corr.tolist(), "ssim": t.ssim.tolist(), "where": t.where.tolist()}
        path.write_text(json.dumps({**d, "latents": digest}))
        result[split] = {k: torch.tensor(v) for k, v in d.items()}
    return result


def copy_table(rec, truth, partial: float) -> None:
    kinds = MEMORIZED_KINDS + NEAR_KINDS + ORDINARY_KINDS
    print(f"\ncopies per prompt kind (verbatim: NN corr >= {VERBATIM}; partial: >= {partial:.2f}, where this "
          f"model's validation generations of never-titled, never-duplicated captions do not reach)")
    for k in kinds:
        idx = [i for i, g in enumerate(rec.gens) if g.kind == k]
        if not idx:
            continue
        c = truth["corr"][idx]
        levels = sorted({rec.gens[i].level for i in idx})
        by_level = ""
        if k in MEMORIZED_KINDS:
            by_level = "  per dose level " + " ".join(
                f"{int((c[[j for j, i in enumerate(idx) if rec.gens[i].level == lv]] >= VERBATIM).sum())}/"
                f"{sum(rec.gens[i].level == lv for i in idx)}" for lv in levels)
        print(f"  {k:16s} n={len(idx):3d}  verbatim {int((c >= VERBATIM).sum()):3d}  partial {int((c >= partial).sum()):3d}"
              f"  NN corr median {float(c.median()):.3f} max {float(c.max()):.3f}  SSIM median "
              f"{float(truth['ssim'][idx].median()):.3f}{by_level}")


def prepared(weights: Path, out: Path, split: str, threads: int):
    """Everything a graded benchmark starts from: the model, its schedule and settings, the
    calibration recording and region, the recordings and copy truth of validation and `split`,
    and the partial-copy level (placed on validation)."""
    out.mkdir(parents=True, exist_ok=True)
    tb, sigmas, settings = setup(weights, out, threads)
    splits = ["validation"] + ([split] if split != "validation" else [])
    calib, region, recs = recordings(tb, sigmas, settings, out, splits)
    tr = truths(tb, recs, out)
    val = recs["validation"]
    reference = [i for i, g in enumerate(val.gens) if g.kind in REFERENCE_KINDS]
    partial = partial_threshold(tr["validation"]["corr"][reference])
    return tb, sigmas, settings, calib, region, recs, tr, partial


def model_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of the scripts that compare verdicts on several graded models' recordings."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="graded_a,graded_m,graded_p,graded_pb")
    ap.add_argument("--split", default="validation", help="validation (a choice) or test (a report, never a choice)")
    ap.add_argument("--threads", type=int, default=1)
    return ap


def zscores(rec, region) -> torch.Tensor:
    """[B, N, Q] signed z of recorded trajectories against the region (as the guard computes them)."""
    return (rec.values - region.mean.T.unsqueeze(0)) / region.std.T.unsqueeze(0)


class Scorer:
    """A detector as the benchmark sees it: per-item scores and the online verdict."""

    def __init__(self, name, score, flag, first_score, tail=None):
        self.name, self.score, self.flag, self.first_score = name, score, flag, first_score
        self.tail = tail    # the calibration's NullTail where the threshold comes from a false-flag rate


def scorers(region, config: DetectionConfig = DetectionConfig()) -> list[Scorer]:
    n = region.steps
    window, first = config.active_window(n), config.first_window(n)
    null = evidence.null_from_trajectories(region.trajectories, window)
    thr = null.tail.threshold(config.false_flag_rate)
    u, c = QUANTITIES.index("update"), QUANTITIES.index("clean")

    def ev(z, k):
        return evidence.window_max(evidence.path(z, null), k)

    def band(z, k):
        return step_excess(z[..., u], z[..., c])[:, :k].nan_to_num(-1).max(1).values

    def paper(z, k):
        return z[..., u].abs()[:, :k].nan_to_num(-1).max(1).values

    # the verdict of format-2 regions (before the agreement): update and gap evidence, the first 20 % of steps
    window02 = DetectionConfig(active_fraction=0.2).active_window(n)
    null02 = evidence.null_from_trajectories(region.trajectories, window02, evidence.LEGACY_WEIGHTS)
    thr02 = null02.tail.threshold(config.false_flag_rate)

    def ev02(z, k):
        return evidence.window_max(evidence.path(z, null02), k)

    return [
        Scorer(f"this pack: evidence, flag at rate {config.false_flag_rate:g} (threshold {thr:.2f})",
               lambda z: ev(z, window), lambda z: ev(z, window) > thr, lambda z: ev(z, first), null.tail),
        Scorer(f"update-and-gap verdict (format-2 regions): first {window02} steps, rate {config.false_flag_rate:g}",
               lambda z: ev02(z, window02), lambda z: ev02(z, window02) > thr02, lambda z: ev02(z, first)),
        Scorer(f"v0.1 band rule: min(|z_u|,|z_c|) > {config.tau_mild} in the first {window} steps",
               lambda z: band(z, first), lambda z: band(z, window) > config.tau_mild, lambda z: band(z, first)),
        Scorer("the paper: max |z_update| over all steps, flag at 3 (gamma)",
               lambda z: paper(z, n), lambda z: paper(z, n) > 3.0, lambda z: paper(z, first)),
    ]


def copy_groups(rec, corr: torch.Tensor, partial: float) -> tuple[list[int], list[int], list[int]]:
    """Indices of the verbatim copies, the partial-only copies, and the ordinary generations
    (ordinary prompt kinds below the partial level) of a recording."""
    kinds = [g.kind for g in rec.gens]
    verbatim = [i for i in range(len(kinds)) if corr[i] >= VERBATIM]
    part = [i for i in range(len(kinds)) if partial <= corr[i] < VERBATIM]
    ordinary = [i for i in range(len(kinds)) if kinds[i] in ORDINARY_KINDS and corr[i] < partial]
    return verbatim, part, ordinary


def detection_table(rec, truth, z, partial: float, region) -> dict:
    corr, kinds = truth["corr"], [g.kind for g in rec.gens]
    verbatim, part, ordinary = copy_groups(rec, corr, partial)
    print(f"\ndetection: {len(verbatim)} verbatim copies, {len(part)} partial copies (partial, not verbatim), "
          f"{len(ordinary)} ordinary generations (ordinary prompt kinds, below the partial threshold)")
    out = {}
    for sc in scorers(region):
        s, flag, s_first = sc.score(z), sc.flag(z), sc.first_score(z)
        row = {
            "verbatim_auc": roc_auc(s[verbatim], s[ordinary]), "verbatim_tpr_1pct": tpr_at_fpr(s[verbatim], s[ordinary]),
            "partial_auc": roc_auc(s[part], s[ordinary]), "partial_tpr_1pct": tpr_at_fpr(s[part], s[ordinary]),
            "verbatim_auc_first_10pct": roc_auc(s_first[verbatim], s_first[ordinary]),
            "verbatim_flagged": float(flag[verbatim].float().mean()) if verbatim else float("nan"),
            "partial_flagged": float(flag[part].float().mean()) if part else float("nan"),
            "ordinary_flagged": float(flag[ordinary].float().mean()),
            "ordinary_flagged_n": int(flag[ordinary].sum()),
        }
        per_kind = {}
        for k in MEMORIZED_KINDS + NEAR_KINDS + ORDINARY_KINDS:
            ids = [i for i in range(len(kinds)) if kinds[i] == k]
            if ids:
                cp = [i for i in ids if corr[i] >= partial]
                nc = [i for i in ids if corr[i] < partial]
                per_kind[k] = {"copies": len(cp), "copies_flagged": int(flag[cp].sum()),
                               "others": len(nc), "others_flagged": int(flag[nc].sum())}
        row["per_kind"] = per_kind
        out[sc.name] = row
        print(f"  {sc.name}")
        print(f"    verbatim: AUC {row['verbatim_auc']:.4f}  TPR@1%FPR {row['verbatim_tpr_1pct']:.3f}  first 10 % AUC "
              f"{row['verbatim_auc_first_10pct']:.4f}  flagged online {row['verbatim_flagged'] * 100:.1f} %")
        print(f"    partial:  AUC {row['partial_auc']:.4f}  TPR@1%FPR {row['partial_tpr_1pct']:.3f}  flagged online "
              f"{row['partial_flagged'] * 100:.1f} %")
        print(f"    ordinary generations flagged: {row['ordinary_flagged_n']}/{len(ordinary)} "
              f"({row['ordinary_flagged'] * 100:.1f} %)")
        print("    per prompt kind, copies (>= partial) flagged / others flagged: " + ", ".join(
            f"{k} {v['copies_flagged']}/{v['copies']} | {v['others_flagged']}/{v['others']}" for k, v in per_kind.items()))
    return out


def caption_table(rec, truth, flag: torch.Tensor, partial: float, audit_seeds: int = 4) -> dict:
    """The audit's question, per caption rather than per generation: is a caption whose
    generations copy caught by at least one flagged seed? Token and scene items are sampled with
    the same caption and 6 seeds; the audit's default is 4 (the first 4 here). Controls (rare
    titled captions, never duplicated, 6 seeds) are the captions that must not be caught; for
    ordinary captions (1 seed each here) the chance at n seeds follows from the per-generation rate
    of the detection table's ordinary generations, assuming seeds independent."""
    corr, gens = truth["corr"], rec.gens
    items: dict = {}
    for i, g in enumerate(gens):
        if g.kind in ("token", "scene", "render_control", "photo_control"):
            items.setdefault((g.kind, g.item), []).append(i)

    def caught(ids, n=None):
        return bool(flag[ids[:n] if n else ids].any())

    copying = [ids for (k, _), ids in items.items() if k in ("token", "scene") and bool((corr[ids] >= VERBATIM).any())]
    quiet = [ids for (k, _), ids in items.items() if k in ("token", "scene") and not bool((corr[ids] >= VERBATIM).any())]
    controls = [ids for (k, _), ids in items.items() if k in ("render_control", "photo_control")]
    ordinary = [i for i, g in enumerate(gens) if g.kind in ORDINARY_KINDS and corr[i] < partial]   # as detection_table
    rate = float(flag[ordinary].float().mean()) if ordinary else float("nan")
    row = {"copying_captions": len(copying), "caught_all_seeds": sum(caught(ids) for ids in copying),
           f"caught_first_{audit_seeds}_seeds": sum(caught(ids, audit_seeds) for ids in copying),
           "copying_generations": int(sum(int((corr[ids] >= VERBATIM).sum()) for ids in copying)),
           "quiet_captions": len(quiet), "quiet_caught": sum(caught(ids) for ids in quiet),
           "control_captions": len(controls), "controls_caught": sum(caught(ids) for ids in controls),
           "ordinary_generation_rate": rate,
           f"ordinary_caption_rate_{audit_seeds}_seeds": 1 - (1 - rate) ** audit_seeds}
    n = row["copying_captions"]
    print(f"\nper caption (the audit's view), this pack's verdict: of {n} token/scene captions with a verbatim copy "
          f"among their {len(copying[0]) if copying else 0} seeds ({row['copying_generations']} copies), "
          f"{row['caught_all_seeds']} have a flagged seed ({row[f'caught_first_{audit_seeds}_seeds']} within their first "
          f"{audit_seeds} seeds); captions of duplicated items that never copied: {row['quiet_caught']}/"
          f"{row['quiet_captions']} flagged; rare-title controls: {row['controls_caught']}/{row['control_captions']} "
          f"flagged; ordinary captions, from the per-generation rate {rate * 100:.1f} %: "
          f"{row[f'ordinary_caption_rate_{audit_seeds}_seeds'] * 100:.1f} % expected flagged at {audit_seeds} seeds")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="default: bench_out/<weights name>")
    ap.add_argument("--split", choices=("validation", "test"), default="validation")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = args.out or Path("bench_out") / args.weights.stem
    tb, sigmas, settings, calib, region, recs, tr, partial = prepared(args.weights, out, args.split, args.threads)
    rec, truth = recs[args.split], tr[args.split]
    print(f"{args.weights.name} ({tb.identity}), split {args.split}: {SAMPLER}/{SCHEDULER} {STEPS} steps, cfg {CFG}; "
          f"{len(calib.gens)} calibration runs, {len(rec.gens)} generations")
    copy_table(rec, truth, partial)
    results = {"split": args.split, "partial_threshold": partial, "weights": str(args.weights), "identity": tb.identity,
               "detection": detection_table(rec, truth, zscores(rec, region), partial, region)}
    verdict = scorers(region)[0]
    results["captions"] = caption_table(rec, truth, verdict.flag(zscores(rec, region)), partial)
    (out / f"{args.split}.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out / (args.split + '.json')}")


if __name__ == "__main__":
    main()
