"""Running the real audit command (`python <pack>/audit`) from tests, and reading what it wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]


def comfyui_root() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from comfyui_path import comfyui_root as find
    finally:
        sys.path.pop(0)
    return str(find())


def command(*args) -> list[str]:
    return [sys.executable, str(ROOT / "audit"), "--cpu", *map(str, args)]


def environment() -> dict:
    # one torch thread everywhere, as Ray gives each worker: then local and Ray runs match bit for bit
    return {**os.environ, "COMFYUI_PATH": comfyui_root(), "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
            "OMP_NUM_THREADS": "1"}


def run(*args, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(command(*args), env=environment(), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"audit exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(command(*args), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def rows(out: Path) -> list[dict]:
    return pq.read_table(out / "results.parquet").to_pylist()


def testbed_captions(memorized: int = 10, ordinary: int = 40) -> tuple[list[str], list[str]]:
    """The testbed's memorized captions and ordinary captions of its family (not its calibration's)."""
    from memguard.core.testbed.dataset import all_general_combos, general_caption, special_items

    mem = [it.caption for it in special_items() if it.kind == "memorized"][:memorized]
    combos = all_general_combos()
    return mem, [general_caption(*combos[i]) for i in range(3, len(combos), 7)][:ordinary]
