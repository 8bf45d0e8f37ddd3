"""Calibrate the stability region shipped with the testbed (used by the zero-download demo).

    python bench/make_testbed_region.py

Settings: euler (ComfyUI's "ddim" is the same arithmetic), normal scheduler, 50 steps, cfg 7.5,
16x16 latents; 50 ordinary testbed prompts x 2 seeds, the calibration set of bench/bench_core.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core`

from core.region_file import save_region  # noqa: E402
from core.sampling import calibrate  # noqa: E402
from core.schedule import start_latent  # noqa: E402
from core.settings import RunSettings  # noqa: E402
from core.testbed import WEIGHTS, load_testbed  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import CFG, STEPS, prompt_sets  # noqa: E402

OUT = WEIGHTS.parent / "testbed_region.safetensors"


def main() -> None:
    torch.set_num_threads(1)
    tb = load_testbed()
    sigmas = tb.schedule.sigmas_for(STEPS, "normal")

    def start(noise):                 # ComfyUI's scaling of the starting noise
        return start_latent(noise, sigmas, tb.schedule.sigma_max)

    settings = RunSettings(tb.identity, "euler", "normal", STEPS, CFG, tb.latent_shape, 1.0)
    calib = prompt_sets(1, 1, 1)[0]
    chunk = 50
    runs = ((tb.pair([c for c, _ in calib[i:i + chunk]]), start(tb.noise([s for _, s in calib[i:i + chunk]])))
            for i in range(0, len(calib), chunk))
    region = calibrate(runs, sigmas, settings, CFG, meta={"prompts": sorted({c for c, _ in calib}), "seeds_per_prompt": 2})
    save_region(region, OUT)
    print(f"saved {OUT}: {region.settings.describe()}")


if __name__ == "__main__":
    main()
