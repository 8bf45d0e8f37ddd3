"""The whole story through ComfyUI's executor on the testbed: the detector flags the memorized
prompt and not the novel one, and mitigation removes the copy."""

from __future__ import annotations

import importlib

import torch
from graphs import MEMORIZED, NOVEL, demo_graph


def correlation_with_training_image(comfy_session, images):
    pack = comfy_session.pack_module.__name__
    dataset = importlib.import_module(f"{pack}.core.testbed.dataset")
    similarity = importlib.import_module(f"{pack}.core.testbed.similarity")
    item = next(it for it in dataset.special_items() if it.caption == MEMORIZED)
    reference = dataset.memorized_image(item)
    pixels = images.movedim(-1, 1) * 2 - 1              # ComfyUI IMAGE [B,H,W,3] in [0,1] -> [-1,1]
    return similarity.luminance_correlation(pixels, reference.expand_as(pixels))


def test_memorized_prompt_is_flagged_and_mitigation_removes_the_copy(comfy_session):
    detect = comfy_session.run_prompt(demo_graph(MEMORIZED, batch=3, seed=21))
    scores, flags = detect.node_output("7")[:2]
    copies = correlation_with_training_image(comfy_session, detect.node_output("6")[0])
    assert flags == [True, True, True]
    # not a near miss: the copies leave the band well beyond tau_mild (4.5), ordinary images stay well inside
    assert min(scores) > 6.0, scores
    assert bool((copies >= 0.9).all()), f"the testbed should copy its training image here: {copies}"

    novel = comfy_session.run_prompt(demo_graph(NOVEL, batch=3, seed=21))
    assert novel.node_output("7")[1] == [False, False, False]
    assert max(novel.node_output("7")[0]) < 3.0, novel.node_output("7")[0]

    mitigated = comfy_session.run_prompt(demo_graph(MEMORIZED, batch=3, seed=21, mode="mitigate"))
    after = correlation_with_training_image(comfy_session, mitigated.node_output("6")[0])
    assert bool((after < 0.9).all()), f"a copy survived mitigation: {after}"
    assert torch.isfinite(mitigated.node_output("5")[0]["samples"]).all()


def test_the_default_strategy_through_the_model_patch_and_a_stock_ksampler_removes_the_copy(comfy_session):
    """The pack's default strategy on a stock KSampler through the model patch: every flagged image
    steered, none still a copy (the testbed copies on every seed)."""
    from graphs import guard_inputs
    from test_sampling_paths import patched_stock_ksampler

    default = importlib.import_module(f"{comfy_session.pack_module.__name__}.core.guard").GuardConfig().strategy
    r = comfy_session.run_prompt(patched_stock_ksampler(guard_inputs("mitigate", strategy=default), batch=3))
    report = r.node_output("6")[0].report
    assert report.config["strategy"] == default == "repel"
    assert all(it.flagged and it.steered_steps for it in report.items)
    after = correlation_with_training_image(comfy_session, r.node_output("7")[0])
    assert bool((after < 0.9).all()), f"a copy survived mitigation: {after}"
