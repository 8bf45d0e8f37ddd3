"""ComfyUI and the core agree: the testbed sampled by ComfyUI's KSampler with the guard patch gives
what the core's own guarded sampler gives for the same noise (detect and exact mitigation on
euler), and large latents run."""

from __future__ import annotations

import importlib

import pytest
import torch
from graphs import MEMORIZED, demo_graph


@pytest.mark.parametrize("mode,strategy", [("detect", "orthogonal"), ("mitigate", "unconditional"),
                                           ("mitigate", "orthogonal"), ("mitigate", "stability")])
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


def test_sdxl_sized_latents_run(comfy_session):
    graph = demo_graph(MEMORIZED, batch=1, steps=2, calibration=None, detector=False)
    graph["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}}
    result = comfy_session.run_prompt(graph)
    assert result.node_output("5")[0]["samples"].shape == (1, 12, 128, 128)
    assert result.node_output("5")[1].report.steps_observed == 2
