"""The guarded KSampler, the guard as a model patch for any sampler node, and its report reader."""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io, ui

import nodes as comfy_nodes  # ComfyUI's nodes.py (this pack's folder is reached by relative imports only)

from ..core.calibration import RegionSet
from ..core.guard import RESTART_STRATEGIES, GuardConfig
from ._inputs import REPORT, calibration_input, guard_config, guard_inputs
from .calibrating import CalibrationPlan
from .guard_hooks import RECENT_RUNS, GuardSpec, patch_model
from .guarded_sampler import guarded_sampler

CATEGORY = "Memorization Guard"


def _checked(calibration):
    if calibration is not None and not isinstance(calibration, (RegionSet, CalibrationPlan)):
        raise TypeError(f"calibration input got a {type(calibration).__name__}, expected a Memorization Guard "
                        "calibration (Load Calibration, Calibrate or Auto Calibration)")
    return calibration


def _resolve(calibration, model, steps, cfg, sampler_name, scheduler, latent_image, denoise):
    if isinstance(_checked(calibration), CalibrationPlan):
        return calibration.resolve(model, steps, cfg, sampler_name, scheduler, latent_image, denoise)
    return calibration


class GuardedKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardKSampler",
            display_name="Guarded KSampler",
            category=CATEGORY,
            description="KSampler that watches every step for the numerical instability of a memorized image "
                        "(Broken Memories) and, in mitigate mode, steers flagged images away. In detect mode its "
                        "latent is exactly KSampler's.",
            inputs=[
                io.Model.Input("model"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image"),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
                calibration_input(),
                *guard_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="LATENT"), REPORT.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise=1.0, calibration=None, mode=GuardConfig.mode, **thresholds) -> io.NodeOutput:
        config = guard_config(mode, **thresholds)
        calibration = _resolve(calibration, model, steps, cfg, sampler_name, scheduler, latent_image, denoise)
        spec = GuardSpec(config, calibration=calibration, scheduler=scheduler, denoise=denoise)
        (latent,) = comfy_nodes.common_ksampler(patch_model(model, spec), seed, steps, cfg, sampler_name, scheduler,
                                                positive, negative, latent_image, denoise=denoise)
        record = spec.records[-1] if spec.records else None
        if record is None:   # denoise 0: nothing was sampled
            raise ValueError("Nothing was sampled (denoise 0?), so there is nothing to report.")
        return io.NodeOutput(latent, record, ui=ui.PreviewText(record.report.summary()))


class GuardModelPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardModelPatch",
            display_name="Memorization Guard (model patch)",
            category=CATEGORY,
            description="Adds the memorization guard to a model, so any sampler node (KSampler Advanced, "
                        "SamplerCustom, SamplerCustomAdvanced, other packs) watches and steers with it. Read "
                        "each run's report with Memorization Report.",
            inputs=[io.Model.Input("model"), calibration_input(), *guard_inputs()],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, calibration=None, mode=GuardConfig.mode, **thresholds) -> io.NodeOutput:
        spec = GuardSpec(guard_config(mode, **thresholds), calibration=_checked(calibration))
        return io.NodeOutput(patch_model(model, spec))


class MemorizationReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardReport",
            display_name="Memorization Report",
            category=CATEGORY,
            description="The guard's report for the run that produced this latent (any sampler node using a "
                        "model with the Memorization Guard patch or the guarded SAMPLER).",
            inputs=[io.Latent.Input("samples")],
            outputs=[REPORT.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, samples) -> io.NodeOutput:
        record = RECENT_RUNS.find(samples["samples"])
        if record is None:
            raise ValueError("No guarded run produced this latent. Sample it with a model patched by "
                             "'Memorization Guard (model patch)' (or the Guarded KSampler / guarded SAMPLER), "
                             "and connect that sampler's output latent here.")
        return io.NodeOutput(record, ui=ui.PreviewText(record.report.summary()))


class GuardedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardSampler",
            display_name="Guarded Sampler (SAMPLER)",
            category=CATEGORY,
            description="Wraps a SAMPLER for SamplerCustom / SamplerCustomAdvanced and runs it one step at a time "
                        "with the guard in between: exact per-step detection and mitigation for single-step "
                        "samplers. Read the report with Memorization Report.",
            inputs=[io.Sampler.Input("sampler"), calibration_input(), *guard_inputs()],
            outputs=[io.Sampler.Output(display_name="sampler")],
        )

    @classmethod
    def execute(cls, sampler, calibration=None, mode=GuardConfig.mode, **thresholds) -> io.NodeOutput:
        spec = GuardSpec(guard_config(mode, **thresholds), calibration=_checked(calibration))
        if spec.config.mode == "mitigate" and spec.config.strategy in RESTART_STRATEGIES:
            raise ValueError(f"The guarded SAMPLER runs one step at a time and cannot sample a flagged image again, "
                             f"which strategy '{spec.config.strategy}' does. Use it with the Guarded KSampler or "
                             "'Memorization Guard (model patch)' (any sampler node), or pick another strategy here.")
        return io.NodeOutput(guarded_sampler(sampler, spec))


NODES = [GuardedKSampler, GuardModelPatch, MemorizationReport, GuardedSampler]
