"""Train a memorizing testbed model (seeded and deterministic; about 26 minutes on one CPU core of this project's VM).

    python bench/train_testbed.py --out core/testbed/weights/testbed.safetensors
    python bench/train_testbed.py --out runs/retrained.safetensors --check-against core/testbed/weights/testbed.safetensors
    python bench/train_testbed.py --family graded --recipe-seed 11 --out bench/testbeds/weights/graded_a.safetensors

`--family demo` (the default) is the demo testbed the pack embeds (core/testbed/dataset.py);
`--family graded` is a model of the graded family (bench/testbeds/graded.py), whose items the
recipe seed draws.

Epsilon prediction on SD's discrete schedule, condition dropout for classifier-free guidance
(on the general, never-duplicated samples only, so the unconditional model sees the memorized
images as rarely as SD's does: see docs/testbed.md), linear learning-rate decay to zero (it helps
memorization), EMA weights saved as safetensors.
The data is generated from the seed (core/testbed/dataset.py), so the stream can be replayed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `core`

from bench.testbeds import graded  # noqa: E402
from core.schedule import DiscreteSchedule  # noqa: E402
from core.testbed import dataset, latent  # noqa: E402
from core.testbed.dataset import TrainingStream  # noqa: E402
from core.testbed.model import TestbedConfig, TestbedUNet, TextEncoder  # noqa: E402
from core.testbed.text import tokenize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--cond-dropout", type=float, default=0.15, help="share of the --dropout-on samples trained uncaptioned")
    ap.add_argument("--dropout-on", choices=("all", "general"), default="general",
                    help="which samples may lose their caption: only the general (never duplicated) ones, or all")
    ap.add_argument("--channels", default=",".join(map(str, TestbedConfig.channels)), help="UNet channels per level")
    ap.add_argument("--text-positions", choices=("zeros", "normal"), default="zeros",
                    help="init of the text encoder's position embeddings: zeros (the models before graded_p, which "
                         "never learned word order) or normal (the token embeddings' scale)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--family", choices=("demo", graded.FAMILY), default="demo")
    ap.add_argument("--recipe-seed", type=int, default=11, help="graded family: the seed that draws its items")
    ap.add_argument("--dose-scale", type=float, default=1.0, help="graded family: every item's dose times this")
    ap.add_argument("--two-object-share", type=float, default=graded.TWO_OBJECT_SHARE,
                    help="graded family: share of the general samples with two objects")
    ap.add_argument("--general-style", choices=graded.STYLES, default="cluttered",
                    help="graded family: render style of the general data (clean: flat backgrounds, larger objects)")
    ap.add_argument("--duplicate-share", type=float, default=1.0,
                    help="graded family: share of a token/scene item's draws that are its fixed image (the rest fresh renders)")
    ap.add_argument("--check-against", type=Path, help="after training, compare the weights with this file's")
    args = ap.parse_args()
    if args.check_against and not args.check_against.is_file():
        ap.error(f"--check-against {args.check_against}: no such file")   # before, not after, the training

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.family == graded.FAMILY:
        recipe = graded.make_recipe(args.recipe_seed, args.dose_scale, args.two_object_share,
                                    args.general_style, args.duplicate_share)
        vocab, data, stream = graded.vocabulary(), recipe, graded.GradedStream(recipe, args.seed, args.batch)
    else:
        vocab, data, stream = dataset.vocabulary(), dataset.data_recipe(), TrainingStream(args.seed, args.batch)
    cfg = TestbedConfig(vocab_size=len(vocab), channels=tuple(int(c) for c in args.channels.split(",")))
    unet, text = TestbedUNet(cfg), TextEncoder(cfg, args.text_positions)
    params = list(unet.parameters()) + list(text.parameters())
    ema = [copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * max(0.0, 1.0 - s / args.steps))
    alphas_cumprod = DiscreteSchedule().alphas_cumprod
    g = torch.Generator().manual_seed(args.seed + 7)

    start, running = time.time(), 0.0
    for step in range(args.steps):
        images, captions, kinds = stream.batch(step)
        drop = torch.rand(args.batch, generator=g) < args.cond_dropout
        if args.dropout_on == "general":
            drop &= torch.tensor([k == "general" for k in kinds])
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        z0 = latent.encode(images)
        t = torch.randint(0, len(alphas_cumprod), (args.batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        ab = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        context = text(tokenize(captions, vocab, cfg.max_tokens))
        loss = F.mse_loss(unet(zt, t.float(), context), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for live, avg in zip((unet, text), ema):
                for p, q in zip(live.parameters(), avg.parameters()):
                    q.lerp_(p, 1 - args.ema)
        running += loss.item()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{args.steps} loss {running / 100:.4f} "
                  f"lr {sched.get_last_lr()[0]:.2e} {time.time() - start:.0f}s", flush=True)
            running = 0.0

    tensors = {f"unet.{k}": v.contiguous() for k, v in ema[0].state_dict().items()}
    tensors.update({f"text.{k}": v.contiguous() for k, v in ema[1].state_dict().items()})
    meta = {
        "format": "memguard-testbed", "format_version": "1",
        "config": json.dumps(cfg.to_dict()), "vocab": json.dumps(vocab),
        "prediction": "epsilon", "schedule": json.dumps({"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}),
        "training": json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
                               | {"seconds": round(time.time() - start), "torch": torch.__version__}),
        # the data recipe, so a model can be matched to the dataset code that made it
        "data": json.dumps(data),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) after {time.time() - start:.0f}s")
    if args.check_against:
        print(compare(tensors, args.check_against))


def compare(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """Whether freshly trained weights reproduce a weights file, bit for bit."""
    other = load_file(str(path))
    if set(other) != set(tensors):
        return f"{path} has other tensors: {sorted(set(other) ^ set(tensors))[:5]}"
    diff = {k: (tensors[k].float() - other[k].float()).abs().max().item() for k in tensors}
    worst = max(diff, key=diff.get)
    if diff[worst] == 0 and all(torch.equal(tensors[k], other[k]) for k in tensors):
        return f"bit-identical to {path} ({len(tensors)} tensors)"
    return (f"differs from {path}: {sum(d > 0 for d in diff.values())} of {len(tensors)} tensors, "
            f"largest difference {diff[worst]:.3g} in {worst}")


if __name__ == "__main__":
    main()
