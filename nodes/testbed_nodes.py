"""The zero-download demo: the project's own memorizing testbed model inside ComfyUI."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..core.calibration import RegionSet
from ..core.region_file import load_region
from ..core.testbed import WEIGHTS, Testbed, load_testbed
from ..core.testbed import latent as testbed_latent
from ._inputs import CALIBRATION, TESTBED
from .testbed_model import testbed_model_patcher

CATEGORY = "Memorization Guard/testbed"
REGION = WEIGHTS.parent / "testbed_region.safetensors"   # calibrated for the demo's settings
_loaded: dict[tuple[str, float], tuple[Testbed, object]] = {}


def shared_testbed() -> tuple[Testbed, object]:
    """The shipped testbed and its MODEL, loaded once per weights file (the loader node and the audit)."""
    key = (str(WEIGHTS), os.path.getmtime(WEIGHTS))
    if key not in _loaded:
        _loaded.clear()
        with torch.inference_mode(False):   # ordinary weights: the reprompt strategy takes gradients through them
            tb = load_testbed(WEIGHTS)
        _loaded[key] = (tb, testbed_model_patcher(tb))
    return _loaded[key]


class TestbedLoader(io.ComfyNode):
    __test__ = False

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardTestbedLoader",
            display_name="Load Memorizing Testbed",
            category=CATEGORY,
            description="The pack's own small text-to-image model (32x32 px, 4 M parameters) that really "
                        "memorizes ten training images: a demo that needs no downloads. Prompts such as "
                        "'a orange cross on a purple background by zorvath' reproduce a training image.",
            inputs=[],
            outputs=[io.Model.Output(display_name="model"), TESTBED.Output(display_name="testbed"),
                     CALIBRATION.Output(display_name="calibration",
                                        tooltip="Stability region for euler/normal, 50 steps, cfg 7.5, batch of 16x16 latents")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        tb, model = shared_testbed()
        return io.NodeOutput(model, tb, RegionSet([load_region(REGION)], [REGION.name]))


class TestbedTextEncode(io.ComfyNode):
    __test__ = False

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardTestbedTextEncode",
            display_name="Testbed Text Encode",
            category=CATEGORY,
            description="Encode a prompt for the testbed model (it knows a small vocabulary of colours, shapes and names).",
            inputs=[TESTBED.Input("testbed"),
                    io.String.Input("text", multiline=True, default="a orange cross on a purple background by zorvath")],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, testbed: Testbed, text: str) -> io.NodeOutput:
        return io.NodeOutput(encode_conditioning(testbed, text))


def check_vocabulary(testbed: Testbed, text: str) -> None:
    unknown = testbed.unknown_words(text)
    if unknown:
        known = ", ".join(w for w in testbed.vocab if not w.startswith("<"))
        raise ValueError(f"The testbed model does not know the word(s) {', '.join(sorted(set(unknown)))}. "
                         f"Its vocabulary: {known}.")


def encode_conditioning(testbed: Testbed, text: str) -> list:
    check_vocabulary(testbed, text)
    return [[testbed.encode([text]).cpu(), {}]]


class TestbedEmptyLatent(io.ComfyNode):
    __test__ = False

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardTestbedEmptyLatent",
            display_name="Testbed Empty Latent",
            category=CATEGORY,
            inputs=[io.Int.Input("batch_size", default=4, min=1, max=256)],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, batch_size: int) -> io.NodeOutput:
        return io.NodeOutput({"samples": torch.zeros(batch_size, 12, 16, 16)})


class TestbedDecode(io.ComfyNode):
    __test__ = False

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardTestbedDecode",
            display_name="Testbed Decode",
            category=CATEGORY,
            description="The testbed's exact, weightless decoder (a pixel shuffle), upscaled for viewing.",
            inputs=[io.Latent.Input("samples"),
                    io.Int.Input("upscale", default=8, min=1, max=32, tooltip="Nearest-neighbour enlargement of the 32x32 image.")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, samples: dict, upscale: int) -> io.NodeOutput:
        latent = samples["samples"]
        if latent.ndim != 4 or latent.shape[1] != 12:
            raise ValueError(f"Testbed Decode needs the testbed's 12-channel latents, got shape {tuple(latent.shape)}.")
        images = (testbed_latent.decode(latent.cpu()) + 1) / 2
        if upscale > 1:
            images = F.interpolate(images, scale_factor=upscale, mode="nearest")
        return io.NodeOutput(images.movedim(1, -1).contiguous())


NODES = [TestbedLoader, TestbedTextEncode, TestbedEmptyLatent, TestbedDecode]
