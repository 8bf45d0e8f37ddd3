"""The project's memorizing testbed: a small text-to-image diffusion model trained in-repo.

    tb = load_testbed()                         # the committed weights, CPU, float32
    pair = tb.pair(["a red circle on a blue background by zorvath"])
    x = start_latent(tb.noise([7]), sigmas, tb.schedule.sigma_max)   # core.schedule

It works as an SD-style epsilon model on SD's discrete schedule: `denoise(x, sigma, context)`
returns the clean prediction in k-diffusion's x-space, and `unet(z, t, context)` is the raw
network that ComfyUI wraps.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..sampling import PairDenoiser, cfg_pair
from ..schedule import DiscreteSchedule
from . import latent
from .dataset import TrainingStream
from .model import TestbedConfig, TestbedUNet, TextEncoder
from .text import tokenize, unknown_words

WEIGHTS = Path(__file__).resolve().parent / "weights" / "testbed.safetensors"
FORMAT = "memguard-testbed"


class TestbedError(ValueError):
    pass


class Testbed:
    __test__ = False

    def __init__(self, unet: TestbedUNet, text: TextEncoder, vocab: list[str], identity: str, training: dict | None = None,
                 data: dict | None = None):
        self.unet, self.text, self.vocab, self.identity = unet, text, vocab, identity
        self.training = dict(training or {})   # how it was trained: seed, steps, batch (replays the stream)
        self.data = dict(data or {})           # the data recipe it was trained on
        self.config: TestbedConfig = unet.cfg
        self.schedule = DiscreteSchedule()
        self._null = None

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def text_device(self) -> torch.device:
        return next(self.text.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.latent_channels, 16, 16)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> torch.Tensor:
        """Captions -> context [B, L, D] (what a CONDITIONING carries for this model)."""
        # the text encoder's own device: ComfyUI may have moved the UNet to the GPU without it
        ids = tokenize(captions, self.vocab, self.config.max_tokens).to(self.text_device)
        return self.text(ids)

    def training_stream(self) -> TrainingStream:
        """The exact stream these weights were trained on, to replay (the benchmark's ground truth)."""
        return TrainingStream(int(self.training["seed"]), int(self.training["batch"]), self.data)

    def unknown_words(self, caption: str) -> list[str]:
        return unknown_words(caption, self.vocab)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # differentiable in the context (core/reprompt.py); the weights never need gradients
        s = sigma.float().view(-1, *([1] * (x.ndim - 1)))
        z = x.float() / (1 + s * s).sqrt()
        t = self.schedule.timestep(sigma.float().cpu()).to(x.device).float()
        eps = self.unet(z, t, context.to(x.device)).float()
        return (x.float() - s * eps).to(x.dtype)

    def pair(self, captions: list[str], negative: str = "") -> PairDenoiser:
        cond = self.encode(captions)
        uncond = self.encode([negative] * len(captions))
        return cfg_pair(self.denoise, cond, uncond)

    def noise(self, seeds: list[int]) -> torch.Tensor:
        """Unit Gaussian latents, one generator per seed (a seed gives the same image in any batch)."""
        out = [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(out).to(self.device) if out else torch.zeros(0, *self.latent_shape)

    @staticmethod
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return latent.decode(latents)


def load_testbed(path: str | Path | None = None, device: str | torch.device = "cpu") -> Testbed:
    path = Path(path) if path is not None else WEIGHTS
    if not path.is_file():
        raise TestbedError(f"testbed weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise TestbedError(f"{path} is not a readable safetensors file: {e}") from e
    if meta.get("format") != FORMAT:
        raise TestbedError(f"{path} is not a Memorization Guard testbed model (format {meta.get('format')!r})")
    cfg = TestbedConfig.from_dict(json.loads(meta["config"]))
    vocab = json.loads(meta["vocab"])
    unet, text = TestbedUNet(cfg), TextEncoder(cfg)
    unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
    text.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("text.")})
    unet.eval().requires_grad_(False).to(device)
    text.eval().requires_grad_(False).to(device)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return Testbed(unet, text, vocab, identity=f"testbed-{digest}", training=json.loads(meta.get("training", "{}")),
                   data=json.loads(meta.get("data", "{}")))
