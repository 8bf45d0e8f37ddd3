"""Evaluation prompts for a graded-family model, per split: who asks what, with which seed.

Every generation is a `Gen` with its prompt kind. Splits share no special item, no ordinary
caption and no seed with each other or with the calibration set, so a default chosen on
"validation" is reported on "test" untouched. What a generation *is* (a copy or not) is not
decided here but measured against the training stream (bench/copies.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.testbed.dataset import COLORS, SHAPES, general_caption

from .graded import SPLITS, one_object_combos, random_colour_pairs, two_object_caption, two_object_combo

# prompt kinds, in the order the tables print them
MEMORIZED_KINDS = ("token", "scene", "template")
NEAR_KINDS = ("near_token_drop", "near_token_swap", "near_scene_swap", "near_scene_drop")
ORDINARY_KINDS = ("novel_one", "novel_two", "render_control", "photo_control", "unseen_title", "out_of_family")
# the kinds whose captions were never duplicated nor titled at all: where ordinary generations
# reach, which places the partial-copy threshold (an untrained title can still call up a copy)
REFERENCE_KINDS = ("novel_one", "novel_two", "render_control", "photo_control", "out_of_family")
SEED_BASE = {"calibration": 100_000, "validation": 200_000, "test": 300_000}


@dataclass(frozen=True)
class Gen:
    caption: str
    seed: int
    kind: str                 # one of the *_KINDS above, or "calibration"
    item: int = -1            # the recipe item it derives from (-1: none)
    level: int = -1           # that item's dose level (0: the highest dose)


def _ordinary_captions(recipe: dict, n_one: int, n_two: int, part: int) -> tuple[list[str], list[str]]:
    """Disjoint blocks (part 0 calibration, 1 validation, 2 test) of ordinary captions that no
    special item uses."""
    special = {it["caption"] for it in recipe["items"]}
    special |= {general_caption(it["objects"][0][0], it["objects"][0][1], it["bg"])
                for it in recipe["items"] if it["kind"] in ("token", "template", "render_control")}
    g = torch.Generator().manual_seed(recipe["seed"] * 7 + 3)
    combos = one_object_combos()
    ones = [general_caption(*combos[i]) for i in torch.randperm(len(combos), generator=g).tolist()]
    ones = [c for c in ones if c not in special]
    twos: list[str] = []
    while len(twos) < 3 * n_two:
        c = two_object_caption(*two_object_combo(g))
        if c not in special and c not in twos:
            twos.append(c)
    return ones[part * n_one:(part + 1) * n_one], twos[part * n_two:(part + 1) * n_two]


def calibration_set(recipe: dict, n_one: int = 36, n_two: int = 24, seeds: int = 2) -> list[Gen]:
    """Ordinary captions of both general families, `seeds` seeds each."""
    ones, twos = _ordinary_captions(recipe, n_one, n_two, 0)
    base = SEED_BASE["calibration"]
    return [Gen(c, base + seeds * i + s, "calibration") for i, c in enumerate(ones + twos) for s in range(seeds)]


def _swap_colour(caption: str, old: str, g: torch.Generator, avoid: set[str]) -> str:
    names = [c for c in COLORS if c not in avoid]
    new = names[int(torch.randint(len(names), (1,), generator=g))]
    words = caption.split()
    words[words.index(old)] = new
    return " ".join(words)


def split_set(recipe: dict, split: str, seeds: int = 6, near_seeds: int = 2, control_seeds: int = 6,
              n_one: int = 40, n_two: int = 30) -> list[Gen]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    part = 1 + SPLITS.index(split)
    base = SEED_BASE[split]
    g = torch.Generator().manual_seed(recipe["seed"] * 31 + part)
    out: list[Gen] = []

    def add(caption, kind, item=-1, level=-1):
        out.append(Gen(caption, base + len(out), kind, item, level))

    for i, it in enumerate(recipe["items"]):
        if it["split"] != split:
            continue
        kind, lvl = it["kind"], it["level"]
        if kind in ("token", "scene"):
            for _ in range(seeds):
                add(it["caption"], kind, i, lvl)
        if kind == "template":
            fg, bg = random_colour_pairs(seeds, g)
            for f, b in zip(fg, bg):
                add(f"{general_caption(f, it['objects'][0][1], b)} by {it['title']}", kind, i, lvl)
        if kind in ("render_control", "photo_control"):
            for _ in range(control_seeds):
                add(it["caption"], kind, i, lvl)
        if kind == "token":
            (fg, shape), bg = it["objects"][0], it["bg"]
            for _ in range(near_seeds):
                add(general_caption(fg, shape, bg), "near_token_drop", i, lvl)
                add(_swap_colour(it["caption"], fg, g, {fg, bg}), "near_token_swap", i, lvl)
        if kind == "scene":
            (c1, s1), (c2, s2) = it["objects"]
            for _ in range(near_seeds):
                add(_swap_colour(it["caption"], c2, g, {c1, c2, it["bg"]}), "near_scene_swap", i, lvl)
                add(general_caption(c1, s1, it["bg"]), "near_scene_drop", i, lvl)

    ones, twos = _ordinary_captions(recipe, n_one, n_two, part)
    for c in ones:
        add(c, "novel_one")
    for c in twos:
        add(c, "novel_two")
    unused = recipe["unused_titles"]
    fg, bg = random_colour_pairs(8, g)
    for k, (f, b) in enumerate(zip(fg, bg)):
        shape = SHAPES[int(torch.randint(len(SHAPES), (1,), generator=g))]
        add(f"{general_caption(f, shape, b)} by {unused[(2 * k + part) % len(unused)]}", "unseen_title")
    for c in out_of_family(g):
        add(c, "out_of_family")
    return out


def out_of_family(g: torch.Generator) -> list[str]:
    """Prompts in the vocabulary but outside both caption families."""
    colours = list(COLORS)
    pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=g))]  # noqa: E731
    out = []
    for _ in range(3):
        out += [f"a {pick(colours)} {pick(SHAPES)}", f"a {pick(colours)} background",
                f"{pick(colours)} and {pick(colours)} shapes", f"a photo of {pick(colours)} shapes"]
    return out
