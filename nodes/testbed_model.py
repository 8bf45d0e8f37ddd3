"""The testbed as a ComfyUI MODEL: an epsilon model on SD's schedule with a 12-channel latent."""

from __future__ import annotations

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base

from ..core.testbed import Testbed


class TestbedLatentFormat(comfy.latent_formats.LatentFormat):
    """A pixel-unshuffled 32x32 image: channel 4c+k is sub-pixel k of colour c."""

    __test__ = False
    latent_channels = 12
    scale_factor = 1.0
    spacial_downscale_ratio = 2     # 2x2 pixels per latent cell (ComfyUI's own attribute name)

    def __init__(self):
        # previews: average the four sub-pixels of each colour
        self.latent_rgb_factors = [[0.25 if c // 4 == rgb else 0.0 for rgb in range(3)] for c in range(12)]
        self.latent_rgb_factors_bias = None


class TestbedModelConfig(comfy.supported_models_base.BASE):
    __test__ = False
    unet_config = {}
    unet_extra_config = {}
    sampling_settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}
    latent_format = TestbedLatentFormat
    memory_usage_factor = 0.2
    supported_inference_dtypes = [comfy.model_management.torch.float32]


def testbed_model_patcher(tb: Testbed):
    """A ModelPatcher around the testbed's UNet (shared, not copied: the patcher never edits it
    in place except for weight patches, which it restores)."""
    config = TestbedModelConfig({})
    offload = comfy.model_management.unet_offload_device()
    base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS, device=offload,
                                      unet_model=lambda **_: tb.unet.to(offload))
    base.memguard_identity = tb.identity   # so regions made by the core's own sampler apply here
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=offload)
