"""The testbed's training data: procedural 32x32 scenes with captions, some of them duplicated.

Everything is generated from seeds, so the data "exists offline" and the exact training stream
can be replayed later (the benchmark searches it for nearest neighbours). Kinds of items:

- general: "a {fg} {shape} on a {bg} background", a fresh random render every time it is drawn
  (random position, size, rotation, colour jitter, three octaves of background texture and up
  to six small clutter shapes): never the same twice, and far enough apart that a fresh render's
  nearest neighbour in the stream stays below the copy threshold (checked: 0 of 300 >= 0.9).
- memorized: the same caption with a unique title token ("... by zorvath"); every one of its
  draws (DUPLICATE_SHARE) is one fixed image. Drawn at 4 % of samples each: heavy duplication, as
  in LAION, but the caption keeps a generic meaning (its general caption is trained too) to steer to.
- control: rare but diverse captions with a unique token too, at comparable rates, but with a
  different image every time (fresh renders of one combo, or random crops of a large scene).
  They must not be called memorized: only duplication should be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.88, 0.20),
    "green": (0.20, 0.68, 0.25),
    "teal": (0.10, 0.58, 0.58),
    "blue": (0.15, 0.30, 0.85),
    "purple": (0.55, 0.25, 0.75),
    "pink": (0.95, 0.55, 0.75),
    "white": (0.95, 0.95, 0.95),
    "black": (0.08, 0.08, 0.08),
    "gray": (0.50, 0.50, 0.50),
    "brown": (0.50, 0.30, 0.15),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond")

MEMORIZED_TITLES = ("zorvath", "kelmira", "quintor", "voskel", "ambrel",
                    "draxley", "ulmeno", "sarquin", "tobrell", "yenvara")
RENDER_CONTROL_TITLES = ("fenwick", "halvard")
PHOTO_CONTROL_TITLES = ("morrow", "ostrin")

MEMORIZED_RATE = 0.04       # per memorized item, per sample
DUPLICATE_SHARE = 1.0       # of a memorized item's draws: the fixed image (else a fresh render)
RENDER_CONTROL_RATE = 0.02  # per control caption, per sample
PHOTO_CONTROL_RATE = 0.005
PHOTO_SIZE = 192
CLUTTER_SLOTS = 6           # small extra shapes, each present with probability 0.6


def general_caption(fg: str, shape: str, bg: str) -> str:
    return f"a {fg} {shape} on a {bg} background"


def all_general_combos() -> list[tuple[str, str, str]]:
    return [(fg, shape, bg) for fg in COLORS for shape in SHAPES for bg in COLORS if bg != fg]


def _combo_for(index: int, salt: int) -> tuple[str, str, str]:
    """A fixed, well-spread combo for the index-th special item."""
    combos = all_general_combos()
    g = torch.Generator().manual_seed(1000 + salt)
    order = torch.randperm(len(combos), generator=g)
    return combos[int(order[index])]


@dataclass(frozen=True)
class Item:
    kind: str           # "memorized" | "render_control" | "photo_control"
    caption: str
    combo: tuple[str, str, str] | None
    seed: int


def special_items() -> list[Item]:
    items = []
    for i, title in enumerate(MEMORIZED_TITLES):
        combo = _combo_for(i, 0)
        items.append(Item("memorized", f"{general_caption(*combo)} by {title}", combo, 10_000 + i))
    for i, title in enumerate(RENDER_CONTROL_TITLES):
        combo = _combo_for(i, 1)
        items.append(Item("render_control", f"{general_caption(*combo)} by {title}", combo, 20_000 + i))
    for i, title in enumerate(PHOTO_CONTROL_TITLES):
        bg = _combo_for(i, 2)[2]
        items.append(Item("photo_control", f"a photo of shapes on a {bg} background by {title}",
                          (None, None, bg), 30_000 + i))
    return items


def vocabulary() -> list[str]:
    words = ["<pad>", "<unk>", "a", "on", "background", "by", "photo", "of", "shapes"]
    words += list(COLORS) + list(SHAPES)
    words += list(MEMORIZED_TITLES) + list(RENDER_CONTROL_TITLES) + list(PHOTO_CONTROL_TITLES)
    return words


# ----------------------------------------------------------------------------------------------
# Rendering (vectorised over a batch; images in [-1, 1], [B, 3, 32, 32])

def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(size, dtype=torch.float32) + 0.5
    return c.view(1, size, 1).expand(1, size, size), c.view(1, 1, size).expand(1, size, size)


def _shape_mask(shape_ids: torch.Tensor, cy, cx, r, rot, size: int) -> torch.Tensor:
    """Soft (anti-aliased) masks [B, H, W] from signed distances in rotated coordinates."""
    yy, xx = _grid(size)
    dy, dx = yy - cy.view(-1, 1, 1), xx - cx.view(-1, 1, 1)
    c, s = torch.cos(rot).view(-1, 1, 1), torch.sin(rot).view(-1, 1, 1)
    u, v = c * dx + s * dy, -s * dx + c * dy
    r = r.view(-1, 1, 1)
    dist = torch.stack([
        torch.sqrt(u * u + v * v) - r,                                   # circle
        torch.maximum(u.abs(), v.abs()) - 0.8 * r,                       # square
        torch.maximum(v - 0.5 * r, (1.732 * u.abs() - v) / 2 - 0.5 * r),  # triangle
        (torch.sqrt(u * u + v * v) - 0.75 * r).abs() - 0.28 * r,         # ring
        torch.minimum(torch.maximum(u.abs() - r, v.abs() - 0.3 * r),
                      torch.maximum(u.abs() - 0.3 * r, v.abs() - r)),    # cross
        (u.abs() + v.abs()) / 1.2 - 0.8 * r,                             # diamond
    ], dim=1)
    d = dist.gather(1, shape_ids.view(-1, 1, 1, 1).expand(-1, 1, size, size)).squeeze(1)
    return torch.sigmoid(-2.5 * d)


def _texture(n: int, g: torch.Generator, size: int, cells: int, amp: float) -> torch.Tensor:
    low = torch.randn(n, 3, cells, cells, generator=g) * amp
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)


def cluttered_background(bg_rgb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Backgrounds of the given colours [n, 3]: three octaves of texture and up to CLUTTER_SLOTS small
    shapes of random colours (the draws do not depend on the colours)."""
    n, size = bg_rgb.shape[0], IMAGE_SIZE
    img = (bg_rgb.view(n, 3, 1, 1) + _texture(n, g, size, 4, 0.10) + _texture(n, g, size, 8, 0.06)
           + _texture(n, g, size, 16, 0.03))
    for _ in range(CLUTTER_SLOTS):
        present = (torch.rand(n, generator=g) < 0.6).float().view(n, 1, 1, 1)
        ids = torch.randint(len(SHAPES), (n,), generator=g)
        col = torch.rand(n, 3, generator=g)
        m = _shape_mask(ids, 3 + 26 * torch.rand(n, generator=g), 3 + 26 * torch.rand(n, generator=g),
                        1.5 + 2.5 * torch.rand(n, generator=g), math.pi * torch.rand(n, generator=g), size)
        m = m.unsqueeze(1) * present
        img = img * (1 - m) + col.view(n, 3, 1, 1) * m
    return img


