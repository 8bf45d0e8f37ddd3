"""The `reprompt` strategy through ComfyUI: the Guarded KSampler and the model patch move a flagged
image's prompt embedding and sample it again, the second run is no copy of the training image and
is not flagged, unflagged images are untouched, and the gradients it needs flow through a
checkpoint that ComfyUI itself loaded (inference-mode weights, comfy.ops layers).

What these tests do not claim: that the caption survives. On the demo testbed and the graded
family it mostly does not (the benchmark's adherence checker, bench/bench_mitigation.py, reads
none of the caption's attributes in these images; the README's mitigation results)."""

from __future__ import annotations

import importlib

import pytest
import torch
from graphs import MEMORIZED, NOVEL, demo_graph, guard_inputs
from test_end_to_end import correlation_with_training_image
from test_sampling_paths import graph_start, latent, patched_stock_ksampler


def test_reprompt_in_the_guarded_ksampler_samples_flagged_images_again(comfy_session):
    detect = comfy_session.run_prompt(demo_graph(MEMORIZED, batch=3, seed=21, detector=False))
    copies = correlation_with_training_image(comfy_session, detect.node_output("6")[0])
    assert bool((copies >= 0.9).all()), copies

    r = comfy_session.run_prompt(demo_graph(MEMORIZED, batch=3, seed=21, mode="mitigate", strategy="reprompt",
                                            detector=False))
    report = r.node_output("5")[1].report
    assert all(it.flagged for it in report.items)
    after = correlation_with_training_image(comfy_session, r.node_output("6")[0])
    assert bool((after < 0.6).all()), f"still close to the training image: {after}"
    assert sum("the second run was not flagged" in n for n in report.notes) == 3, report.notes
    assert report.extra_model_calls > 50 * 3   # the descent and the second run are counted

    novel = comfy_session.run_prompt(demo_graph(NOVEL, batch=3, seed=21, mode="mitigate", strategy="reprompt",
                                                detector=False))
    plain = comfy_session.run_prompt(demo_graph(NOVEL, batch=3, seed=21, detector=False))
    assert torch.equal(latent(novel, "5"), latent(plain, "5"))   # nothing flagged, nothing touched


def test_reprompt_through_the_model_patch_and_a_stock_ksampler(comfy_session):
    r = comfy_session.run_prompt(patched_stock_ksampler(guard_inputs("mitigate", strategy="reprompt")))
    report = r.node_output("6")[0].report
    assert all(it.flagged for it in report.items)
    assert sum(n.startswith("item ") and "re-prompted" in n for n in report.notes) == 2, report.notes
    after = correlation_with_training_image(comfy_session, r.node_output("7")[0])
    assert bool((after < 0.6).all()), after


def test_the_guarded_sampler_refuses_reprompt_with_a_pointer(comfy_session):
    from harness import PromptExecutionError

    g = graph_start(batch=1)
    g["23"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["24"] = {"class_type": "MemGuardSampler", "inputs": {"sampler": ["23", 0], "calibration": ["1", 2],
                                                           **guard_inputs("mitigate", strategy="reprompt")}}
    g["25"] = {"class_type": "PreviewAny", "inputs": {"source": ["24", 0]}}
    with pytest.raises(PromptExecutionError, match="cannot sample a flagged image again"):
        comfy_session.run_prompt(g)


def test_embedding_gradients_flow_through_a_checkpoint_comfyui_loaded(comfy_session, tiny_sd_ckpt):
    import comfy.model_management

    import nodes as comfy_nodes

    hooks = importlib.import_module(f"{comfy_session.pack_module.__name__}.nodes.reprompt_hooks")
    with torch.inference_mode():   # as ComfyUI's executor loads it: inference-mode weights in comfy.ops layers
        patcher = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(tiny_sd_ckpt)[0]
        comfy.model_management.load_models_gpu([patcher])
        base = patcher.model
        layers = [m for m in base.diffusion_model.modules() if hasattr(m, "weight_function")]
        before = [(list(m.weight_function), list(m.bias_function)) for m in layers]
        sigma0 = float(base.model_sampling.sigma_max)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigma0
        g = torch.Generator().manual_seed(1)
        first = hooks.FirstCall(2, sigma0)
        first.chunks = {hooks.COND: {"x": x, "c_crossattn": torch.randn(2, 77, 768, generator=g), "c_concat": None,
                                     "kwargs": {}},
                        hooks.UNCOND: {"x": x, "c_crossattn": torch.zeros(2, 77, 768), "c_concat": None, "kwargs": {}}}
        moved = hooks.move_embeddings(base, first, [1], target=0.0)   # a target never reached: every step taken
    assert moved.context.shape == (1, 77, 768) and not moved.context.is_inference()
    assert int(moved.iterations[0]) > 0 and float(moved.gap_after[0]) < float(moved.gap_before[0])
    assert layers and [(list(m.weight_function), list(m.bias_function)) for m in layers] == before   # hooks removed
