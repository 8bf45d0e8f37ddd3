"""Attaching the guard to a ComfyUI model: a SAMPLER_SAMPLE wrapper and a post-CFG function.

Both are registered on a clone under one key, so they compose with other packs' hooks and never
touch the input model. Per-run state lives in the run's own `transformer_options` (created in the
wrapper, gone after the run), so a cached patched model re-queued or shared by two samplers never
carries state from one run into another.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace

import comfy.patcher_extension
import comfy.samplers
import torch

from ..core import reprompt
from ..core.calibration import RegionSet, find_matching
from ..core.guard import RESTART_STRATEGIES, GuardConfig, StabilityGuard, finite_or_none
from ..core.hooked import HookedRun
from ..core.region import StabilityRegion
from ..core.region_file import RegionFileError, load_region, read_settings
from ..core.report import RunReport
from ..core.settings import RunSettings
from . import _paths
from ._compat import executing_node_id, send_ui_event
from ._model_id import model_identity
from .reprompt_hooks import FirstCall, move_embeddings, with_apply_wrapper

KEY = "memorization_guard"
STEP_EVENT = "memguard.step"
DONE_EVENT = "memguard.done"
log = logging.getLogger(__name__)


@dataclass
class GuardRecord:
    """One finished run: what flows through MEMGUARD_REPORT sockets."""

    report: RunReport
    heat: torch.Tensor | None            # [B, *latent spatial] instability energy, CPU
    latent_shape: tuple[int, ...]        # per item
    measures: torch.Tensor               # [steps, quantities, B]: what calibration accumulates
    pixels_per_latent: int = 8           # image pixels per latent cell (SD's VAE: 8), for maps without an image


@dataclass
class GuardSpec:
    """What a patched model carries. Shared by its clones on purpose (see __deepcopy__)."""

    config: GuardConfig
    calibration: object | None = None    # RegionSet, a calibration plan (resolved by the sampler) or None
    scheduler: str = ""                  # known to the guarded KSampler only
    denoise: float | None = None
    records: deque = field(default_factory=lambda: deque(maxlen=8))   # its latest runs (bounded: a cached
                                                                      # patched model may run for days)
    live_events: bool = True
    lookup_cache: bool = True            # look for a matching region in the calibration folders

    def __deepcopy__(self, memo):  # ComfyUI 0.3.75 deep-copies model_options on clone()
        return self


class _RecentRuns:
    """Finished runs by a fingerprint of their output latent, so a report node can find the run
    that produced the LATENT it is given, whichever sampler node ran it. Bounded."""

    def __init__(self, size: int = 64):
        self.size, self.items = size, OrderedDict()

    @staticmethod
    def signature(samples: torch.Tensor) -> torch.Tensor:
        flat = samples.detach().float().reshape(samples.shape[0], -1).cpu()
        idx = torch.linspace(0, flat.shape[1] - 1, 64).long()
        return torch.cat([flat[:, idx], flat.mean(1, keepdim=True), flat.std(1, keepdim=True)], 1)

    def add(self, samples: torch.Tensor, record: GuardRecord) -> None:
        self.items[id(record)] = (tuple(samples.shape), self.signature(samples), record)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def find(self, samples: torch.Tensor) -> GuardRecord | None:
        sig = self.signature(samples)
        for shape, stored, record in reversed(self.items.values()):
            if shape == tuple(samples.shape) and torch.allclose(stored, sig, rtol=1e-2, atol=1e-3):
                return record
        return None


RECENT_RUNS = _RecentRuns()


def sampler_name(sampler) -> str:
    """The k-diffusion name of a SAMPLER object ("euler" for ComfyUI's "ddim": same arithmetic)."""
    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", type(sampler).__name__)
    return name[len("sample_"):] if name.startswith("sample_") else name


def patch_model(model, spec: GuardSpec):
    """A clone of `model` that runs the guard in every sampling run (KSampler, SamplerCustom, ...)."""
    m = model.clone()
    # guarding a guarded model (a patch before the Guarded KSampler, or two patches) replaces the
    # earlier guard: two would share one run slot and the outer one would see nothing
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY, _sampler_sample_wrapper(spec))
    if _post_cfg not in m.model_options.get("sampler_post_cfg_function", []):
        # keep ComfyUI's cfg=1 fast path: at cfg 1 there is no signal to read anyway
        m.set_model_sampler_post_cfg_function(_post_cfg, disable_cfg1_optimization=False)
    return m