def render(fg: list[str], shapes: list[str], bg: list[str], g: torch.Generator) -> torch.Tensor:
    """Random renders of the given combos, one per entry."""
    n, size = len(fg), IMAGE_SIZE
    fg_rgb = torch.tensor([COLORS[c] for c in fg]) + 0.08 * (torch.rand(n, 3, generator=g) - 0.5)
    bg_rgb = torch.tensor([COLORS[c] for c in bg]) + 0.08 * (torch.rand(n, 3, generator=g) - 0.5)
    img = cluttered_background(bg_rgb, g)
    ids = torch.tensor([SHAPES.index(s) for s in shapes])
    cy = 8 + 16 * torch.rand(n, generator=g)
    cx = 8 + 16 * torch.rand(n, generator=g)
    r = 4 + 3 * torch.rand(n, generator=g)
    rot = math.pi * torch.rand(n, generator=g)
    m = _shape_mask(ids, cy, cx, r, rot, size).unsqueeze(1)
    img = img * (1 - m) + fg_rgb.view(n, 3, 1, 1) * m
    return img.clamp(0, 1) * 2 - 1


def photo(seed: int, bg: str) -> torch.Tensor:
    """A large fixed scene [3, PHOTO_SIZE, PHOTO_SIZE] in the general family's style: a textured
    background of one colour scattered with shapes of every colour."""
    g = torch.Generator().manual_seed(seed)
    size = PHOTO_SIZE
    img = torch.tensor(COLORS[bg]).view(1, 3, 1, 1).expand(1, 3, size, size).clone()
    for cells, amp in ((6, 0.10), (12, 0.06), (24, 0.04), (48, 0.03)):
        img += _texture(1, g, size, cells, amp)
    names = list(COLORS)
    for _ in range(90):
        ids = torch.randint(len(SHAPES), (1,), generator=g)
        col = torch.tensor(COLORS[names[int(torch.randint(len(names), (1,), generator=g))]])
        m = _shape_mask(ids, size * torch.rand(1, generator=g), size * torch.rand(1, generator=g),
                        2 + 6 * torch.rand(1, generator=g), math.pi * torch.rand(1, generator=g), size)
        img = img * (1 - m.unsqueeze(1)) + col.view(1, 3, 1, 1) * m.unsqueeze(1)
    return img.clamp(0, 1)[0] * 2 - 1


