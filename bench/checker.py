"""Prompt adherence and a feature space for image quality, learned from the testbed's own renders.

No CLIP or Inception network can be downloaded here, but the procedural generator knows the truth
of every image it draws. `AttributeNet` is a small CNN trained on fresh renders of both caption
families (one and two objects over the cluttered background, bench/testbeds/graded.render) to say
which background colour an image has and which (colour, shape) objects it shows.

- adherence(images, captions): per image, the share of the caption's named attributes the checker
  finds: the background colour (arg-max of 12), each named object colour and each named shape
  (presence probability > 0.5). Captions outside the two families score NaN.
- features(images): object presence and shapes, colour coverage, contrast and sharpness (39 values),
  the space of the Frechet distance
  (bench/fidelity.py).

Training (about 12 minutes on 2 cores): `python bench/checker.py --out bench/testbeds/weights/checker.safetensors`.
Renders are augmented with what generations do to an image (colour cast, contrast, blur, noise),
so that the checker reads generations as it reads renders; its accuracy on held-out renders is
printed at the end, and the benchmark reports its adherence on ordinary generations beside that of
mitigated ones, so that its own bias is in both.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.testbeds.graded import render, two_object_combo  # noqa: E402
from core.testbed.dataset import COLORS, SHAPES  # noqa: E402

COLOR_NAMES = tuple(COLORS)
FORMAT = "memguard-checker"

_ONE = re.compile(r"^a (\w+) (\w+) on a (\w+) background( by \w+)?$")
_TWO = re.compile(r"^a (\w+) (\w+) and a (\w+) (\w+) on a (\w+) background( by \w+)?$")


def parse(caption: str) -> tuple[list[tuple[str, str]], str] | None:
    """The named objects and background of a caption of either family, else None."""
    m = _TWO.match(caption) or _ONE.match(caption)
    if m is None:
        return None
    g = m.groups()
    objects = [(g[0], g[1])] if len(g) == 4 else [(g[0], g[1]), (g[2], g[3])]
    bg = g[2] if len(g) == 4 else g[4]
    if bg not in COLORS or any(c not in COLORS or s not in SHAPES for c, s in objects):
        return None
    return objects, bg


PALETTE = torch.tensor([COLORS[c] for c in COLOR_NAMES]).view(1, len(COLORS), 3, 1, 1)
KERNEL = 0.03   # squared RGB distance scale of a pixel's likeness to a palette colour


def colour_maps(images: torch.Tensor) -> torch.Tensor:
    """[N, 12, H, W]: how much each pixel looks like each palette colour (1 at the colour itself)."""
    x = (images.float() + 1) / 2
    return torch.exp(-((x.unsqueeze(1) - PALETTE) ** 2).sum(2) / KERNEL)


class LearnedColours(nn.Module):
    """Per pixel, a distribution over the 12 palette colours, learnt from a model's generations:
    at cfg 7.5 a small model draws "blue" with its own cast and saturation, which the fixed
    likeness kernel (colour_maps) reads as no palette colour at all."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Sequential(nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(),
                                 nn.Conv2d(32, len(COLORS), 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.mix(images.float()), dim=1)


