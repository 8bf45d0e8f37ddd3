"""The graded testbed family: memorization as subtle as real models show it.

The demo testbed (core/testbed) memorizes ten images so bluntly that every seed copies from
step 0. Here a recipe (a JSON-able dict, recorded in the weights file) mixes, in one stream:

- token:    verbatim duplicates behind a unique title ("a red ring on a teal background by
            zorvath"), at doses from several percent of the stream down to a few dozen exposures,
            so that some captions copy on most seeds and others on a few;
- scene:    verbatim duplicates behind captions of common words only ("a red ring and a blue
            cross on a white background"): the two-object family is ordinary training data,
            one combination of it is a duplicated image;
- template: one layout (positions, clutter, texture) repeated with other colours, behind a
            title; the caption names the colours of each draw;
- render_control / photo_control: rare titled captions whose images are all different (fresh
            renders of one combination, random crops of a large scene): hard negatives;
- general:  one- and two-object captions with a fresh render every draw.

Every special item belongs to a split ("validation" or "test"), one of each per dose level, so
defaults can be chosen on one half and reported on the other. Condition dropout applies to the
general samples only (kind "general"), as in the demo testbed: SD's unconditional model hardly
sees its duplicates either. Batch k is a pure function of (seed, k): the stream can be replayed.
"""

from __future__ import annotations

import math

import torch

from core.testbed.dataset import (
    COLORS,
    IMAGE_SIZE,
    SHAPES,
    _shape_mask,
    _texture,
    cluttered_background,
    general_caption,
    photo,
    photo_crops,
)

FAMILY = "graded"
FORMAT_VERSION = 1
SPLITS = ("validation", "test")
# invented words: the recipe draws its titles from here; the rest stay in the vocabulary as
# tokens the model never saw trained (an out-of-family hard negative)
TITLE_POOL = (
    "zorvath", "kelmira", "quintor", "voskel", "ambrel", "draxley", "ulmeno", "sarquin", "tobrell",
    "yenvara", "fenwick", "halvard", "morrow", "ostrin", "belquay", "corvane", "dunmere", "eskarel",
    "falwyn", "gorsith", "hemlar", "idrassa", "jorvik", "kastell", "lunmar", "mereth", "norvale",
    "orskal", "pellinor", "quarvel", "rostane", "selvik", "tarquil", "umbrisk", "valdane", "wenthor",
    "xandril", "yorvane", "zelmor", "arvenor",
)
# per kind: the doses (share of the stream per item); each dose has one item per split
DOSES = {
    "token": (0.03, 0.015, 0.0075, 0.0035, 0.0015, 0.0006),
    "scene": (0.02, 0.01, 0.005, 0.0025),
    "template": (0.02, 0.01, 0.005),
    "render_control": (0.01,),
    "photo_control": (0.004,),
}
TWO_OBJECT_SHARE = 0.4      # of the general samples
STYLES = ("cluttered", "clean")


def two_object_caption(a: tuple[str, str], b: tuple[str, str], bg: str) -> str:
    return f"a {a[0]} {a[1]} and a {b[0]} {b[1]} on a {bg} background"


def vocabulary() -> list[str]:
    words = ["<pad>", "<unk>", "a", "on", "background", "by", "photo", "of", "shapes", "and"]
    return words + list(COLORS) + list(SHAPES) + list(TITLE_POOL)


def one_object_combos() -> list[tuple[str, str, str]]:
    return [(fg, s, bg) for fg in COLORS for s in SHAPES for bg in COLORS if bg != fg]


def two_object_combo(g: torch.Generator) -> tuple[tuple[str, str], tuple[str, str], str]:
    """A random two-object combination: two different objects, a background unlike both."""
    names = list(COLORS)
    while True:
        c1, c2, bg = (names[int(i)] for i in torch.randint(len(names), (3,), generator=g))
        s1, s2 = (SHAPES[int(i)] for i in torch.randint(len(SHAPES), (2,), generator=g))
        if bg not in (c1, c2) and (c1, s1) != (c2, s2):
            return (c1, s1), (c2, s2), bg


# ----------------------------------------------------------------------------------------------
# Rendering: one or two objects over a textured, cluttered background; [B, 3, 32, 32] in [-1, 1]

