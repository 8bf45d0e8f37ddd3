"""The testbed network: a small text-conditional UNet that predicts noise (epsilon).

It takes the VP latent z_t = x / sqrt(1 + sigma^2) (12 x 16 x 16, the pixel-unshuffled 32 x 32
image), a timestep in [0, 999] of SD's discrete schedule and a text context [B, L, D] from
`TextEncoder`, exactly as an SD UNet does, so ComfyUI can wrap it as an epsilon model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class TestbedConfig:
    __test__ = False  # not a pytest class

    latent_channels: int = 12
    channels: tuple[int, ...] = (40, 80, 128)
    attention_levels: tuple[int, ...] = (1, 2)
    vocab_size: int = 64
    max_tokens: int = 12
    context_dim: int = 128
    text_layers: int = 2
    heads: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "TestbedConfig":
        d = dict(d)
        for k in ("channels", "attention_levels"):
            d[k] = tuple(d[k])
        return TestbedConfig(**d)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TextEncoder(nn.Module):
    """Token ids [B, L] -> context [B, L, D]; a tiny transformer, like CLIP's text tower."""

    def __init__(self, cfg: TestbedConfig, position_init: str = "zeros"):
        super().__init__()
        d = cfg.context_dim
        self.token = nn.Embedding(cfg.vocab_size, d)
        # "zeros" is how the committed models before graded_p were trained: their positions stayed
        # at ~3 % of the token norm, so the encoder was nearly a bag of words ("a red circle on a blue
        # background" ~ "a blue circle on a red background"). "normal" starts them at the tokens' scale.
        if position_init not in ("zeros", "normal"):
            raise ValueError(f"position_init {position_init!r}: choose zeros or normal")
        init = torch.randn if position_init == "normal" else torch.zeros
        self.position = nn.Parameter(init(1, cfg.max_tokens, d))
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(self.token(ids) + self.position))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(temb, 2 * cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class AttentionBlock(nn.Module):
    """Self-attention over positions, then cross-attention to the text context."""

    def __init__(self, ch: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.out1 = nn.GroupNorm(8, ch), nn.Linear(ch, 3 * ch), nn.Linear(ch, ch)
        self.norm2, self.q, self.kv, self.out2 = nn.GroupNorm(8, ch), nn.Linear(ch, ch), nn.Linear(context_dim, 2 * ch), nn.Linear(ch, ch)

    def _attend(self, q, k, v):
        b, n, c = q.shape
        split = lambda t: t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        o = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return o.transpose(1, 2).reshape(b, n, c)

    def forward(self, x, context):
        b, c, h, w = x.shape
        t = self.norm1(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        x = x + self.out1(self._attend(q, k, v)).transpose(1, 2).reshape(b, c, h, w)
        t = self.norm2(x).flatten(2).transpose(1, 2)
        k, v = self.kv(context).chunk(2, dim=-1)
        return x + self.out2(self._attend(self.q(t), k, v)).transpose(1, 2).reshape(b, c, h, w)


class TestbedUNet(nn.Module):
    __test__ = False

    def __init__(self, cfg: TestbedConfig = TestbedConfig()):
        super().__init__()
        self.cfg = cfg
        ch, temb = cfg.channels, 4 * cfg.channels[0]
        self.time = nn.Sequential(nn.Linear(ch[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.text_pool = nn.Linear(cfg.context_dim, temb)
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.down, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skips, cur = [ch[0]], ch[0]
        for level, c in enumerate(ch):
            self.down.append(ResBlock(cur, c, temb))
            self.down_attn.append(AttentionBlock(c, cfg.context_dim, cfg.heads) if level in cfg.attention_levels else nn.Identity())
            cur = c
            skips.append(c)
            if level < len(ch) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1, self.mid_attn, self.mid2 = ResBlock(cur, cur, temb), AttentionBlock(cur, cfg.context_dim, cfg.heads), ResBlock(cur, cur, temb)
        self.up, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(ch))):
            c = ch[level]
            for _ in range(2):
                self.up.append(ResBlock(cur + skips.pop(), c, temb))
                self.up_attn.append(AttentionBlock(c, cfg.context_dim, cfg.heads) if level in cfg.attention_levels else nn.Identity())
                cur = c
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out, self.conv_out = nn.GroupNorm(8, ch[0]), nn.Conv2d(ch[0], cfg.latent_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:  # ComfyUI's BaseModel asks its diffusion model for this
        return self.conv_in.weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, **_ignored) -> torch.Tensor:
        dtype = self.conv_in.weight.dtype
        x, context = x.to(dtype), context.to(dtype)
        t = timesteps.reshape(-1).expand(x.shape[0]) if timesteps.numel() == 1 else timesteps.reshape(-1)
        emb = self.time(timestep_embedding(t, self.cfg.channels[0]).to(dtype)) + self.text_pool(context.mean(dim=1))
        h = self.conv_in(x)
        hs = [h]
        for level in range(len(self.cfg.channels)):
            h = self.down_attn[level](self.down[level](h, emb), context) if level in self.cfg.attention_levels else self.down[level](h, emb)
            hs.append(h)
            if level < len(self.cfg.channels) - 1:
                h = self.downsample[level](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb), context), emb)
        i = 0
        for n, level in enumerate(reversed(range(len(self.cfg.channels)))):
            for _ in range(2):
                h = self.up[i](torch.cat([h, hs.pop()], dim=1), emb)
                if level in self.cfg.attention_levels:
                    h = self.up_attn[i](h, context)
                i += 1
            if level > 0:
                h = self.upsample[n](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