class AttributeNet(nn.Module):
    """Per palette colour: is there an object of that colour, and which shape(s) has it.

    One small CNN, shared by the 12 colours, looks at each colour's likeness map: the right
    inductive bias for "a red ring" (a ring-shaped blob in the red map), and it binds each shape
    to its colour. The background is the colour covering most of the image. The likeness maps are
    the fixed palette kernel (a checker trained on renders) or learnt (`learned_colours`, a checker
    trained on one model's generations)."""

    def __init__(self, learned_colours: bool = False):
        super().__init__()
        self.colours = LearnedColours() if learned_colours else None
        self.body = nn.Sequential(
            nn.Conv2d(1, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(24, 48, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(48, 48, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(96, 1 + len(SHAPES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(background scores [N, 12], object presence logits [N, 12], shape logits [N, 12, 6])."""
        m = colour_maps(images) if self.colours is None else self.colours(images)
        n, k, h, w = m.shape
        f = self.body(m.reshape(n * k, 1, h, w))
        out = self.head(torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)).view(n, k, -1)
        return m.mean(dim=(2, 3)), out[..., 0], out[..., 1:]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, FEATURES]: what the image shows (object presence, shapes, colour coverage, background)
        and how it is drawn (contrast, sharpness): the space of the Frechet distance."""
        cover, presence, shapes = self(images)
        p = torch.sigmoid(presence)
        shape_mass = (p.unsqueeze(-1) * torch.sigmoid(shapes)).sum(1)                 # [N, 6]
        x = images.float()
        lap = (4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:])
        drawn = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), lap.abs().mean(dim=(2, 3))], dim=1)   # [N, 9]
        return torch.cat([presence, shape_mass, cover, drawn], dim=1)


FEATURES = 12 + len(SHAPES) + 12 + 9


class Checker:
    """A trained AttributeNet with the adherence rule."""

    def __init__(self, net: AttributeNet, meta: dict):
        self.net, self.meta = net.eval().requires_grad_(False), meta

    @torch.no_grad()
    def predict(self, images: torch.Tensor, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(background index [N], object presence [N, 12], shape given colour [N, 12, 6]) as probabilities."""
        bg, pres, shp = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, len(COLOR_NAMES))], \
            [torch.zeros(0, len(COLOR_NAMES), len(SHAPES))]
        for i in range(0, images.shape[0], chunk):
            c, p, s = self.net(images[i:i + chunk])
            bg.append(c.argmax(1))
            pres.append(torch.sigmoid(p))
            shp.append(torch.sigmoid(s))
        return torch.cat(bg), torch.cat(pres), torch.cat(shp)

    @torch.no_grad()
    def features(self, images: torch.Tensor, chunk: int = 128) -> torch.Tensor:
        out = [self.net.features(images[i:i + chunk]) for i in range(0, images.shape[0], chunk)]
        return torch.cat(out) if out else torch.zeros(0, FEATURES)

    def adherence(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """[N] share of each caption's named attributes found (NaN for captions of neither family):
        the background colour, and per named object its colour present and that colour's shape."""
        bg, pres, shp = self.predict(images)
        out = torch.full((len(captions),), float("nan"))
        for i, cap in enumerate(captions):
            parsed = parse(cap)
            if parsed is None:
                continue
            objects, background = parsed
            checks = [int(bg[i]) == COLOR_NAMES.index(background)]
            for c, s in objects:
                k = COLOR_NAMES.index(c)
                checks += [bool(pres[i, k] > 0.5), bool(pres[i, k] > 0.5 and shp[i, k, SHAPES.index(s)] > 0.5)]
            out[i] = sum(checks) / len(checks)
        return out


WEIGHTS = Path(__file__).resolve().parent / "testbeds" / "weights"


def checker_for(weights: str | Path) -> Path:
    """The checker that reads this model's generations (bench/train_model_checker.py) if one was
    trained, else the render checker."""
    own = WEIGHTS / f"checker_{Path(weights).stem}.safetensors"
    return own if own.is_file() else WEIGHTS / "checker.safetensors"


def load_checker(path: str | Path) -> Checker:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checker weights not found: {path} (train them: python bench/checker.py --out {path})")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a checker file (format {meta.get('format')!r})")
        state = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta.get("info", "{}"))
    net = AttributeNet(learned_colours=info.get("trained_on") == "generations")
    net.load_state_dict(state)
    return Checker(net, info)


# ----------------------------------------------------------------------------------------------
# Training data: fresh renders of both families, labelled by the generator

def labelled_batch(n: int, g: torch.Generator, two_share: float = 0.5, style: str = "cluttered"):
    """(images [n, 3, 32, 32] in [-1, 1], bg labels [n], objects [n, 12, 6] multi-hot by colour and
    shape: the named objects, not the background, not the small clutter)."""
    names = list(COLOR_NAMES)
    n_two = int((torch.rand(n, generator=g) < two_share).sum())
    ones, bgs1 = [], []
    while len(ones) < n - n_two:
        fg, bg = (names[int(i)] for i in torch.randint(len(names), (2,), generator=g))
        if fg != bg:
            ones.append([(fg, SHAPES[int(torch.randint(len(SHAPES), (1,), generator=g))])])
            bgs1.append(bg)
    twos = [two_object_combo(g) for _ in range(n_two)]
    images = []
    if ones:
        images.append(render(ones, bgs1, g, style))
    if twos:
        images.append(render([[a, b] for a, b, _ in twos], [t[2] for t in twos], g, style))
    objects = ones + [[a, b] for a, b, _ in twos]
    bgs = bgs1 + [t[2] for t in twos]
    y_bg = torch.tensor([names.index(b) for b in bgs])
    y_obj = torch.zeros(n, len(names), len(SHAPES))
    for i, objs in enumerate(objects):
        for c, s in objs:
            y_obj[i, names.index(c), SHAPES.index(s)] = 1.0
    return torch.cat(images), y_bg, y_obj


def object_loss(presence: torch.Tensor, shapes: torch.Tensor, y_obj: torch.Tensor) -> torch.Tensor:
    """Which colours have an object (all 12), and that object's shape (only where one is)."""
    present = y_obj.amax(-1)
    loss = F.binary_cross_entropy_with_logits(presence, present)
    if bool((present > 0).any()):
        loss = loss + F.binary_cross_entropy_with_logits(shapes[present > 0], y_obj[present > 0])
    return loss


def augment(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What sampling does to an image: a colour cast, contrast, softness and grain (in [-1, 1])."""
    n = images.shape[0]
    x = (images + 1) / 2
    gain = 1 + 0.25 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    shift = 0.12 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    contrast = 1 + 0.6 * (torch.rand(n, 1, 1, 1, generator=g) - 0.3)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    x = x * gain + shift
    blur = torch.rand(n, generator=g) < 0.4
    if bool(blur.any()):
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k, groups=3)
    x = x + 0.04 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 2 - 1)


def evaluate(checker: Checker, seed: int, n: int = 2000, style: str = "cluttered") -> dict:
    g = torch.Generator().manual_seed(seed)
    images, y_bg, y_obj = labelled_batch(n, g, style=style)
    bg, pres, shp = checker.predict(images)
    present = y_obj.amax(-1) > 0
    found = (pres > 0.5).unsqueeze(-1) & (shp > 0.5)
    return {"bg_accuracy": round(float((bg == y_bg).float().mean()), 4),
            "object_recall": round(float(found[y_obj > 0].float().mean()), 4),
            "absent_colour_false_rate": round(float((pres[~present] > 0.5).float().mean()), 4),
            "wrong_shape_rate": round(float(found[present.unsqueeze(-1).expand_as(found) & (y_obj == 0)].float().mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = AttributeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps):
        images, _, y_obj = labelled_batch(args.batch, g)
        _, presence, shapes = net(augment(images, g))
        loss = object_loss(presence, shapes, y_obj)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - t0:.0f}s", flush=True)
    checker = Checker(net, {})
    held_out = evaluate(checker, seed=args.seed + 10_000)
    print("held-out renders:", json.dumps(held_out))
    info = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed, "held_out": held_out}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out),
              metadata={"format": FORMAT, "info": json.dumps(info)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
