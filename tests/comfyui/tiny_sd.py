"""Tiny Stable-Diffusion-shaped checkpoints that ComfyUI loads with CheckpointLoaderSimple.

Built at test time with ComfyUI's own classes, so ComfyUI must already be imported (use it after
`ComfySession.start`):
- UNet: `model_channels=320` and the 768/1024 `context_dim` are what ComfyUI's model detection
  needs; everything else is cut down: one level, one res block, transformer depth 1, no middle
  block (about 19 M parameters). Detected as `SD15` (or `SD20`).
- VAE: TAESD-shaped, under `first_stage_model.` (ComfyUI detects it by `taesd_decoder.1.weight`).
- No text-encoder weights: CheckpointLoaderSimple returns clip=None (see harness.ZeroConditioning).
- Weights: explicitly random (ComfyUI's ops skip init), N(0, 1/fan_in) for matrices and kernels,
  1 for norm scales, 0 for biases; every tensor gets its own generator seeded from
  (seed, tensor name), so the file is identical on every machine and run. Saved as fp16
  safetensors (about 42 MB).

Variants:
- "sd15": SD1.x, eps-prediction (ComfyUI 0.3.75 has no way to detect v-prediction for an SD1.x
  checkpoint: `SD15.model_type` is always EPS. For SD1 v-prediction, add the core node
  ModelSamplingDiscrete(sampling="v_prediction") to the graph, as users of such checkpoints do).
- "sd2_v": SD2.x-shaped (context_dim 1024, linear transformer projections), detected as
  V_PREDICTION. ComfyUI's SD20 detection looks at the spread of
  `output_blocks.11.1.transformer_blocks.0.norm1.bias`, a layer that a one-level UNet does not
  have; the checkpoint carries that one tensor anyway (std 1 > ComfyUI's 0.09 threshold) and
  ComfyUI ignores it when loading the weights ("unet unexpected" in its log). Conditioning width
  is 1024 for this variant.
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

VARIANTS = {
    "sd15": {"context_dim": 768, "use_linear_in_transformer": False},
    "sd2_v": {"context_dim": 1024, "use_linear_in_transformer": True},
}
CONTEXT_DIM = {name: cfg["context_dim"] for name, cfg in VARIANTS.items()}
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
V_PRED_MARKER = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"

_built: dict[tuple[str, str, int], Path] = {}


def unet_config(variant: str) -> dict:
    """The config ComfyUI's detect_unet_config() derives from the tiny UNet's weights."""
    extra = VARIANTS[variant]
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "out_channels": 4,
        "model_channels": 320, "num_res_blocks": [1], "transformer_depth": [1],
        "transformer_depth_output": [1, 1], "channel_mult": [1], "transformer_depth_middle": -2,
        "use_temporal_resblock": False, "use_temporal_attention": False, **extra,
    }


def _init_tensor(name: str, shape, seed: int, dtype):
    import torch

    shape = tuple(shape)
    if len(shape) >= 2:
        gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=gen).mul_(fan_in**-0.5).to(dtype)
    if name.endswith(("bias", "vae_shift")):
        return torch.zeros(shape, dtype=dtype)
    return torch.ones(shape, dtype=dtype)  # norm scales, vae_scale


def tiny_sd_state_dict(variant: str = "sd15", seed: int = 0, dtype=None):
    """(state_dict, model_config) of a freshly initialised tiny checkpoint (fp32 by default)."""
    import comfy.model_detection
    import comfy.taesd.taesd
    import torch

    dtype = dtype or torch.float32
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {sorted(VARIANTS)}")
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config(variant))
    if model_config is None:
        raise RuntimeError(f"this ComfyUI does not recognise the tiny {variant} UNet config")
    # ComfyUI's own modules give the names and shapes; their (uninitialised) values are not used
    with torch.device("meta"):  # shapes only: nothing is allocated
        unet = model_config.get_model({}, device="meta").diffusion_model
        vae = comfy.taesd.taesd.TAESD()

    sd = {}
    for prefix, module in ((UNET_PREFIX, unet), (VAE_PREFIX, vae)):
        for name, tensor in module.state_dict().items():
            full = prefix + name
            sd[full] = _init_tensor(full, tensor.shape, seed, dtype)
    if variant == "sd2_v":
        gen = torch.Generator().manual_seed(seed)
        sd[V_PRED_MARKER] = torch.randn(320, generator=gen).to(dtype)
    return sd, model_config


def build_tiny_sd(directory: os.PathLike | str, variant: str = "sd15", seed: int = 0) -> Path:
    """Write (once per process and path) the tiny checkpoint into `directory`; return its path.

    The file is named `memguard-tiny-<variant>-s<seed>.safetensors`; pass its name to
    CheckpointLoaderSimple when `directory` is a ComfyUI checkpoints folder.
    """
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    path = directory / f"memguard-tiny-{variant}-s{seed}.safetensors"
    key = (str(directory.resolve()), variant, seed)
    if key in _built and path.exists():
        return path
    sd, _ = tiny_sd_state_dict(variant, seed, dtype=torch.float16)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    save_file(sd, str(tmp), metadata={"memguard_test_model": variant, "seed": str(seed)})
    os.replace(tmp, path)
    _built[key] = path
    return path
