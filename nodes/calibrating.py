"""Calibrating a stability region inside ComfyUI, and calibrating automatically on first use."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch

from ..core.calibration import RegionSet
from ..core.guard import GuardConfig
from ..core.region import RegionBuilder, StabilityRegion
from ..core.region_file import RegionFileError, load_region, read_settings, save_region
from ..core.settings import RunSettings
from ..core.testbed import Testbed
from . import _paths
from ._compat import fix_empty_latent
from ._model_id import encoder_identity, model_identity
from .guard_hooks import GuardSpec, patch_model, sampler_name

POOL_FILE = Path(__file__).resolve().parents[1] / "data" / "calibration_prompts.txt"


def default_prompts(encoder, count: int) -> list[str]:
    """The shipped pool (LAION captions not memorized by SD 1.4), or the testbed's own family."""
    if isinstance(encoder, Testbed):
        from ..core.testbed.dataset import all_general_combos, general_caption

        combos = all_general_combos()
        order = torch.randperm(len(combos), generator=torch.Generator().manual_seed(4242)).tolist()
        return [general_caption(*combos[i]) for i in order[:count]]
    lines = [ln.strip() for ln in POOL_FILE.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")][:count]


def parse_prompts(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def encoder_for(clip) -> Callable[[str], list]:
    """text -> CONDITIONING, for a CLIP or the testbed's text encoder."""
    if isinstance(clip, Testbed):
        from .testbed_nodes import encode_conditioning

        return lambda text: encode_conditioning(clip, text)
    if clip is None:
        raise ValueError("Calibration needs the text encoder (CLIP) of the model to encode its prompts; "
                         "your checkpoint loader returned none.")
    return lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))


def ksampler_settings(model, steps: int, cfg: float, sampler: str, scheduler: str, latent: dict,
                      denoise: float) -> RunSettings:
    """The settings key a KSampler run with these inputs will have (as the guard's hooks see it)."""
    ks = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler,
                                 scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    samples = fix_empty_latent(model, latent)
    return RunSettings(model=model_identity(model), sampler=sampler_name(comfy.samplers.sampler_object(sampler)),
                       scheduler=scheduler, steps=len(ks.sigmas) - 1, cfg=float(cfg),
                       latent_shape=tuple(samples.shape[1:]), denoise=float(denoise),
                       sigmas=tuple(float(s) for s in ks.sigmas))


def calibrate(model, encode: Callable[[str], list], prompts: list[str], seeds_per_prompt: int, seed: int,
              steps: int, cfg: float, sampler: str, scheduler: str, latent: dict, denoise: float,
              negative_prompt: str = "") -> StabilityRegion:
    """Sample every prompt with `seeds_per_prompt` seeds and accumulate the per-step statistics.
    Progress bar over all steps; Cancel stops between and inside runs."""
    if not prompts:
        raise ValueError("Calibration needs at least one prompt.")
    if cfg <= 1.0:
        raise ValueError("Calibration needs classifier-free guidance (cfg > 1): the stability signal comes from it.")
    spec = GuardSpec(GuardConfig(mode="detect"), calibration=None, scheduler=scheduler, denoise=denoise,
                     lookup_cache=False, live_events=False)
    patched = patch_model(model, spec)
    negative = encode(negative_prompt)
    template = latent["samples"]
    batch = torch.zeros((seeds_per_prompt, *template.shape[1:]), dtype=template.dtype)
    batch = fix_empty_latent(model, {**latent, "samples": batch})
    pbar = comfy.utils.ProgressBar(len(prompts) * steps)
    builder = None
    for i, prompt in enumerate(prompts):
        comfy.model_management.throw_exception_if_processing_interrupted()
        positive = encode(prompt)
        noise = comfy.sample.prepare_noise(batch, seed + i)

        def progress(step, x0, x, total, done=i * steps):
            pbar.update_absolute(done + step + 1, len(prompts) * steps)

        comfy.sample.sample(patched, noise, steps, cfg, sampler, scheduler, positive, negative, batch,
                            denoise=denoise, callback=progress, disable_pbar=True, seed=seed + i)
        record = spec.records.pop()
        if builder is None:
            builder = RegionBuilder(RunSettings.from_dict(record.report.settings))
        builder.add_run(record.measures)
    return builder.build({"prompts": prompts, "seeds_per_prompt": seeds_per_prompt, "seed": seed,
                          "negative_prompt": negative_prompt, "trajectories": builder.runs})


@dataclass
class CalibrationPlan:
    """A recipe for calibrating on first use of a settings key (Auto Calibration node)."""

    clip: object
    prompts: list[str]
    seeds_per_prompt: int
    seed: int
    negative_prompt: str

    def digest(self) -> str:
        """The recipe's part of the cache key (the settings key covers the model)."""
        blob = json.dumps([self.prompts, self.seeds_per_prompt, self.seed, self.negative_prompt,
                           encoder_identity(self.clip)])
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def cache_path(self, settings: RunSettings) -> str:
        return os.path.join(_paths.auto_dir(), f"{settings.file_stem()}-{self.digest()}.safetensors")

    def cached(self, settings: RunSettings, path: str) -> StabilityRegion | None:
        if not os.path.isfile(path):
            return None
        try:
            if read_settings(path).mismatches(settings):
                return None
            return load_region(path)
        except RegionFileError:
            return None   # a broken cache entry is recalibrated and overwritten

    def resolve(self, model, steps, cfg, sampler, scheduler, latent, denoise) -> RegionSet:
        settings = ksampler_settings(model, steps, cfg, sampler, scheduler, latent, denoise)
        path = self.cache_path(settings)   # hashes the text encoder's weights: once per run
        region = self.cached(settings, path)
        if region is None:
            region = calibrate(model, encoder_for(self.clip), self.prompts, self.seeds_per_prompt, self.seed,
                               steps, cfg, sampler, scheduler, latent, denoise, self.negative_prompt)
            save_region(region, path)
        return RegionSet([region], [os.path.basename(path)])
