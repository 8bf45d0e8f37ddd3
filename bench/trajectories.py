"""Sample generations once, keep what the guard measures at every step, and reuse it.

Detection scores are functions of the per-step measurements and the region, so every detector
variant and threshold can be evaluated on the same recorded trajectories; the online guard, fed
the same measurements, makes the same decisions (tests/unit/test_detect.py holds it to that).
Recordings are cached as safetensors (with the generations' list in the metadata, checked on
reuse), so a second run of a benchmark does not sample again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core import evidence
from core.guard import GuardConfig
from core.measures import QUANTITIES
from core.sampling import guarded_sample
from core.schedule import start_latent

from .testbeds.prompts import Gen


class Recording:
    """latents [N, C, H, W] and values [N, steps, Q] of the generations `gens`, and the model
    calls the guard added (mitigation's redone steps and second runs)."""

    def __init__(self, gens: list[Gen], latents: torch.Tensor, values: torch.Tensor, extra_model_calls: int = 0):
        self.gens, self.latents, self.values, self.extra_model_calls = gens, latents, values, extra_model_calls

    def select(self, keep) -> "Recording":
        idx = [i for i, g in enumerate(self.gens) if keep(g)]
        return Recording([self.gens[i] for i in idx], self.latents[idx], self.values[idx])

    def values_qnb(self) -> torch.Tensor:
        """values as the guard and RegionBuilder hold them: [steps, Q, N]."""
        return self.values.permute(1, 2, 0)


def _config_key(config: GuardConfig) -> str:
    """What of the guard's settings the samples depend on: in detect mode not the strategy (it only
    acts in mitigate mode), so a change of the default strategy does not re-sample detect recordings."""
    if config.mode == "detect":
        return "detect " + repr({k: v for k, v in asdict(config).items() if k != "strategy"})
    return repr(config)


def record(tb, gens: list[Gen], sigmas, settings, cfg: float, chunk: int = 64, cache: Path | None = None,
           config: GuardConfig = GuardConfig(mode="detect"), region=None, progress=print) -> Recording:
    """Sample `gens` with the guard watching (detect mode, no region: it only measures)."""
    key = {"gens": [asdict(g) for g in gens], "settings": settings.to_dict(), "quantities": list(QUANTITIES),
           "config": _config_key(config), "region": None if region is None else region.meta.get("id")}
    if region is not None:   # a guard that acts on its verdict: a new verdict makes new samples
        key["verdict"] = repr((evidence.EVIDENCE_WEIGHTS, evidence.EVIDENCE_START_FRACTIONS))
    key = json.dumps(key)
    if cache is not None and cache.is_file():
        with safe_open(str(cache), framework="pt") as f:
            if (f.metadata() or {}).get("key") == key:
                data = load_file(str(cache))
                return Recording(gens, data["latents"], data["values"], int(f.metadata().get("extra", "0")))
    latents, values, extra = [], [], 0
    for start in range(0, len(gens), chunk):
        part = gens[start:start + chunk]
        pair = tb.pair([g.caption for g in part])
        x = start_latent(tb.noise([g.seed for g in part]), sigmas, tb.schedule.sigma_max)
        res = guarded_sample(pair, x, sigmas, settings, cfg, region=region, config=config)
        latents.append(res.latent)
        values.append(res.guard.values.permute(2, 0, 1))
        extra += res.guard.extra_evals
        if progress:
            progress(f"  sampled {start + len(part)}/{len(gens)}")
    rec = Recording(gens, torch.cat(latents), torch.cat(values), extra)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"latents": rec.latents.contiguous(), "values": rec.values.contiguous()}, str(cache),
                  metadata={"key": key, "extra": str(extra)})
    return rec


def latents_digest(latents: torch.Tensor) -> str:
    """What a cached copy truth was measured on: a truth is reused only for the same samples."""
    return hashlib.sha256(latents.float().contiguous().numpy().tobytes()).hexdigest()
