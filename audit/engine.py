"""One audit worker: the model loaded with ComfyUI's own loaders, sampling batches of the job
with the guard in detect mode through the same hooks as the pack's nodes (so the scores are the
nodes' scores for the same caption and seed), and turning each run's report into table rows and
pictures. Needs ComfyUI started (bootstrap.start_comfyui) and the pack imported as `memguard`.
"""

from __future__ import annotations

import inspect
import io
import os
import tempfile
from dataclasses import dataclass, field

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
import torch
import torch.nn.functional as F
from PIL import Image

from ..core import heatmap
from ..core.calibration import RegionSet
from ..core.detect import DetectionConfig
from ..core.guard import GuardConfig
from ..core.measures import QUANTITIES
from ..core.plot import stability_curves
from ..core.region_file import load_region, read_settings, save_region
from ..nodes import _paths
from ..nodes._compat import fix_empty_latent
from ..nodes.calibrating import calibrate, default_prompts, encoder_for, ksampler_settings
from ..nodes.guard_hooks import GuardSpec, cached_region, patch_model
from .job import AuditJob, JobError

THUMB = 256            # longest side of saved images, heatmaps and curves (pixels)
SCORE_NAMES = ("first", "max", "mean")


@dataclass
class BatchResult:
    """What a batch sends back: one row per generation and the pictures to write (path -> PNG)."""

    index: int
    rows: list[dict]
    files: dict[str, bytes] = field(default_factory=dict)


def _model_file(name: str, folder: str) -> str:
    if os.path.isfile(name):
        return name
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths(folder))
        raise JobError(f"{folder[:-1]} {name!r} was not found: it is neither a file nor in ComfyUI's {folder} "
                       f"folder(s) ({searched}).")
    return path


