"""The headless audit (a subprocess, as a user runs it) scores a generation as the Guarded KSampler
node does for the same caption and seed, on this ComfyUI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from graphs import MEMORIZED, NOVEL, demo_graph
from harness import comfyui_root

ROOT = Path(__file__).resolve().parents[2]


def audit(*args) -> subprocess.CompletedProcess:
    """The audit command on this ComfyUI, as a user runs it."""
    env = {**os.environ, "COMFYUI_PATH": str(comfyui_root()), "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "audit"), "--cpu", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_audit_scores_are_the_guarded_ksamplers(comfy_session, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text(f"{MEMORIZED}\n{NOVEL}\n")
    out = tmp_path / "audit"
    done = audit("--captions", captions, "--out", out, "--seeds", 2, "--seed", 5)
    assert done.returncode == 0, done.stderr[-4000:]
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [(r["caption"], r["seed"]) for r in table] == [(MEMORIZED, 5), (MEMORIZED, 6), (NOVEL, 5), (NOVEL, 6)]
    assert [r["flagged"] for r in table] == [True, True, False, False]

    for row in table:
        result = comfy_session.run_prompt(demo_graph(row["caption"], batch=1, seed=row["seed"]))
        item = json.loads(result.node_output("7")[5])["items"][0]
        assert (item["verdict"], item["flagged"], item["first_flagged_step"]) == \
            (row["verdict"], row["flagged"], row["first_flagged_step"])
        # the audit samples a caption's seeds as one batch and the node one image: the same noise
        # and arithmetic, summed in another order by the CPU's kernels
        for name in ("first", "max", "mean"):
            assert math.isclose(item["scores"][name], row[f"score_{name}"], rel_tol=1e-3, abs_tol=1e-3), \
                (name, item["scores"][name], row[f"score_{name}"])
        assert math.isclose(item["ordinary_rate"], row["ordinary_rate"], rel_tol=1e-2, abs_tol=1e-12)


def test_audit_names_a_missing_model_file_or_text_encoder(comfy_session, tiny_sd_ckpt, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a cat\n")
    ckpt = comfy_session.checkpoints_dir / tiny_sd_ckpt
    cases = [(["--checkpoint", "missing.safetensors"], "checkpoint 'missing.safetensors' was not found"),
             (["--checkpoint", str(ckpt), "--lora", "nope.safetensors:0.5"], "lora 'nope.safetensors' was not found"),
             # the tiny test checkpoint carries no text encoder, as some UNet-only files do
             (["--checkpoint", str(ckpt), "--width", "64", "--height", "64"], "holds no text encoder")]
    for extra, message in cases:
        out = tmp_path / f"out{len(extra)}"
        done = audit("--captions", captions, "--out", out, *extra)
        assert done.returncode == 2 and message in done.stderr, (extra, done.stderr[-3000:])
        assert not out.exists()
