"""The guard inside ComfyUI's samplers: bit-identity in detect mode, every sampler and scheduler,
the model patch with other sampler nodes, the SAMPLER wrapper, and no state bleeding between runs."""

from __future__ import annotations

import importlib

import pytest
import torch
from graphs import MEMORIZED, NOVEL, demo_graph, guard_inputs
from harness import PromptExecutionError
from tiny_sd import CONTEXT_DIM

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc"]


def graph_start(text=MEMORIZED, batch=2) -> dict:
    return {
        "1": {"class_type": "MemGuardTestbedLoader", "inputs": {}},
        "2": {"class_type": "MemGuardTestbedTextEncode", "inputs": {"testbed": ["1", 1], "text": text}},
        "3": {"class_type": "MemGuardTestbedTextEncode", "inputs": {"testbed": ["1", 1], "text": ""}},
        "4": {"class_type": "MemGuardTestbedEmptyLatent", "inputs": {"batch_size": batch}},
    }


def ksampler(model, seed=3, steps=50, sampler="euler", scheduler="normal", cfg=7.5, cls="KSampler", **extra) -> dict:
    return {"class_type": cls, "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0, **extra}}


def patched_stock_ksampler(guard: dict, batch=2, seed=21, start: dict | None = None, calibration=("1", 2)) -> dict:
    """The model patch (with `guard`'s inputs) on a stock KSampler, its report and decoded images
    as outputs: "5" the KSampler, "6" the report, "7" the images. `start`: nodes "1"-"4" (model,
    prompts, latent) other than the demo testbed's, with the calibration at `calibration`."""
    g = graph_start(batch=batch) if start is None else dict(start)
    g["10"] = {"class_type": "MemGuardModelPatch",
               "inputs": {"model": ["1", 0], "calibration": list(calibration), **guard}}
    g["5"] = ksampler(["10", 0], seed=seed)
    g["6"] = {"class_type": "MemGuardReport", "inputs": {"samples": ["5", 0]}}
    g["7"] = {"class_type": "MemGuardTestbedDecode", "inputs": {"samples": ["5", 0], "upscale": 1}}
    g["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}
    g["9"] = {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}}
    return g


def shown(*nodes) -> dict:
    """Output nodes that make the given nodes run (ComfyUI executes only what an output needs)."""
    return {f"show{n}": {"class_type": "PreviewAny", "inputs": {"source": [n, 0]}} for n in nodes}


def latent(result, node, index=0):
    out = result.node_output(node)[index]
    return out["samples"]


# -- bit identity and coverage on a tiny SD1.x checkpoint ----------------------------------------
def sd_graph(ckpt, conditioning_node, width=CONTEXT_DIM["sd15"], batch=2, size=64):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": conditioning_node, "inputs": {"width": width, "tokens": 77, "value": 0.5}},
        "3": {"class_type": conditioning_node, "inputs": {"width": width, "tokens": 77, "value": 0.0}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
    }


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde"])
def test_detect_mode_equals_stock_ksampler_bit_for_bit(comfy_session, tiny_sd_ckpt, constant_conditioning, sampler):
    g = sd_graph(tiny_sd_ckpt, constant_conditioning)
    g["5"] = ksampler(["1", 0], steps=3, sampler=sampler, cfg=4.0)
    g["6"] = ksampler(["1", 0], steps=3, sampler=sampler, cfg=4.0, cls="MemGuardKSampler", **guard_inputs("detect"))
    g["7"] = {"class_type": "MemGuardDetector", "inputs": {"report": ["6", 1], "score": "first", "overlay_alpha": 0.5}}
    g["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 3]}}
    g.update(shown("5"))
    r = comfy_session.run_prompt(g)
    assert torch.equal(latent(r, "5"), latent(r, "6"))
    report = r.node_output("6")[1].report
    assert len(report.items) == 2 and report.steps_observed == 3
    assert all(it.verdict.startswith("unavailable: no stability region") for it in report.items)


@pytest.mark.parametrize("sampler,scheduler", [(s, "normal") for s in SAMPLERS] + [("euler", "karras"), ("euler", "simple")])
def test_every_listed_sampler_and_scheduler_runs(comfy_session, tiny_sd_ckpt, constant_conditioning, sampler, scheduler):
    g = sd_graph(tiny_sd_ckpt, constant_conditioning, batch=2)
    g["6"] = ksampler(["1", 0], steps=2, sampler=sampler, scheduler=scheduler, cfg=3.0, cls="MemGuardKSampler",
                      **guard_inputs("mitigate"))
    g["7"] = {"class_type": "MemGuardDetector", "inputs": {"report": ["6", 1], "score": "max", "overlay_alpha": 0.5}}
    g["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 4]}}
    r = comfy_session.run_prompt(g)
    report = r.node_output("6")[1].report
    assert report.steps_observed == 2 and len(report.items) == 2
    assert all(len(it.norms["update"]) == 2 and None not in it.norms["update"] for it in report.items)
    assert torch.isfinite(latent(r, "6")).all()


def test_v_prediction_model(comfy_session, tiny_sd_v_ckpt, constant_conditioning):
    g = sd_graph(tiny_sd_v_ckpt, constant_conditioning, width=CONTEXT_DIM["sd2_v"], batch=1)
    g["5"] = ksampler(["1", 0], steps=2, cfg=4.0)
    g["6"] = ksampler(["1", 0], steps=2, cfg=4.0, cls="MemGuardKSampler", **guard_inputs("detect"))
    g.update(shown("5"))
    g["9"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    g["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}
    r = comfy_session.run_prompt(g)
    assert torch.equal(latent(r, "5"), latent(r, "6"))
    assert r.node_output("6")[1].report.steps_observed == 2


def test_cfg_one_says_the_signal_is_unavailable(comfy_session):
    g = {**graph_start(), "5": ksampler(["1", 0], steps=10, cfg=1.0, cls="MemGuardKSampler",
                                          calibration=["1", 2], **guard_inputs("detect"))}
    g["6"] = {"class_type": "MemGuardTestbedDecode", "inputs": {"samples": ["5", 0], "upscale": 1}}
    g["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    # the shipped region is for cfg 7.5: at cfg 1 the mismatch is named ...
    with pytest.raises(PromptExecutionError, match="cfg: calibrated 7.5, this run 1"):
        comfy_session.run_prompt(g)
    # ... and without a region the verdict says why there is none, never "clean"
    del g["5"]["inputs"]["calibration"]
    report = comfy_session.run_prompt(g).node_output("5")[1].report
    assert all(it.verdict.startswith("unavailable: no classifier-free guidance") for it in report.items)
    assert not any(it.flagged for it in report.items)


# -- the testbed: real flags, real mitigation paths ----------------------------------------------
def test_batch_items_get_their_own_verdicts(comfy_session):
    g = demo_graph(MEMORIZED, batch=3)
    r = comfy_session.run_prompt(g)
    record = r.node_output("5")[1]
    assert len(record.report.items) == 3 and all(it.flagged for it in record.report.items)
    scores, flags, heat, overlay, curves, report_json, burnt = r.node_output("7")
    assert len(scores) == 3 and flags == [True, True, True]
    assert heat.shape == (3, 32, 32) and overlay.shape == (3, 32, 32, 3) and burnt.shape == (3, 32, 32)
    assert curves.shape[0] == 3 and '"verdict": "memorized"' in report_json
    assert float(heat.amax()) == pytest.approx(1.0)
    novel = comfy_session.run_prompt(demo_graph(NOVEL, batch=3)).node_output("7")
    assert novel[1] == [False, False, False] and float(novel[2].abs().max()) == 0.0


@pytest.mark.parametrize("strategy", ["unconditional", "orthogonal", "delayed_guidance", "stability", "repel"])
@pytest.mark.parametrize("exact", [True, False])
def test_mitigation_changes_only_flagged_items(comfy_session, strategy, exact):
    plain = comfy_session.run_prompt(demo_graph(NOVEL, batch=2, detector=False))
    mitigated = comfy_session.run_prompt(demo_graph(NOVEL, batch=2, mode="mitigate", strategy=strategy, exact=exact,
                                                    detector=False))
    assert torch.equal(latent(plain, "5"), latent(mitigated, "5"))  # nothing flagged, nothing touched
    memo_plain = comfy_session.run_prompt(demo_graph(MEMORIZED, batch=2, detector=False))
    memo = comfy_session.run_prompt(demo_graph(MEMORIZED, batch=2, mode="mitigate", strategy=strategy, exact=exact,
                                               detector=False))
    report = memo.node_output("5")[1].report
    assert all(it.flagged for it in report.items)
    assert not torch.equal(latent(memo_plain, "5"), latent(memo, "5"))
    assert (report.extra_model_calls > 0) == exact   # the redo / re-evaluation of the flagged step


def test_patch_with_ksampler_advanced_and_report_node(comfy_session):
    g = graph_start(batch=2)
    g["10"] = {"class_type": "MemGuardModelPatch", "inputs": {"model": ["1", 0], "calibration": ["1", 2],
                                                              **guard_inputs("detect")}}
    g["5"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["10", 0], "add_noise": "enable", "noise_seed": 3, "steps": 50, "cfg": 7.5, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
        "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    g["6"] = {"class_type": "MemGuardReport", "inputs": {"samples": ["5", 0]}}
    g["7"] = {"class_type": "MemGuardDetector", "inputs": {"report": ["6", 0], "score": "first", "overlay_alpha": 0.5}}
    g["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 3]}}
    g["11"] = ksampler(["1", 0], cls="MemGuardKSampler", calibration=["1", 2], **guard_inputs("detect"))
    g.update(shown("11"))
    r = comfy_session.run_prompt(g)
    assert r.node_output("7")[1] == [True, True]
    assert torch.equal(latent(r, "5"), latent(r, "11"))   # the patch and the guarded KSampler agree


def custom_advanced(model, sampler_node) -> dict:
    return {
        "20": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "21": {"class_type": "CFGGuider", "inputs": {"model": model, "positive": ["2", 0], "negative": ["3", 0], "cfg": 7.5}},
        "22": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 50, "denoise": 1.0}},
        "5": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["20", 0], "guider": ["21", 0],
                                                                "sampler": sampler_node, "sigmas": ["22", 0],
                                                                "latent_image": ["4", 0]}},
        "6": {"class_type": "MemGuardReport", "inputs": {"samples": ["5", 0]}},
        "7": {"class_type": "MemGuardDetector", "inputs": {"report": ["6", 0], "score": "first", "overlay_alpha": 0.5}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 3]}},
    }


def test_patch_with_sampler_custom_advanced(comfy_session):
    g = graph_start(batch=2)
    g["10"] = {"class_type": "MemGuardModelPatch", "inputs": {"model": ["1", 0], "calibration": ["1", 2],
                                                              **guard_inputs("detect")}}
    g["23"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g.update(custom_advanced(["10", 0], ["23", 0]))
    r = comfy_session.run_prompt(g)
    assert r.node_output("7")[1] == [True, True]


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "heun"])
def test_guarded_sampler_wrapper_is_exact_in_detect_mode(comfy_session, sampler):
    g = graph_start(batch=2)
    g["23"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    g["24"] = {"class_type": "MemGuardSampler", "inputs": {"sampler": ["23", 0], **guard_inputs("detect")}}
    if sampler == "euler":   # the shipped region is calibrated for euler only
        g["24"]["inputs"]["calibration"] = ["1", 2]
    g.update(custom_advanced(["1", 0], ["24", 0]))
    stock = graph_start(batch=2)
    stock["23"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    stock.update(custom_advanced(["1", 0], ["23", 0]))
    for k in ("6", "7", "8"):
        stock.pop(k)
    stock["9"] = {"class_type": "MemGuardTestbedDecode", "inputs": {"samples": ["5", 0], "upscale": 1}}
    stock["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}
    r, s = comfy_session.run_prompt(g), comfy_session.run_prompt(stock)
    assert torch.equal(latent(r, "5"), latent(s, "5"))
    assert r.node_output("7")[1] == ([True, True] if sampler == "euler" else [False, False])


def test_guarded_sampler_wrapper_mitigates_and_refuses_multistep(comfy_session):
    g = graph_start(batch=2)
    g["23"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["24"] = {"class_type": "MemGuardSampler", "inputs": {"sampler": ["23", 0], "calibration": ["1", 2],
                                                           **guard_inputs("mitigate")}}
    g.update(custom_advanced(["1", 0], ["24", 0]))
    report = comfy_session.run_prompt(g).node_output("6")[0].report
    assert all(it.steered_steps for it in report.items)
    g["23"]["inputs"]["sampler_name"] = "dpmpp_2m"
    with pytest.raises(PromptExecutionError, match="multistep sampler 'dpmpp_2m'"):
        comfy_session.run_prompt(g)


def test_guarded_sampler_wrapper_refuses_options_that_read_the_whole_schedule(comfy_session):
    import comfy.samplers

    pack = importlib.import_module(f"{comfy_session.pack_module.__name__}.nodes.guarded_sampler")
    changed = pack.schedule_dependent_options
    assert changed(comfy.samplers.ksampler("euler_ancestral", {"eta": 0.7, "s_noise": 0.9})) == []
    assert changed(comfy.samplers.ksampler("euler", {"s_churn": 0.0})) == []          # the default
    assert changed(comfy.samplers.ksampler("euler", {"s_churn": 1.0})) == ["s_churn=1.0"]   # divided by the step count
    # newer ComfyUI's SamplerLCM interpolates s_noise to s_noise_end over the schedule
    assert changed(comfy.samplers.ksampler("lcm", {"s_noise": 1.0, "s_noise_end": 1.0})) == []
    assert changed(comfy.samplers.ksampler("lcm", {"s_noise": 1.0, "s_noise_end": 0.5})) == ["s_noise_end=0.5"]
    with pytest.raises(ValueError, match="s_churn=1.0 of 'euler' depend on the whole schedule"):
        pack.guarded_sampler(comfy.samplers.ksampler("euler", {"s_churn": 1.0}), spec=None)


def test_guarded_sampler_wrapper_keeps_a_sampler_nodes_options_exactly(comfy_session):
    """SamplerEulerAncestral's eta and s_noise act per step: sliced, the run is the stock one."""
    options = {"eta": 0.7, "s_noise": 0.9}
    g = graph_start(batch=2)
    g["23"] = {"class_type": "SamplerEulerAncestral", "inputs": options}
    g["24"] = {"class_type": "MemGuardSampler", "inputs": {"sampler": ["23", 0], **guard_inputs("detect")}}
    g.update(custom_advanced(["1", 0], ["24", 0]))
    stock = graph_start(batch=2)
    stock["23"] = {"class_type": "SamplerEulerAncestral", "inputs": options}
    stock.update(custom_advanced(["1", 0], ["23", 0]))
    for k in ("6", "7", "8"):
        stock.pop(k)
    stock.update(shown("5"))
    r, s = comfy_session.run_prompt(g), comfy_session.run_prompt(stock)
    assert torch.equal(latent(r, "5"), latent(s, "5"))


# -- no bleed between runs or nodes ---------------------------------------------------------------
def test_no_state_bleeds_between_samplers_in_one_graph(comfy_session):
    together = graph_start(batch=2)
    together["5"] = ksampler(["1", 0], cls="MemGuardKSampler", calibration=["1", 2], **guard_inputs("mitigate"))
    together["6"] = ksampler(["1", 0], seed=4, cls="MemGuardKSampler", calibration=["1", 2], **guard_inputs("detect"))
    together["7"] = ksampler(["1", 0], seed=5)
    for k in ("5", "6", "7"):
        together[f"9{k}"] = {"class_type": "MemGuardTestbedDecode", "inputs": {"samples": [k, 0], "upscale": 1}}
        together[f"8{k}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"9{k}", 0]}}
    both = comfy_session.run_prompt(together)
    for k in ("5", "6", "7"):
        alone = {n: v for n, v in together.items() if n in ("1", "2", "3", "4", k, f"9{k}", f"8{k}")}
        single = comfy_session.run_prompt(alone)
        assert torch.equal(latent(both, k), latent(single, k)), k


def test_requeue_with_a_cached_patched_model_is_identical(comfy_session):
    g = graph_start(batch=2)
    g["10"] = {"class_type": "MemGuardModelPatch", "inputs": {"model": ["1", 0], "calibration": ["1", 2],
                                                              **guard_inputs("mitigate")}}
    g["5"] = ksampler(["10", 0], seed=3)
    g["6"] = {"class_type": "MemGuardTestbedDecode", "inputs": {"samples": ["5", 0], "upscale": 1}}
    g["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    first = latent(comfy_session.run_prompt(g, reuse_cache=True), "5").clone()
    g["5"]["inputs"]["seed"] = 4          # the patch node stays cached: same patched model object
    comfy_session.run_prompt(g, reuse_cache=True)
    g["5"]["inputs"]["seed"] = 3
    again = comfy_session.run_prompt(g, reuse_cache=True)
    assert torch.equal(first, latent(again, "5"))


def test_guarding_a_guarded_model_replaces_the_earlier_guard(comfy_session):
    alone = graph_start(batch=2)
    alone["5"] = ksampler(["1", 0], cls="MemGuardKSampler", calibration=["1", 2], **guard_inputs("mitigate"))
    alone.update(shown("5"))
    stacked = graph_start(batch=2)
    stacked["10"] = {"class_type": "MemGuardModelPatch", "inputs": {"model": ["1", 0], "calibration": ["1", 2],
                                                                    **guard_inputs("detect")}}
    stacked["5"] = ksampler(["10", 0], cls="MemGuardKSampler", calibration=["1", 2], **guard_inputs("mitigate"))
    stacked.update(shown("5"))
    a, s = comfy_session.run_prompt(alone), comfy_session.run_prompt(stacked)
    report = s.node_output("5")[1].report
    assert report.steps_observed == 50 and all(it.flagged and it.steered_steps for it in report.items)
    assert torch.equal(latent(a, "5"), latent(s, "5"))


def test_a_redone_step_gets_the_same_noise(comfy_session):
    import comfy.k_diffusion.sampling as kds

    replayed = importlib.import_module(f"{comfy_session.pack_module.__name__}.nodes.guarded_sampler")._ReplayedOnRedo
    noise = replayed(kds.default_noise_sampler(torch.zeros(2, 4, 8, 8), seed=5))
    first = noise(torch.tensor(2.0), torch.tensor(1.0))
    assert torch.equal(noise(torch.tensor(2.0), torch.tensor(1.0)), first)      # the redo of that step
    assert not torch.equal(noise(torch.tensor(1.0), torch.tensor(0.5)), first)  # the next step draws anew
