"""Wall-time overhead of the guard inside ComfyUI: guarded / stock KSampler on the same workflow,
in the same run, on the tiny SD1.x checkpoint the tests build (detect and mitigate modes).

    .venv/bin/python bench/bench_comfy.py [--steps 20] [--repeats 5]

Stock and guarded runs alternate and each figure is the median of the repeats. Mitigate mode uses
a stability region calibrated here for the same settings, so the guard really scores every step
(and would steer a flagged item; it reports how many were flagged). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))


def graph(ckpt, cond_node, sampler_cls, seed, steps, extra=None):
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": cond_node, "inputs": {"width": 768, "tokens": 77, "value": 0.5}},
        "3": {"class_type": cond_node, "inputs": {"width": 768, "tokens": 77, "value": 0.0}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "5": {"class_type": sampler_cls, "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0, **(extra or {})}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 is steadier on a shared VM)")
    args = ap.parse_args()

    from graphs import GUARD_DEFAULTS
    from harness import ComfySession, ConstantConditioning
    from tiny_sd import build_tiny_sd

    session = ComfySession.start(Path(tempfile.mkdtemp(prefix="memguard-bench-")))
    try:
        import torch

        torch.set_num_threads(args.threads)
        ckpt = build_tiny_sd(session.checkpoints_dir, "sd15").name
        session.register_node(ConstantConditioning.NODE_ID, ConstantConditioning)
        cond = ConstantConditioning.NODE_ID
        pack = session.pack_module
        guard_defaults = dict(GUARD_DEFAULTS)   # the tests' (and the shipped workflows') guard inputs

        # a region for exactly these settings, from 8 runs (4 seeds x batch 2) of the pack's own calibration
        from importlib import import_module

        calibrating = import_module(f"{pack.__name__}.nodes.calibrating")
        core_file = import_module(f"{pack.__name__}.core.region_file")
        import nodes as comfy_nodes

        model = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[0]
        positive = ConstantConditioning().make(768, 77, 0.5)[0]
        negative = ConstantConditioning().make(768, 77, 0.0)[0]
        region = calibrating.calibrate(model, lambda prompt: positive if prompt else negative, ["calibration"] * 4,
                                       seeds_per_prompt=2, seed=100, steps=args.steps, cfg=7.5, sampler="euler",
                                       scheduler="normal", latent={"samples": torch.zeros(1, 4, 8, 8)}, denoise=1.0)
        cal_dir = session.models_dir / "memguard_calibration"
        core_file.save_region(region, cal_dir / "bench_tiny_sd.safetensors")

        variants = {
            "stock KSampler": ("KSampler", None),
            "guarded, detect": ("MemGuardKSampler", {"mode": "detect", **guard_defaults}),
            "guarded, mitigate": ("MemGuardKSampler", {"mode": "mitigate", **guard_defaults}),
        }
        times = {name: [] for name in variants}
        flagged = 0
        for r in range(args.repeats + 1):         # the first round warms up and is not counted
            for name, (cls, extra) in variants.items():
                t = time.perf_counter()
                result = session.run_prompt(graph(ckpt, cond, cls, 7 + r, args.steps, extra), reuse_cache=True)
                if r:
                    times[name].append(time.perf_counter() - t)
                if r and cls == "MemGuardKSampler" and extra["mode"] == "mitigate":
                    report = result.node_output("5")[1].report
                    if report.region is None:   # the guard would only measure, and the ratio would flatter it
                        raise RuntimeError("the guarded run found no stability region for its settings")
                    flagged += sum(it.flagged for it in report.items)
        stock = statistics.median(times["stock KSampler"])
        print(f"tiny SD1.x checkpoint, 64x64, batch 2, euler/normal {args.steps} steps, cfg 7.5, CPU, "
              f"threads {args.threads}, median of {args.repeats} alternating runs (prompt execution; the loader stays cached)")
        for name, ts in times.items():
            print(f"  {name:20s}: {statistics.median(ts):7.3f}s  ratio to stock {statistics.median(ts) / stock:.4f}")
        print(f"  items flagged in mitigate runs: {flagged} of {2 * args.repeats} (region calibrated on 8 runs here)")
    finally:
        session.close()


if __name__ == "__main__":
    main()