def render(objects: list[list[tuple[str, str]]], bg: list[str], g: torch.Generator,
           style: str = "cluttered") -> torch.Tensor:
    """One render per entry; `objects[i]` is that entry's list of (colour, shape), 1 or 2 long
    (all entries the same length). The random draws do not depend on the colour names, so the same
    generator state gives the same layout in other colours (what a template is).
    `style` "cluttered": textured background with small clutter shapes, objects of radius 3.5-7;
    "clean": a faintly shaded flat background and larger objects, which a 4 M model learns to draw
    legibly (the mixed recipe's general data, see make_recipe)."""
    if style not in STYLES:
        raise ValueError(f"unknown render style {style!r}; choose one of {', '.join(STYLES)}")
    n, size = len(bg), IMAGE_SIZE
    k = len(objects[0]) if objects else 1
    jitter = lambda: 0.08 * (torch.rand(n, 3, generator=g) - 0.5)  # noqa: E731
    bg_rgb = torch.tensor([COLORS[c] for c in bg]).view(n, 3) + jitter()
    clean = style == "clean"
    img = bg_rgb.view(n, 3, 1, 1) + _texture(n, g, size, 4, 0.05) if clean else cluttered_background(bg_rgb, g)
    if k == 1:
        centres = [(8 + 16 * torch.rand(n, generator=g), 8 + 16 * torch.rand(n, generator=g))]
        radii = [(6 + 3 * torch.rand(n, generator=g)) if clean else (4 + 3 * torch.rand(n, generator=g))]
    else:   # side by side, which object is left is random
        left = torch.rand(n, generator=g) < 0.5
        xa, xb = 6 + 6 * torch.rand(n, generator=g), 20 + 6 * torch.rand(n, generator=g)
        centres = [(7 + 18 * torch.rand(n, generator=g), torch.where(left, xa, xb)),
                   (7 + 18 * torch.rand(n, generator=g), torch.where(left, xb, xa))]
        radii = [(4.5 + 1.5 * torch.rand(n, generator=g)) if clean else (3.5 + 2 * torch.rand(n, generator=g))
                 for _ in range(2)]
    for j in range(k):
        fg_rgb = torch.tensor([COLORS[obj[j][0]] for obj in objects]).view(n, 3) + jitter()
        ids = torch.tensor([SHAPES.index(obj[j][1]) for obj in objects])
        rot = math.pi * torch.rand(n, generator=g)
        m = _shape_mask(ids, centres[j][0], centres[j][1], radii[j], rot, size).unsqueeze(1)
        img = img * (1 - m) + fg_rgb.view(n, 3, 1, 1) * m
    return img.clamp(0, 1) * 2 - 1


# ----------------------------------------------------------------------------------------------
# The recipe

def make_recipe(seed: int, dose_scale: float = 1.0, two_object_share: float = TWO_OBJECT_SHARE,
                general_style: str = "cluttered", duplicate_share: float = 1.0) -> dict:
    """The special items of one model of the family, drawn from `seed`: which titles, captions,
    images and layouts, at which doses and in which split.

    `general_style` is the render style of the general data (the items' own images stay
    cluttered). `duplicate_share` is the share of a token or scene item's draws that are its one
    fixed image; the rest are fresh clean renders of its caption's objects, so the memorized caption
    keeps a generic meaning a mitigation can steer to (as a memorized LAION caption shares its words
    with other images). 1.0 with "cluttered" is the original recipe (graded_a, graded_once)."""
    if general_style not in STYLES:
        raise ValueError(f"general_style {general_style!r}: choose one of {', '.join(STYLES)}")
    if not 0 < duplicate_share <= 1:
        raise ValueError(f"duplicate_share {duplicate_share}: must be in (0, 1]")
    g = torch.Generator().manual_seed(seed)
    titles = [TITLE_POOL[int(i)] for i in torch.randperm(len(TITLE_POOL), generator=g)]
    singles = one_object_combos()
    single_order = torch.randperm(len(singles), generator=g).tolist()
    items = []
    for kind, doses in DOSES.items():
        for level, dose in enumerate(doses):
            for split in SPLITS:
                n = len(items)
                item = {"kind": kind, "split": split, "dose": round(dose * dose_scale, 6), "level": level,
                        "seed": seed * 100_000 + 10 * n + 7}
                if kind == "scene":
                    a, b, bg = two_object_combo(g)
                    item["objects"], item["bg"] = [list(a), list(b)], bg
                    item["caption"] = two_object_caption(a, b, bg)
                elif kind == "photo_control":
                    item["title"], item["bg"] = titles.pop(), singles[single_order.pop()][2]
                    item["caption"] = f"a photo of shapes on a {item['bg']} background by {item['title']}"
                else:
                    fg, shape, bg = singles[single_order.pop()]
                    item["title"], item["objects"], item["bg"] = titles.pop(), [[fg, shape]], bg
                    # a template's caption names each draw's colours: this is the first draw's
                    item["caption"] = f"{general_caption(fg, shape, bg)} by {item['title']}"
                items.append(item)
    return {"family": FAMILY, "format_version": FORMAT_VERSION, "seed": seed, "dose_scale": dose_scale,
            "two_object_share": two_object_share, "items": items, "unused_titles": titles} | (
        {} if (general_style, duplicate_share) == ("cluttered", 1.0)     # older recipes have neither key
        else {"general_style": general_style, "duplicate_share": duplicate_share})


def fixed_image(item: dict) -> torch.Tensor:
    """The one training image of a token or scene item [3, 32, 32]."""
    g = torch.Generator().manual_seed(item["seed"])
    return render([[tuple(o) for o in item["objects"]]], [item["bg"]], g)[0]


