"""API-format graphs the ComfyUI tests share (built from ComfyUI core nodes and this pack's)."""

from __future__ import annotations

MEMORIZED = "a orange cross on a purple background by zorvath"
NOVEL = "a green circle on a blue background"
GUARD_DEFAULTS = {"strategy": "repel", "exact": True, "tau_mild": 4.5, "tau_strong": 14.0,
                  "gamma": 3.0, "active_fraction": 0.3, "off_scale": -0.5, "false_flag_rate": 0.001}


def guard_inputs(mode="detect", **overrides) -> dict:
    return {"mode": mode, **GUARD_DEFAULTS, **overrides}


def demo_graph(text: str, *, mode="detect", batch=2, seed=3, steps=50, sampler="euler", scheduler="normal",
                  cfg=7.5, calibration=("1", 2), detector=True, **guard) -> dict:
    """Testbed -> Guarded KSampler -> Testbed Decode -> Memorization Detector -> previews."""
    g = {
        "1": {"class_type": "MemGuardTestbedLoader", "inputs": {}},
        "2": {"class_type": "MemGuardTestbedTextEncode", "inputs": {"testbed": ["1", 1], "text": text}},
        "3": {"class_type": "MemGuardTestbedTextEncode", "inputs": {"testbed": ["1", 1], "text": ""}},
        "4": {"class_type": "MemGuardTestbedEmptyLatent", "inputs": {"batch_size": batch}},
        "5": {"class_type": "MemGuardKSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": scheduler, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0, **guard_inputs(mode, **guard)}},
        "6": {"class_type": "MemGuardTestbedDecode", "inputs": {"samples": ["5", 0], "upscale": 1}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    if calibration is not None:
        g["5"]["inputs"]["calibration"] = list(calibration)
    if detector:
        g["7"] = {"class_type": "MemGuardDetector", "inputs": {"report": ["5", 1], "image": ["6", 0],
                                                               "score": "first", "overlay_alpha": 0.6}}
        g["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 3]}}
    return g
