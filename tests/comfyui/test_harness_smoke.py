"""The harness itself: the pack loads into a real ComfyUI, and a tiny graph samples and decodes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from harness import (
    PACK_DIR_NAME,
    REPO_ROOT,
    PromptExecutionError,
    PromptValidationError,
)
from tiny_sd import CONTEXT_DIM


def test_pack_imported_like_a_custom_node(comfy_session):
    import nodes

    pack_path = os.path.join(str(comfy_session.custom_nodes_dir), PACK_DIR_NAME)
    assert comfy_session.load_results == {pack_path: True}
    assert not [line for line in comfy_session.startup_log
                if PACK_DIR_NAME in line and ("IMPORT FAILED" in line or "Cannot import" in line)]
    assert Path(nodes.LOADED_MODULE_DIRS[PACK_DIR_NAME]).resolve() == REPO_ROOT
    pack = comfy_session.pack_module
    assert pack is not None and callable(pack.comfy_entrypoint)
    web = getattr(pack, "WEB_DIRECTORY", None)
    if web and (REPO_ROOT / web).is_dir():  # git keeps no empty folder: absent until it has files
        assert Path(nodes.EXTENSION_WEB_DIRS[PACK_DIR_NAME]).resolve() == (REPO_ROOT / web).resolve()

    # every node the extension declares is registered under its id
    extension = asyncio.run(pack.comfy_entrypoint())
    for node_cls in asyncio.run(extension.get_node_list()):
        node_id = node_cls.GET_SCHEMA().node_id
        assert nodes.NODE_CLASS_MAPPINGS.get(node_id) is node_cls, node_id


def test_tiny_checkpoints_load_as_sd_models(comfy_session, tiny_sd_ckpt, tiny_sd_v_ckpt):
    import comfy.model_base

    import nodes

    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(tiny_sd_ckpt)[:3]
    assert type(model.model.model_config).__name__ == "SD15"
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    assert clip is None and vae is not None

    model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint(tiny_sd_v_ckpt)[:3]
    assert type(model.model.model_config).__name__ == "SD20"
    assert model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    assert clip is None


def sampling_prompt(ckpt: str, conditioning_node: str, batch: int = 2) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": conditioning_node,
              "inputs": {"width": CONTEXT_DIM["sd15"], "tokens": 77, "value": 0.5}},
        "3": {"class_type": conditioning_node,
              "inputs": {"width": CONTEXT_DIM["sd15"], "tokens": 77, "value": 0.0}},
        "4": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "5": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "seed": 7, "steps": 2, "cfg": 2.0,
                         "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
                         "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def test_ksampler_vaedecode_through_the_executor(comfy_session, tiny_sd_ckpt,
                                                 constant_conditioning,
                                                 ui_events):
    import torch

    result = comfy_session.run_prompt(sampling_prompt(tiny_sd_ckpt, constant_conditioning))

    (image,) = result.node_output("6")
    assert tuple(image.shape) == (2, 64, 64, 3)
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    (latent,) = result.node_output("5")
    assert tuple(latent["samples"].shape) == (2, 4, 8, 8)

    previews = result.outputs["7"]["images"]
    assert len(previews) == 2 and all(p["type"] == "temp" for p in previews)
    for p in previews:  # written to the session's temp folder, not into the ComfyUI tree
        assert (comfy_session.temp_dir / p["subfolder"] / p["filename"]).is_file()

    events = [event for event, _ in result.events]
    assert "execution_success" in events
    assert {d["node"] for d in result.events_named("executed")} == {"7"}
    progress = [d for d in result.events_named("progress") if d["node"] == "5"]
    assert [d["value"] for d in progress][-1] == 2 and progress[-1]["max"] == 2
    assert ui_events.events_named("executing")[-1]["node"] is None  # the prompt finished


def test_invalid_prompt_is_reported(comfy_session):
    # 0.3.75: "Cannot execute because node NoSuchNode does not exist." (invalid_prompt);
    # 0.33: "Node 'NoSuchNode' not found. The custom node may not be installed." (missing_node_type)
    with pytest.raises(PromptValidationError, match="NoSuchNode") as info:
        comfy_session.run_prompt({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert info.value.error["type"] in ("invalid_prompt", "missing_node_type")


class _FailingImage:
    """Test-only node that raises, to check how execution errors surface."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self):
        raise ValueError("boom from the test node")


def test_node_failure_is_reported_with_its_traceback(comfy_session):
    comfy_session.register_node("MemGuardTest_FailingImage", _FailingImage)
    try:
        with pytest.raises(PromptExecutionError, match="boom from the test node") as info:
            comfy_session.run_prompt({
                "1": {"class_type": "MemGuardTest_FailingImage", "inputs": {}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            })
        assert "raise ValueError" in str(info.value)  # the node's traceback is in the message
    finally:
        comfy_session.unregister_node("MemGuardTest_FailingImage")