# -- region resolution ---------------------------------------------------------------------------
_settings_cache: dict[str, tuple[float, RunSettings]] = {}


def _candidates():
    """(file name, settings) of every region in the calibration folders, cached by mtime."""
    for name in _paths.list_files():
        try:
            path = _paths.resolve(name)
            mtime = os.path.getmtime(path)
            cached = _settings_cache.get(path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, read_settings(path))
                _settings_cache[path] = cached
            yield name, cached[1]
        except (RegionFileError, OSError) as e:
            log.warning("Memorization Guard: skipping %s: %s", name, e)


def cached_region(settings: RunSettings) -> tuple[StabilityRegion, str] | None:
    name = find_matching(settings, _candidates())
    return (load_region(_paths.resolve(name)), name) if name else None


def resolve_region(spec: GuardSpec, settings: RunSettings) -> tuple[StabilityRegion | None, str]:
    if isinstance(spec.calibration, RegionSet):
        return spec.calibration.select(settings), "connected calibration"
    if hasattr(spec.calibration, "cached"):   # an auto-calibration plan: only its cache, no sampling in here
        region = spec.calibration.cached(settings)
        if region is not None:
            return region, "automatic calibration (cached)"
    if not spec.lookup_cache:
        return None, ""
    found = cached_region(settings)
    if found is not None:
        return found[0], f"calibration file {found[1]}"
    return None, ""


# -- one guarded run, for the hooks and the guarded SAMPLER ---------------------------------------
def start_guard(spec: GuardSpec, guider, sampler: str, sigmas: torch.Tensor, latent: torch.Tensor) -> StabilityGuard:
    """The guard for one sampling run: its settings key, its region, notes on where that came from."""
    cfg = float(getattr(guider, "cfg", 1.0))
    settings = RunSettings(
        model=model_identity(guider.model_patcher), sampler=sampler, scheduler=spec.scheduler,
        steps=len(sigmas) - 1, cfg=cfg, latent_shape=tuple(latent.shape[1:]), denoise=spec.denoise,
        sigmas=tuple(float(s) for s in sigmas))
    region, source = resolve_region(spec, settings)
    guard = StabilityGuard(settings, sigmas.detach().float().cpu(), latent.shape[0], region, spec.config)
    if region is None and cfg > 1.0 and spec.lookup_cache:
        guard.notes.append("no stability region for these settings: connect a calibration (Load Calibration "
                           f"or Calibrate) or save one to {_paths.save_dir()}; only raw norms are reported")
    elif source:
        guard.notes.append(f"region: {source}")
    return guard


def publish_run(spec: GuardSpec, guard: StabilityGuard, guider, samples: torch.Tensor, node: str | None,
                last_step_event: bool) -> GuardRecord:
    """Keep the finished run's record (for Memorization Report, found by its output latent) and tell
    the web extension; `samples` is the latent as the sampler node will output it."""
    base = guider.model_patcher.model
    record = GuardRecord(guard.report(), None if guard.heat is None else guard.heat.detach().float().cpu(),
                         tuple(samples.shape[1:]), guard.values[: guard.observed].clone(),
                         int(getattr(base.latent_format, "spacial_downscale_ratio", 8)))
    spec.records.append(record)
    RECENT_RUNS.add(samples, record)
    if spec.live_events and node is not None:
        if last_step_event and guard.observed:
            send_ui_event(STEP_EVENT, step_event(node, guard, guard.observed - 1))
        send_ui_event(DONE_EVENT, {"node": node, "summary": record.report.summary(),
                                   "flagged": [it.flagged for it in record.report.items]})
    return record