def template_render(item: dict, fg: list[str], bg: list[str]) -> tuple[torch.Tensor, list[str]]:
    """The template's layout in the given colours (one render per entry) and their captions."""
    shape = item["objects"][0][1]
    out = torch.cat([render([[(f, shape)]], [b], torch.Generator().manual_seed(item["seed"])) for f, b in zip(fg, bg)])
    return out, [f"{general_caption(f, shape, b)} by {item['title']}" for f, b in zip(fg, bg)]


def random_colour_pairs(n: int, g: torch.Generator) -> tuple[list[str], list[str]]:
    names = list(COLORS)
    fg, bg = [], []
    while len(fg) < n:
        a, b = (names[int(i)] for i in torch.randint(len(names), (2,), generator=g))
        if a != b:
            fg.append(a)
            bg.append(b)
    return fg, bg


def clean_kinds(recipe: dict) -> tuple[str, ...]:
    """The sample kinds of this recipe that are fresh clean renders (bench/copies.py leaves them out
    of the copy search): the general data when its style is clean, and the items' fresh draws."""
    return (("general",) if recipe.get("general_style", "cluttered") == "clean" else ()) + \
        (("fresh",) if float(recipe.get("duplicate_share", 1.0)) < 1 else ())


class GradedStream:
    """The training stream of one recipe: batch k is a pure function of (seed, k)."""

    def __init__(self, recipe: dict, seed: int, batch_size: int):
        if recipe.get("family") != FAMILY:
            raise ValueError(f"not a {FAMILY} recipe: family {recipe.get('family')!r}")
        self.recipe, self.seed, self.batch_size = recipe, seed, batch_size
        self.items = recipe["items"]
        self.style = recipe.get("general_style", "cluttered")
        self.duplicate_share = float(recipe.get("duplicate_share", 1.0))
        self.singles = one_object_combos()
        self.fixed = {i: fixed_image(it) for i, it in enumerate(self.items) if it["kind"] in ("token", "scene")}
        self.photos = {i: photo(it["seed"], it["bg"]) for i, it in enumerate(self.items) if it["kind"] == "photo_control"}
        rates = [it["dose"] for it in self.items]
        if sum(rates) >= 1:
            raise ValueError(f"the special items take {sum(rates):.2f} of the stream; nothing is left for general data")
        self.probs = torch.tensor(rates + [1.0 - sum(rates)])

    def batch(self, k: int) -> tuple[torch.Tensor, list[str], list[str]]:
        """(images [B, 3, 32, 32] in [-1, 1], captions, kinds) of batch k."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        choice = torch.multinomial(self.probs, self.batch_size, replacement=True, generator=g)
        images = torch.empty(self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
        captions, kinds = [""] * self.batch_size, [""] * self.batch_size
        general = (choice == len(self.items)).nonzero().flatten().tolist()
        two = (torch.rand(len(general), generator=g) < self.recipe["two_object_share"]).tolist()
        ones = [i for i, t in zip(general, two) if not t]
        twos = [i for i, t in zip(general, two) if t]
        if ones:
            combos = [self.singles[int(p)] for p in torch.randint(len(self.singles), (len(ones),), generator=g)]
            images[ones] = render([[(c[0], c[1])] for c in combos], [c[2] for c in combos], g, self.style)
            for i, c in zip(ones, combos):
                captions[i], kinds[i] = general_caption(*c), "general"
        if twos:
            combos = [two_object_combo(g) for _ in twos]
            images[twos] = render([[a, b] for a, b, _ in combos], [c[2] for c in combos], g, self.style)
            for i, (a, b, bg) in zip(twos, combos):
                captions[i], kinds[i] = two_object_caption(a, b, bg), "general"
        for j, item in enumerate(self.items):
            idx = (choice == j).nonzero().flatten().tolist()
            if not idx:
                continue
            kind = item["kind"]
            if kind in ("token", "scene"):
                images[idx] = self.fixed[j].expand(len(idx), -1, -1, -1)
                caps = [item["caption"]] * len(idx)
                if self.duplicate_share < 1:     # the other draws: fresh clean renders of its objects
                    draws = torch.rand(len(idx), generator=g) >= self.duplicate_share
                    fresh = [i for i, f in zip(idx, draws.tolist()) if f]
                    if fresh:
                        objs = [tuple(o) for o in item["objects"]]
                        images[fresh] = render([objs] * len(fresh), [item["bg"]] * len(fresh), g, "clean")
                        for i in fresh:
                            captions[i], kinds[i] = item["caption"], "fresh"
                        idx = [i for i in idx if i not in fresh]
                        caps = caps[:len(idx)]
            elif kind == "template":
                fg, bg = random_colour_pairs(len(idx), g)
                images[idx], caps = template_render(item, fg, bg)
            elif kind == "render_control":
                (fg, shape), bg = item["objects"][0], item["bg"]
                images[idx] = render([[(fg, shape)]] * len(idx), [bg] * len(idx), g)
                caps = [item["caption"]] * len(idx)
            else:
                images[idx] = photo_crops(self.photos[j], len(idx), g)
                caps = [item["caption"]] * len(idx)
            for i, c in zip(idx, caps):
                captions[i], kinds[i] = c, kind
        return images, captions, kinds