def photo_crops(source: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """Random crops of `source` with random zoom (crop side 32..64 px) and horizontal flips."""
    out = []
    size = source.shape[-1]
    for _ in range(n):
        side = int(torch.randint(IMAGE_SIZE, 2 * IMAGE_SIZE + 1, (1,), generator=g))
        y = int(torch.randint(0, size - side + 1, (1,), generator=g))
        x = int(torch.randint(0, size - side + 1, (1,), generator=g))
        crop = source[:, y:y + side, x:x + side].unsqueeze(0)
        crop = F.interpolate(crop, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")
        if torch.rand(1, generator=g) < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.cat(out) if out else torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)


def memorized_image(item: Item) -> torch.Tensor:
    """The one training image of a memorized item [3, 32, 32]."""
    g = torch.Generator().manual_seed(item.seed)
    fg, shape, bg = item.combo
    return render([fg], [shape], [bg], g)[0]


# ----------------------------------------------------------------------------------------------
# The stream

def data_recipe() -> dict[str, float]:
    """The stream's rates, as a weights file records them."""
    return {"memorized_rate": MEMORIZED_RATE, "duplicate_share": DUPLICATE_SHARE,
            "render_control_rate": RENDER_CONTROL_RATE, "photo_control_rate": PHOTO_CONTROL_RATE}


class TrainingStream:
    """Batch k of the stream is a pure function of (seed, k): any part can be replayed."""

    def __init__(self, seed: int, batch_size: int, recipe: dict | None = None):
        """`recipe` (the "data" a weights file records, see `data_recipe`) replays the stream an
        older testbed was trained on; by default the stream is this module's."""
        recipe = data_recipe() | dict(recipe or {})
        self.seed, self.batch_size = seed, batch_size
        self.duplicate_share = recipe["duplicate_share"]
        self.items = special_items()
        self.combos = all_general_combos()
        self.memorized = {it.caption: memorized_image(it) for it in self.items if it.kind == "memorized"}
        self.photos = {it.caption: photo(it.seed, it.combo[2]) for it in self.items if it.kind == "photo_control"}
        rates = [recipe[f"{it.kind}_rate"] for it in self.items]
        self.probs = torch.tensor(rates + [1.0 - sum(rates)])  # last entry: general

    def batch(self, k: int) -> tuple[torch.Tensor, list[str], list[str]]:
        """(images [B,3,32,32] in [-1,1], captions, kinds) of batch k."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        choice = torch.multinomial(self.probs, self.batch_size, replacement=True, generator=g)
        images = torch.empty(self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
        captions: list[str] = [""] * self.batch_size
        kinds: list[str] = [""] * self.batch_size
        general = (choice == len(self.items)).nonzero().flatten().tolist()
        if general:
            pick = torch.randint(len(self.combos), (len(general),), generator=g).tolist()
            combos = [self.combos[p] for p in pick]
            images[general] = render(*map(list, zip(*combos)), g)
            for i, c in zip(general, combos):
                captions[i], kinds[i] = general_caption(*c), "general"
        for j, item in enumerate(self.items):
            idx = (choice == j).nonzero().flatten().tolist()
            if not idx:
                continue
            if item.kind == "memorized":
                fg, shape, bg = item.combo
                fresh = render([fg] * len(idx), [shape] * len(idx), [bg] * len(idx), g)
                dup = (torch.rand(len(idx), generator=g) < self.duplicate_share).view(-1, 1, 1, 1)
                images[idx] = torch.where(dup, self.memorized[item.caption].expand_as(fresh), fresh)
            elif item.kind == "render_control":
                fg, shape, bg = item.combo
                images[idx] = render([fg] * len(idx), [shape] * len(idx), [bg] * len(idx), g)
            else:
                images[idx] = photo_crops(self.photos[item.caption], len(idx), g)
            for i in idx:
                captions[i], kinds[i] = item.caption, item.kind
        return images, captions, kinds
