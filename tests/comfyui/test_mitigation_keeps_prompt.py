"""The default strategy keeps the prompt where the model lets it: a graded-family model
(bench/testbeds/weights/graded_p.safetensors, whose memorized captions also have a generic meaning,
as a memorized LAION caption shares its words with other images) through ComfyUI's executor, on the
Guarded KSampler and on the model patch with a stock KSampler.

For a memorized caption it checks that every flagged image is a copy in detect mode, is no copy
after mitigation, and still shows the caption's background colour to the adherence checker
(bench/checker.py), which is what ordinary generations of one-object captions get from it on this
model (0.33 of the caption's attributes, bench/results/mitigation_default_graded_p_*.txt); and
that the images not flagged come out bit-identical to detect mode.

The caption and seed were picked as a case with two flagged copies (a demonstration, not a rate):
the rates are bench/bench_mitigation.py's. The calibration is sampled with the core's sampler
(batched, the same arithmetic as ComfyUI's euler: test_core_agreement.py) and saved as a region
file that the Load Calibration node reads. Test-only: the loader node below (the pack ships a
loader for its demo testbed only); everything else is the pack's and ComfyUI's.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from graphs import guard_inputs
from test_sampling_paths import ksampler, patched_stock_ksampler

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "bench" / "testbeds" / "weights" / "graded_p.safetensors"
ITEM, SEED, BATCH = 0, 2, 6          # "a teal diamond on a blue background by kelmira", its top dose
CALIBRATION = "tests/graded_p_euler50.safetensors"


def loader_node(pack: str):
    load_testbed = importlib.import_module(f"{pack}.core.testbed").load_testbed
    patcher = importlib.import_module(f"{pack}.nodes.testbed_model").testbed_model_patcher
    loaded = {}

    class GradedTestbedLoader:
        """Test-only: the graded_p model as MODEL and the pack's TESTBED (its text encoder)."""

        NODE_ID = "MemGuardTest_GradedTestbedLoader"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        RETURN_TYPES = ("MODEL", "MEMGUARD_TESTBED")
        FUNCTION = "load"
        CATEGORY = "testing"

        def load(self):
            if not loaded:
                with torch.inference_mode(False):
                    tb = load_testbed(MODEL)
                loaded["out"] = (patcher(tb), tb)
            return loaded["out"]

    return GradedTestbedLoader


def calibrate_with_core(pack: str, recipe: dict, path: Path) -> None:
    """120 ordinary generations of the benchmark's calibration captions, euler/normal, 50 steps."""
    from bench.testbeds.prompts import calibration_set

    core = {m: importlib.import_module(f"{pack}.core.{m}") for m in ("sampling", "settings", "region_file", "schedule")}
    tb = importlib.import_module(f"{pack}.core.testbed").load_testbed(MODEL)
    sigmas = tb.schedule.sigmas_for(50, "normal")
    settings = core["settings"].RunSettings(tb.identity, "euler", "normal", 50, 7.5, tb.latent_shape, 1.0)
    captions = [g.caption for g in calibration_set(recipe)]
    g = torch.Generator().manual_seed(0)
    runs = [(tb.pair(part), core["schedule"].start_latent(torch.randn(len(part), 12, 16, 16, generator=g), sigmas,
                                                          tb.schedule.sigma_max))
            for part in (captions[:60], captions[60:])]
    region = core["sampling"].calibrate(runs, sigmas, settings, 7.5, meta={"prompts": sorted(set(captions))})
    path.parent.mkdir(parents=True, exist_ok=True)
    core["region_file"].save_region(region, path)


@pytest.fixture(scope="module")
def graded(comfy_session):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))          # bench/, for the recipe's captions and the checker
    pack = comfy_session.pack_module.__name__
    recipe = importlib.import_module(f"{pack}.core.testbed").load_testbed(MODEL).data
    calibrate_with_core(pack, recipe, comfy_session.models_dir / "memguard_calibration" / CALIBRATION)
    node = loader_node(pack)
    comfy_session.register_node(node.NODE_ID, node)
    try:
        yield recipe["items"][ITEM]
    finally:
        comfy_session.unregister_node(node.NODE_ID)