# -- the hooks -----------------------------------------------------------------------------------
def _sampler_sample_wrapper(spec: GuardSpec):
    def wrapper(executor, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar):
        name = sampler_name(executor.class_obj)
        guard = start_guard(spec, guider, name, sigmas, noise)
        run = HookedRun(guard, float(getattr(guider, "cfg", 1.0)), name)
        node = executing_node_id()

        def on_step(step, x0, x, total):
            run.on_step(step, x, x0)
            if spec.live_events and node is not None and guard.observed:
                send_ui_event(STEP_EVENT, step_event(node, guard, guard.observed - 1))
            if callback is not None:
                callback(step, x0, x, total)

        model_options = dict(extra_args.get("model_options", {}))
        first = None
        if guard.mitigating and spec.config.strategy in RESTART_STRATEGIES:
            first = FirstCall(noise.shape[0], float(sigmas[0]))   # what a second run re-prompts from
            model_options = with_apply_wrapper(model_options, first)
        model_options["transformer_options"] = {**model_options.get("transformer_options", {}), KEY: run}
        out = executor(guider, sigmas, {**extra_args, "model_options": model_options}, on_step,
                       noise, latent_image, denoise_mask, disable_pbar)
        out = run.finish(out)   # the last step's correction, if the strategy corrects latents
        if first is not None:
            out = _reprompt_flagged(spec, guard, first, name, executor, guider, sigmas,
                                    {**extra_args, "model_options": model_options}, callback,
                                    noise, latent_image, denoise_mask, disable_pbar, out)
        publish_run(spec, guard, guider, guider.model_patcher.model.process_latent_out(out), node, last_step_event=True)
        return out

    return wrapper


def _reprompt_flagged(spec, guard, first, name, executor, guider, sigmas, extra_args, callback, noise, latent_image,
                      denoise_mask, disable_pbar, out):
    """Strategy `reprompt`: move the flagged items' positive embeddings and run the sampler again
    (nodes/reprompt_hooks.py); their rows of the output come from the second run."""
    rows = reprompt.restart_rows(guard)
    if not rows:
        return out
    if not first.ready:
        guard.notes.append("reprompt: the conditioning is not one positive and one negative per image (area, "
                           "timestep-ranged or combined conds); the flagged items were left as sampled")
        return out
    target = reprompt.target_gap(guard.region)
    try:
        moved = move_embeddings(guider.model_patcher.model, first, rows, target)
    except RuntimeError as e:   # a model that cannot give gradients (e.g. weights kept as inference tensors)
        guard.notes.append(f"reprompt could not take gradients through this model ({e}); the flagged items were "
                           "left as sampled")
        return out
    first.substitute = {r: moved.context[k] for k, r in enumerate(rows)}
    check = StabilityGuard(guard.settings, torch.tensor(guard.sigmas), guard.batch, guard.region,
                           replace(spec.config, mode="detect"))
    second = HookedRun(check, float(getattr(guider, "cfg", 1.0)), name)

    def on_step(step, x0, x, total):
        second.on_step(step, x, x0)
        if callback is not None:   # the progress bar (and Cancel) follow the second run too
            callback(step, x0, x, total)

    model_options = dict(extra_args["model_options"])
    model_options["transformer_options"] = {**model_options["transformer_options"], KEY: second}
    redo = executor(guider, sigmas, {**extra_args, "model_options": model_options}, on_step,
                    noise, latent_image, denoise_mask, disable_pbar)
    redo = second.finish(redo)
    idx = torch.tensor(rows, device=out.device)
    out = out.clone()
    out[idx] = redo[idx].to(out.dtype)
    flagged_again = check.flagged().tolist()
    reprompt.record(guard, rows, moved, target, [flagged_again[r] for r in rows], guard.steps * guard.batch)
    return out


def _post_cfg(args):
    run = args["model_options"].get("transformer_options", {}).get(KEY)
    if run is None:
        return args["denoised"]
    has_uncond = args.get("uncond") is not None
    reevaluate = (lambda x_fix: _reevaluate(args, x_fix, has_uncond)) if run.guard.config.exact else None
    return run.on_eval(args["input"], float(args["sigma"].flatten()[0]), args["cond_denoised"],
                       args["uncond_denoised"] if has_uncond else None, args["denoised"], reevaluate)


def _reevaluate(args, x_fix, has_uncond):
    """The model's cond/uncond predictions at a corrected latent (one extra call, active steps only)."""
    conds = [args["cond"], args["uncond"] if has_uncond else None]
    out = comfy.samplers.calc_cond_batch(args["model"], conds, x_fix, args["sigma"], args["model_options"])
    return out[0], (out[1] if has_uncond else None)


def step_event(node: str, guard: StabilityGuard, step: int) -> dict:
    """A small per-step message for the live chart: the update norm of each item against its band."""
    values = guard.values[step, 1]
    band = None
    if guard.region is not None:
        lo, hi = guard.region.band("update", step, guard.config.detection.gamma)
        band = [finite_or_none(lo), finite_or_none(hi)]
    return {"node": node, "step": step, "steps": guard.steps, "update": [finite_or_none(v) for v in values],
            "band": band, "flags": [int(v) for v in guard.flags[step]],
            "active": [bool(v) for v in guard.active[step]]}
