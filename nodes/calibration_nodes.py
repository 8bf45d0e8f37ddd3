"""Calibration nodes: build a stability region, calibrate on first use, save and load regions."""

from __future__ import annotations

import os

import comfy.samplers
from comfy_api.latest import io, ui

from ..core.calibration import RegionSet
from ..core.region_file import EXTENSION, load_region, save_region
from . import _paths
from ._inputs import CALIBRATION, TESTBED
from .calibrating import CalibrationPlan, calibrate, default_prompts, encoder_for, parse_prompts

CATEGORY = "Memorization Guard/calibration"
ENCODER = io.MultiType.Input("clip", types=[io.Clip, TESTBED],
                             tooltip="The text encoder of the model (CLIP), or the testbed's.")


def _prompt_inputs() -> list[io.Input]:
    return [
        io.String.Input("prompts", multiline=True, default="",
                        tooltip="Ordinary prompts, one per line, of the kind you will generate. Empty: the shipped "
                                "pool of LAION captions (the testbed's own captions for the testbed)."),
        io.Int.Input("prompt_count", default=50, min=1, max=2000,
                     tooltip="How many prompts of the list to use (the method uses 50)."),
        io.Int.Input("seeds_per_prompt", default=2, min=1, max=64),
        io.String.Input("negative_prompt", default="", tooltip="Use the negative prompt you generate with."),
    ]


def _prompts(clip, text: str, count: int) -> list[str]:
    prompts = parse_prompts(text) or default_prompts(clip, count)
    return prompts[:count]


class Calibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardCalibrate",
            display_name="Calibrate Stability Region",
            category=CATEGORY,
            description="Sample ordinary prompts with exactly the settings you will generate with, and measure "
                        "the band their per-step norms stay in. About prompt_count x seeds_per_prompt samplings.",
            inputs=[
                io.Model.Input("model"),
                ENCODER,
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS),
                io.Latent.Input("latent_image", tooltip="Sets the resolution (its batch size is ignored)."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01),
                *_prompt_inputs(),
            ],
            outputs=[CALIBRATION.Output(display_name="calibration")],
        )

    @classmethod
    def execute(cls, model, clip, seed, steps, cfg, sampler_name, scheduler, latent_image, denoise, prompts,
                prompt_count, seeds_per_prompt, negative_prompt) -> io.NodeOutput:
        region = calibrate(model, encoder_for(clip), _prompts(clip, prompts, prompt_count), seeds_per_prompt, seed,
                           steps, cfg, sampler_name, scheduler, latent_image, denoise, negative_prompt)
        return io.NodeOutput(RegionSet([region], ["calibrated now"]),
                             ui=ui.PreviewText(f"calibrated: {region.settings.describe()}"))


class AutoCalibration(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardAutoCalibration",
            display_name="Auto Calibration",
            category=CATEGORY,
            description="Lets the Guarded KSampler calibrate itself on the first run of each new setting (model, "
                        "sampler, scheduler, steps, cfg, size, denoise) and reuse the result from "
                        "models/memguard_calibration/auto afterwards.",
            inputs=[ENCODER, *_prompt_inputs(),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False)],
            outputs=[CALIBRATION.Output(display_name="calibration")],
        )

    @classmethod
    def execute(cls, clip, prompts, prompt_count, seeds_per_prompt, negative_prompt, seed) -> io.NodeOutput:
        encoder_for(clip)   # fail early on a missing CLIP
        return io.NodeOutput(CalibrationPlan(clip, _prompts(clip, prompts, prompt_count), seeds_per_prompt, seed,
                                             negative_prompt))


class SaveCalibration(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardSaveCalibration",
            display_name="Save Calibration",
            category=CATEGORY,
            inputs=[CALIBRATION.Input("calibration"),
                    io.String.Input("filename", default="my_model_region",
                                    tooltip="Saved as <filename>.safetensors in the first models/memguard_calibration folder.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, calibration, filename) -> io.NodeOutput:
        if not isinstance(calibration, RegionSet):
            raise ValueError("Only a calibrated region can be saved (Calibrate's output). Automatic calibrations are "
                             f"already saved in {_paths.auto_dir()}.")
        name = filename.strip()
        if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise ValueError(f"Invalid filename {filename!r}: use a plain name, optionally with subfolders.")
        stem = name[: -len(EXTENSION)] if name.endswith(EXTENSION) else name
        saved = [str(save_region(region, _free_path(os.path.join(_paths.save_dir(), stem))))
                 for region in calibration.regions]
        return io.NodeOutput(ui=ui.PreviewText("saved " + ", ".join(saved)))


def _free_path(stem: str) -> str:
    """stem.safetensors, or stem_00001.safetensors ... if taken: never overwrite a calibration."""
    path, n = stem + EXTENSION, 0
    while os.path.exists(path):
        n += 1
        path = f"{stem}_{n:05d}{EXTENSION}"
    return path


class LoadCalibration(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardLoadCalibration",
            display_name="Load Calibration",
            category=CATEGORY,
            description="A stability region from models/memguard_calibration (or the folders set for "
                        "'memguard_calibration' in extra_model_paths.yaml).",
            inputs=[io.Combo.Input("calibration_name", options=_paths.list_files())],
            outputs=[CALIBRATION.Output(display_name="calibration")],
        )

    @classmethod
    def validate_inputs(cls, calibration_name):
        try:
            _paths.resolve(calibration_name)
        except FileNotFoundError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, calibration_name):
        try:
            return os.path.getmtime(_paths.resolve(calibration_name))
        except FileNotFoundError:
            return float("nan")

    @classmethod
    def execute(cls, calibration_name) -> io.NodeOutput:
        region = load_region(_paths.resolve(calibration_name))
        return io.NodeOutput(RegionSet([region], [calibration_name]),
                             ui=ui.PreviewText(region.settings.describe()))


class PromptList(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardPromptList",
            display_name="Prompt List",
            category=CATEGORY,
            description="One prompt per line, as a list: nodes after it run once per prompt (batch audits).",
            inputs=[io.String.Input("prompts", multiline=True, default="")],
            outputs=[io.String.Output(display_name="prompt", is_output_list=True)],
        )

    @classmethod
    def execute(cls, prompts) -> io.NodeOutput:
        lines = parse_prompts(prompts)
        if not lines:
            raise ValueError("Prompt List is empty: write one prompt per line.")
        return io.NodeOutput(lines)


NODES = [Calibrate, AutoCalibration, SaveCalibration, LoadCalibration, PromptList]
