"""Train an adherence checker that reads one model's generations as that model draws them.

    python bench/train_model_checker.py --weights bench/testbeds/weights/graded_m.safetensors \
        --out bench/testbeds/weights/checker_graded_m.safetensors

The render checker (bench/checker.py) reads the procedural renders, but a 4 M model sampled at
cfg 7.5 draws every colour with its own cast and saturation, and that checker found the background
of only a quarter of graded_m's ordinary generations. This one learns from the model's own
ordinary generations, labelled with their captions: which palette colour each pixel is drawn as
(bench/checker.LearnedColours) and, starting from the render checker's weights, which objects are
there. Its captions are ordinary captions that no calibration, validation or test generation and
no recipe item uses (bench/testbeds/prompts.py), with seeds of their own; a fifth of the captions
is held out and the checker's reading of them is printed, so its bias is known. Where the model
did not draw what its caption says, the label is wrong: the checker learns what this model draws
for a caption, which is the yardstick bench_mitigation.py needs (mitigated images against ordinary
generations of the same model), not an absolute judge of the image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core` and `bench`

from bench.checker import (  # noqa: E402
    COLOR_NAMES,
    FORMAT,
    SHAPES,
    AttributeNet,
    Checker,
    load_checker,
    object_loss,
    parse,
)
from bench.testbeds.graded import FAMILY, one_object_combos, two_object_caption, two_object_combo  # noqa: E402
from bench.testbeds.prompts import calibration_set, split_set  # noqa: E402
from core.sampling import plain_sample  # noqa: E402
from core.schedule import start_latent  # noqa: E402
from core.testbed import load_testbed  # noqa: E402
from core.testbed.dataset import general_caption  # noqa: E402

RENDER_CHECKER = Path(__file__).resolve().parent / "testbeds" / "weights" / "checker.safetensors"
CFG, STEPS, SEED_BASE = 7.5, 50, 900_000


def training_captions(recipe: dict, n: int, g: torch.Generator) -> list[str]:
    """`n` ordinary captions, half one-object and half two-object, used by no benchmark generation."""
    used = {gen.caption for gen in calibration_set(recipe) + split_set(recipe, "validation") + split_set(recipe, "test")}
    used |= {it["caption"] for it in recipe["items"]}
    used |= {general_caption(it["objects"][0][0], it["objects"][0][1], it["bg"])
             for it in recipe["items"] if it.get("objects") and len(it["objects"]) == 1}
    ones = [general_caption(*c) for c in one_object_combos()]
    ones = [ones[i] for i in torch.randperm(len(ones), generator=g).tolist() if ones[i] not in used]
    twos: list[str] = []
    while len(twos) < n - n // 2:
        c = two_object_caption(*two_object_combo(g))
        if c not in used and c not in twos:
            twos.append(c)
    ones = (ones * (1 + (n // 2) // max(1, len(ones))))[:n // 2]   # one-object captions may repeat (other seeds)
    return ones + twos


def labels(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    y_bg = torch.zeros(len(captions), dtype=torch.long)
    y_obj = torch.zeros(len(captions), len(COLOR_NAMES), len(SHAPES))
    for i, cap in enumerate(captions):
        objects, bg = parse(cap)
        y_bg[i] = COLOR_NAMES.index(bg)
        for c, s in objects:
            y_obj[i, COLOR_NAMES.index(c), SHAPES.index(s)] = 1.0
    return y_bg, y_obj


def generate(tb, captions: list[str], batch: int = 64) -> torch.Tensor:
    sigmas = tb.schedule.sigmas_for(STEPS, "normal")
    out = []
    for i in range(0, len(captions), batch):
        part = captions[i:i + batch]
        x = start_latent(tb.noise([SEED_BASE + i + k for k in range(len(part))]), sigmas, tb.schedule.sigma_max)
        out.append(tb.decode(plain_sample(tb.pair(part), x, sigmas, CFG, "ddim")))
        print(f"  generated {i + len(part)}/{len(captions)}", flush=True)
    return torch.cat(out)


def reading(checker: Checker, images: torch.Tensor, captions: list[str]) -> dict:
    y_bg, y_obj = labels(captions)
    bg, pres, shp = checker.predict(images)
    present = y_obj.amax(-1) > 0
    found = (pres > 0.5).unsqueeze(-1) & (shp > 0.5)
    adh = checker.adherence(images, captions)
    two = torch.tensor([" and " in c for c in captions])
    return {"images": len(captions), "bg_accuracy": round(float((bg == y_bg).float().mean()), 4),
            "colour_recall": round(float((pres > 0.5)[present].float().mean()), 4),
            "object_recall": round(float(found[y_obj > 0].float().mean()), 4),
            "absent_colour_false_rate": round(float((pres[~present] > 0.5).float().mean()), 4),
            "adherence_one": round(float(adh[~two].mean()), 4), "adherence_two": round(float(adh[two].mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="a graded-family model")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--generations", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tb = load_testbed(args.weights)
    if tb.data.get("family") != FAMILY:
        raise SystemExit(f"{args.weights} is not a {FAMILY}-family model")
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    captions = training_captions(tb.data, args.generations, g)
    images = generate(tb, captions)
    print(f"sampled {len(captions)} ordinary generations in {time.perf_counter() - t0:.0f}s")
    # hold out a fifth of the captions (all their seeds), so the printed reading is of unseen captions
    distinct = sorted(set(captions))
    order = torch.randperm(len(distinct), generator=g).tolist()
    held = {distinct[i] for i in order[:len(distinct) // 5]}
    test = [i for i, c in enumerate(captions) if c in held]
    train = [i for i, c in enumerate(captions) if c not in held]
    y_bg, y_obj = labels(captions)

    net = AttributeNet(learned_colours=True)
    start = load_checker(RENDER_CHECKER).net.state_dict()   # the shape reading learnt on renders
    net.load_state_dict(start, strict=False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    t1 = time.perf_counter()
    for step in range(args.steps):
        pick = torch.tensor(train)[torch.randint(len(train), (args.batch,), generator=g)]
        x = images[pick]
        flip = torch.rand(len(pick), generator=g) < 0.5      # the captions say nothing of left and right
        x[flip] = x[flip].flip(-1)
        cover, presence, shapes = net(x)
        loss = F.nll_loss(cover.clamp(min=1e-6).log(), y_bg[pick]) + object_loss(presence, shapes, y_obj[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - t1:.0f}s", flush=True)
    checker = Checker(net, {})
    held_out = reading(checker, images[test], [captions[i] for i in test])
    print("held-out captions' generations:", json.dumps(held_out))
    print("the render checker on the same:", json.dumps(reading(load_checker(RENDER_CHECKER), images[test],
                                                                [captions[i] for i in test])))
    info = {"trained_on": "generations", "model": tb.identity, "weights": args.weights.name,
            "generations": len(captions), "cfg": CFG, "steps": args.steps, "batch": args.batch, "lr": args.lr,
            "seed": args.seed, "held_out": held_out, "seconds": round(time.perf_counter() - t0)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out),
              metadata={"format": FORMAT, "info": json.dumps(info)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