class Engine:
    def __init__(self, job: AuditJob):
        self.job = job
        _paths.register()
        if job.is_testbed:
            self._load_testbed()
        else:
            self._load_checkpoint()
        self.settings = ksampler_settings(self.model, job.steps, job.cfg, job.sampler, job.scheduler, self.latent, 1.0)
        sampler = comfy.samplers.sampler_object(job.sampler)
        fn = getattr(sampler, "sampler_function", None)
        # a sampler that draws noise per step seeds it with the run's seed: one seed per run, as the nodes do
        self.one_seed_per_run = fn is not None and "noise_sampler" in inspect.signature(fn).parameters
        self.negative = self.encode(job.negative)
        self.regions: RegionSet | None = None
        detection = DetectionConfig(active_fraction=job.active_fraction, false_flag_rate=job.false_flag_rate)
        self.config = GuardConfig(mode="detect", detection=detection)

    # -- the model ------------------------------------------------------------------------------
    def _load_testbed(self):
        from ..core.testbed import latent as testbed_latent
        from ..nodes.testbed_nodes import check_vocabulary, encode_conditioning, shared_testbed

        if self.job.loras:
            raise JobError("LoRAs apply to checkpoints; the testbed takes none.")
        tb, model = shared_testbed()
        for n, caption in enumerate((*self.job.captions, self.job.negative), 1):
            try:
                check_vocabulary(tb, caption)
            except ValueError as e:   # the nodes' message, plus which caption
                where = "--negative" if n > len(self.job.captions) else f"caption {n} ({caption!r})"
                raise JobError(f"{where}: {e}") from None
        self.testbed = tb
        self.clip = tb
        self.model = model
        self.encode = lambda text: encode_conditioning(tb, text)
        self.latent = {"samples": torch.zeros(1, *tb.latent_shape)}
        self.decode = lambda s: ((testbed_latent.decode(s.float().cpu()) + 1) / 2).clamp(0, 1).movedim(1, -1)

    def _load_checkpoint(self):
        job = self.job
        path = _model_file(job.checkpoint, "checkpoints")
        loras = [(_model_file(name, "loras"), strength) for name, strength in job.loras]   # all found before loading
        out = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True,
                                                    embedding_directory=folder_paths.get_folder_paths("embeddings"))
        model, clip, vae = out[:3]
        if clip is None or vae is None:
            raise JobError(f"{path} holds no text encoder or no VAE; the audit needs a full checkpoint "
                           "(one that CheckpointLoaderSimple loads with CLIP and VAE).")
        for lora_path, strength in loras:
            lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
            model, clip = comfy.sd.load_lora_for_models(model, clip, lora, strength, strength)
        self.testbed = None
        self.model, self.clip, self.vae = model, clip, vae
        self.encode = encoder_for(clip)
        empty = torch.zeros([1, 4, job.height // 8, job.width // 8], device=comfy.model_management.intermediate_device())
        self.latent = {"samples": empty}
        self.decode = lambda s: vae.decode(s)

    # -- the stability region ---------------------------------------------------------------------
    def region_for_job(self, given: bytes | None, label: str = "--calibration") -> tuple[bytes | None, str]:
        """(region file bytes, where it came from): `given` (named `label` in errors), checked
        against the run's settings; else the testbed's shipped region or a matching file in the
        calibration folders; else (None, reason), and the caller calibrates."""
        if given is not None:
            region = _region_from_bytes(given)
            RegionSet([region], [label]).select(self.settings)   # RegionMismatch names the differences
            return given, label
        if self.testbed is not None:
            from ..nodes.testbed_nodes import REGION

            if not read_settings(REGION).mismatches(self.settings):
                return REGION.read_bytes(), f"the testbed's own ({REGION.name})"
        found = cached_region(self.settings)
        if found is not None:
            region, name = found
            return _region_bytes(region), f"{name} in the calibration folder"
        return None, "no calibration for these settings"

    def calibrate(self) -> bytes:
        job = self.job
        prompts = list(job.calibration_prompts) or default_prompts(self.clip, 50)
        region = calibrate(self.model, self.encode, prompts, job.calibration_seeds, 0, job.steps, job.cfg,
                           job.sampler, job.scheduler, self.latent, 1.0, job.negative)
        return _region_bytes(region)

    def use_region(self, data: bytes) -> None:
        self.regions = RegionSet([_region_from_bytes(data)], ["audit calibration"])
        self.regions.select(self.settings)

    # -- sampling ---------------------------------------------------------------------------------
    def run_batch(self, index: int) -> BatchResult:
        if self.regions is None:
            raise RuntimeError("use_region() first: the audit needs a stability region")
        result = BatchResult(index, [])
        seeds = list(self.job.seeds)
        groups = [[s] for s in seeds] if self.one_seed_per_run else [seeds]
        for ci in self.job.batch(index):
            caption = self.job.captions[ci]
            positive = self.encode(caption)
            for group in groups:
                comfy.model_management.throw_exception_if_processing_interrupted()
                self._sample(ci, caption, positive, group, result)
        return result

    def _sample(self, ci: int, caption: str, positive, seeds: list[int], result: BatchResult) -> None:
        job = self.job
        one = fix_empty_latent(self.model, self.latent)
        latent = one.repeat(len(seeds), *([1] * (one.ndim - 1)))
        # each generation's noise is the noise the nodes draw for that seed at batch size 1
        noise = torch.cat([comfy.sample.prepare_noise(one, s) for s in seeds])
        spec = GuardSpec(self.config, calibration=self.regions, scheduler=job.scheduler, denoise=1.0,
                         lookup_cache=False, live_events=False)
        samples = comfy.sample.sample(patch_model(self.model, spec), noise, job.steps, job.cfg, job.sampler,
                                      job.scheduler, positive, self.negative, latent, denoise=1.0,
                                      disable_pbar=True, seed=seeds[0])
        record = spec.records.pop()
        items = record.report.items
        images = self.decode(samples).float().cpu().clamp(0, 1)
        flagged = [it.flagged for it in items]
        wanted = [job.save_images == "all" or (job.save_images == "flagged" and f) for f in flagged]
        if any(wanted):
            height, width = _thumb_size(images.shape[1], images.shape[2])
            # enlarge pixel art crisply, shrink photos without aliasing
            mode = "nearest" if height >= images.shape[1] else "area"
            small = F.interpolate(images.movedim(-1, 1), size=(height, width), mode=mode).movedim(1, -1)
            heat = (heatmap.to_image_map(record.heat, height, width) if record.heat is not None
                    else torch.zeros(len(items), height, width))
            overlays = heatmap.overlay(small, heat, 0.6)
            curves = stability_curves(record.report, width=480, height=360)
        for k, (item, seed) in enumerate(zip(items, seeds)):
            row = {"caption_index": ci, "caption": caption, "seed": int(seed), "batch": result.index,
                   "verdict": item.verdict, "flagged": bool(item.flagged), "severity": item.severity,
                   "first_flagged_step": item.first_flagged_step, "ordinary_rate": item.ordinary_rate,
                   **{f"score_{name}": item.scores.get(name) for name in SCORE_NAMES},
                   "evidence": list(item.evidence),
                   **{f"z_{q}": list(item.zscores.get(q, [])) for q in QUANTITIES},
                   "image": None, "heatmap": None, "curves": None}
            if wanted[k]:
                stem = f"{ci:07d}_{seed}"
                for key, folder, picture in (("image", "images", small[k]), ("heatmap", "heatmaps", overlays[k]),
                                             ("curves", "curves", curves[k])):
                    rel = f"{folder}/{stem}.png"
                    result.files[rel] = _png(picture)
                    row[key] = rel
            result.rows.append(row)


def _thumb_size(height: int, width: int) -> tuple[int, int]:
    """At most THUMB on the longest side; small images (the testbed's 32 px) enlarged by a whole factor."""
    longest = max(height, width)
    scale = THUMB / longest if longest > THUMB else max(1, THUMB // longest)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _png(picture: torch.Tensor) -> bytes:
    array = (picture.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _region_bytes(region) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "region.safetensors")
        save_region(region, path)
        with open(path, "rb") as f:
            return f.read()


def _region_from_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "region.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        return load_region(path)
