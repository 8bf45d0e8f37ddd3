"""ComfyUI and the core agree: the testbed sampled by ComfyUI's KSampler with the guard patch gives
what the core's own guarded sampler gives for the same noise (detect and exact mitigation on
euler), and large latents run."""

from __future__ import annotations

import importlib

import pytest
import torch
from graphs import MEMORIZED, demo_graph


@pytest.mark.parametrize("mode,strategy", [("detect", "orthogonal"), ("mitigate", "unconditional"),
                                           ("mitigate", "orthogonal"), ("mitigate", "stability"),
                                           ("mitigate", "repel")])
def test_comfyui_and_core_sample_the_same(comfy_session, mode, strategy):
    import comfy.sample

    pack = comfy_session.pack_module.__name__
    core = {m: importlib.import_module(f"{pack}.core.{m}") for m in ("sampling", "guard", "settings", "region_file", "schedule")}
    testbed = importlib.import_module(f"{pack}.core.testbed")
    result = comfy_session.run_prompt(demo_graph(MEMORIZED, batch=3, seed=11, mode=mode, strategy=strategy, detector=False))
    comfy_latent = result.node_output("5")[0]["samples"]
    comfy_report = result.node_output("5")[1].report

    tb = testbed.load_testbed()
    noise = comfy.sample.prepare_noise(torch.zeros(3, 12, 16, 16), 11)
    sigmas = tb.schedule.sigmas_for(50, "normal")
    region = core["region_file"].load_region(testbed.WEIGHTS.parent / "testbed_region.safetensors")
    settings = core["settings"].RunSettings(tb.identity, "euler", "normal", 50, 7.5, tb.latent_shape, 1.0)
    x = core["schedule"].start_latent(noise, sigmas, tb.schedule.sigma_max)
    ours = core["sampling"].guarded_sample(tb.pair([MEMORIZED] * 3), x, sigmas, settings, 7.5,
                                           region=region, config=core["guard"].GuardConfig(mode=mode, strategy=strategy))
    assert [it.flagged for it in comfy_report.items] == [it.flagged for it in ours.report.items]
    assert torch.allclose(comfy_latent, ours.latent, atol=2e-3, rtol=1e-3)


class _ZeroLatent:
    """Test-only node: an empty testbed latent of any size, with no downscale ratio recorded (so no
    ComfyUI version resizes it for the model)."""

    NODE_ID = "MemGuardTest_ZeroLatent"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 16, "min": 1, "max": 1024})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, size):
        return ({"samples": torch.zeros(1, 12, size, size)},)


def test_sdxl_sized_latents_run(comfy_session):
    """A 128x128 latent (SDXL's size at 1024 px) samples through the guard."""
    comfy_session.register_node(_ZeroLatent.NODE_ID, _ZeroLatent)
    try:
        graph = demo_graph(MEMORIZED, batch=1, steps=2, calibration=None, detector=False)
        graph["4"] = {"class_type": _ZeroLatent.NODE_ID, "inputs": {"size": 128}}
        result = comfy_session.run_prompt(graph)
    finally:
        comfy_session.unregister_node(_ZeroLatent.NODE_ID)
    assert result.node_output("5")[0]["samples"].shape == (1, 12, 128, 128)
    assert result.node_output("5")[1].report.steps_observed == 2


def test_empty_latent_image_is_sized_by_the_testbeds_downscale_ratio(comfy_session):
    """The testbed's MODEL tells ComfyUI its latent has 2x2 pixels per cell: ComfyUI releases that
    size empty latents by the model's ratio (0.33+) make a 1024 px EmptyLatentImage 512x512 for it;
    0.3.75 keeps the 128x128 of an 8x VAE. The Guarded KSampler sees what KSampler would."""
    import inspect

    import comfy.sample

    import nodes

    pack = comfy_session.pack_module.__name__
    compat = importlib.import_module(f"{pack}.nodes._compat")
    testbed_nodes = importlib.import_module(f"{pack}.nodes.testbed_nodes")
    model = testbed_nodes.shared_testbed()[1]   # the MODEL that Load Memorizing Testbed outputs
    assert model.get_model_object("latent_format").spacial_downscale_ratio == 2
    (latent,) = nodes.EmptyLatentImage().generate(1024, 1024, 1)
    sized = "downscale_ratio_spacial" in inspect.signature(comfy.sample.fix_empty_latent_channels).parameters \
        and "downscale_ratio_spacial" in latent
    assert compat.fix_empty_latent(model, latent).shape == ((1, 12, 512, 512) if sized else (1, 12, 128, 128))