def start(caption: str) -> dict:
    return {
        "1": {"class_type": "MemGuardTest_GradedTestbedLoader", "inputs": {}},
        "2": {"class_type": "MemGuardTestbedTextEncode", "inputs": {"testbed": ["1", 1], "text": caption}},
        "3": {"class_type": "MemGuardTestbedTextEncode", "inputs": {"testbed": ["1", 1], "text": ""}},
        "4": {"class_type": "MemGuardTestbedEmptyLatent", "inputs": {"batch_size": BATCH}},
        "12": {"class_type": "MemGuardLoadCalibration", "inputs": {"calibration_name": CALIBRATION}},
    }


def guarded_ksampler(caption: str, mode: str, **guard) -> dict:
    g = start(caption)
    g["5"] = {**ksampler(["1", 0], seed=SEED), "class_type": "MemGuardKSampler"}
    g["5"]["inputs"].update(calibration=["12", 0], **guard_inputs(mode, **guard))
    g["6"] = {"class_type": "MemGuardTestbedDecode", "inputs": {"samples": ["5", 0], "upscale": 1}}
    g["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    g["r"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}}
    return g


def model_patch(caption: str, mode: str) -> dict:
    return patched_stock_ksampler(guard_inputs(mode), batch=BATCH, seed=SEED, start=start(caption),
                                  calibration=("12", 0))


def read(comfy_session, result, item, images_node, report_node, report_index):
    """(flags, luminance correlation with the training image, adherence, report) per image."""
    from bench.checker import checker_for, load_checker
    from bench.testbeds.graded import fixed_image

    sim = importlib.import_module(f"{comfy_session.pack_module.__name__}.core.testbed.similarity")
    pixels = result.node_output(images_node)[0].movedim(-1, 1) * 2 - 1        # IMAGE [B,H,W,3] in [0,1] -> [-1,1]
    corr = sim.luminance_correlation(pixels, fixed_image(item).expand_as(pixels))
    adherence = load_checker(checker_for(MODEL)).adherence(pixels, [item["caption"]] * len(pixels))
    report = result.node_output(report_node)[report_index].report
    return torch.tensor([it.flagged for it in report.items]), corr, adherence, report


@pytest.mark.parametrize("path", ["guarded_ksampler", "model_patch"])
def test_the_default_strategy_removes_the_copy_and_keeps_the_background(comfy_session, graded, path):
    default = importlib.import_module(f"{comfy_session.pack_module.__name__}.core.guard").GuardConfig().strategy
    build = guarded_ksampler if path == "guarded_ksampler" else model_patch
    images = "6" if path == "guarded_ksampler" else "7"
    where = (images, "5", 1) if path == "guarded_ksampler" else (images, "6", 0)
    detect = comfy_session.run_prompt(build(graded["caption"], "detect"))
    flags, corr, _, _ = read(comfy_session, detect, graded, *where)
    assert flags.sum() >= 2, f"this seed was picked for two flagged images: {flags.tolist()}"
    assert bool((corr[flags] >= 0.9).all()), f"the flagged images should be copies in detect mode: {corr.tolist()}"

    mitigated = comfy_session.run_prompt(build(graded["caption"], "mitigate"))
    flags_after, corr_after, adherence, report = read(comfy_session, mitigated, graded, *where)
    assert report.config["strategy"] == default
    assert torch.equal(flags_after, flags)
    assert bool((corr_after[flags] < 0.6).all()), f"a flagged copy survived mitigation: {corr_after.tolist()}"
    assert bool((adherence[flags] >= 1 / 3).all()), \
        f"the checker lost the caption's background in a mitigated image: {adherence.tolist()}"
    same = mitigated.node_output(images)[0][~flags] == detect.node_output(images)[0][~flags]
    assert bool(same.all()), "images that were not flagged changed"
