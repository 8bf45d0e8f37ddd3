"""Calibrate -> Save -> Load through the models folder, and the errors users will meet."""

from __future__ import annotations

import pytest
from graphs import NOVEL, demo_graph
from harness import PromptExecutionError, PromptValidationError

STEPS = 4


def calibrate_and_save(filename: str) -> dict:
    return {
        "1": {"class_type": "MemGuardTestbedLoader", "inputs": {}},
        "4": {"class_type": "MemGuardTestbedEmptyLatent", "inputs": {"batch_size": 1}},
        "10": {"class_type": "MemGuardCalibrate", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "seed": 0, "steps": STEPS, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "latent_image": ["4", 0], "denoise": 1.0, "prompts": "", "prompt_count": 6,
            "seeds_per_prompt": 2, "negative_prompt": ""}},
        "11": {"class_type": "MemGuardSaveCalibration", "inputs": {"calibration": ["10", 0], "filename": filename}},
    }


def with_loaded(graph: dict, name: str) -> dict:
    graph = dict(graph)
    graph["12"] = {"class_type": "MemGuardLoadCalibration", "inputs": {"calibration_name": name}}
    graph["5"] = {**graph["5"], "inputs": {**graph["5"]["inputs"], "calibration": ["12", 0]}}
    return graph


def test_calibrate_save_load_round_trip(comfy_session):
    from safetensors import safe_open

    comfy_session.run_prompt(calibrate_and_save("tests/round"))
    folder = comfy_session.models_dir / "memguard_calibration" / "tests"
    assert [p.name for p in folder.iterdir()] == ["round.safetensors"]
    with safe_open(str(folder / "round.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "memguard-stability-region"

    result = comfy_session.run_prompt(with_loaded(demo_graph(NOVEL, steps=STEPS), "tests/round.safetensors"))
    _, record = result.node_output("5")
    assert record.report.region is not None
    assert record.report.region["meta"]["trajectories"] == 12
    assert [it.verdict for it in record.report.items] == ["clean", "clean"]

    # a second save never overwrites the first
    comfy_session.run_prompt(calibrate_and_save("tests/round"))
    assert sorted(p.name for p in folder.iterdir()) == ["round.safetensors", "round_00001.safetensors"]


def test_other_settings_are_a_clear_error(comfy_session):
    comfy_session.run_prompt(calibrate_and_save("tests/mismatch"))
    graph = with_loaded(demo_graph(NOVEL, steps=STEPS + 2, cfg=5.0), "tests/mismatch.safetensors")
    with pytest.raises(PromptExecutionError) as e:
        comfy_session.run_prompt(graph)
    message = str(e.value)
    assert "calibrated for other settings" in message or "made for other settings" in message
    assert f"steps: calibrated {STEPS}, this run {STEPS + 2}" in message
    assert "cfg: calibrated 7.5, this run 5" in message


def test_missing_file_names_the_folders_searched(comfy_session):
    graph = with_loaded(demo_graph(NOVEL, steps=STEPS), "nope.safetensors")
    with pytest.raises(PromptValidationError) as e:
        comfy_session.run_prompt(graph)
    assert "nope.safetensors" in str(e.value)
    assert str(comfy_session.models_dir / "memguard_calibration") in str(e.value)


def test_auto_calibration_calibrates_once_per_setting_and_caches(comfy_session):
    graph = demo_graph(NOVEL, steps=STEPS)
    graph["13"] = {"class_type": "MemGuardAutoCalibration", "inputs": {
        "clip": ["1", 1], "prompts": "", "prompt_count": 3, "seeds_per_prompt": 2, "negative_prompt": "", "seed": 0}}
    graph["5"] = {**graph["5"], "inputs": {**graph["5"]["inputs"], "calibration": ["13", 0]}}
    auto = comfy_session.models_dir / "memguard_calibration" / "auto"
    before = set(auto.glob("*.safetensors")) if auto.exists() else set()
    first = comfy_session.run_prompt(graph).node_output("5")[1].report
    made = set(auto.glob("*.safetensors")) - before
    assert len(made) == 1 and first.region["meta"]["trajectories"] == 6
    stamp = next(iter(made)).stat().st_mtime_ns
    graph["5"]["inputs"]["seed"] = 4          # a new run with the same settings reuses the cached region
    comfy_session.run_prompt(graph)
    assert next(iter(made)).stat().st_mtime_ns == stamp and set(auto.glob("*.safetensors")) - before == made
    graph["5"]["inputs"]["cfg"] = 6.0         # a new setting calibrates again
    comfy_session.run_prompt(graph)
    assert len(set(auto.glob("*.safetensors")) - before) == 2


def test_empty_latents_are_sized_as_common_ksampler_sizes_them(comfy_session, monkeypatch):
    """Calibration must sample the latent the real run samples. Newer ComfyUI's
    fix_empty_latent_channels also takes the latent dict's downscale ratios (and resizes an empty
    latent made for another ratio); 0.3.75's takes neither. No newer ComfyUI runs here, so stand-ins
    with each signature replace the function: the one mock of ComfyUI in this file."""
    import importlib

    import comfy.sample
    import torch

    compat = importlib.import_module(f"{comfy_session.pack_module.__name__}.nodes._compat")
    latent = {"samples": torch.zeros(1, 4, 8, 8), "downscale_ratio_spacial": 16}
    calls = []

    def newer(model, latent_image, downscale_ratio_spacial=None, downscale_ratio_temporal=None):
        calls.append(("newer", downscale_ratio_spacial, downscale_ratio_temporal))
        return latent_image[..., ::2, ::2]

    def older(model, latent_image):
        calls.append(("older",))
        return latent_image

    monkeypatch.setattr(comfy.sample, "fix_empty_latent_channels", newer)
    assert compat.fix_empty_latent(None, latent).shape == (1, 4, 4, 4)
    monkeypatch.setattr(comfy.sample, "fix_empty_latent_channels", older)
    assert compat.fix_empty_latent(None, latent).shape == (1, 4, 8, 8)
    assert calls == [("newer", 16, None), ("older",)]
