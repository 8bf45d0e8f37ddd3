"""The mitigation benchmark's yardsticks (bench/checker.py, bench/fidelity.py): the Frechet distance
is one, the fine-detail share tells grain from a smooth image, the committed checker reads the generator's renders and tells a caption from a wrong one,
and graded_m's own checker (bench/train_model_checker.py) does the same on that model's
generations of captions it was not trained on; its training script runs end to end.

bench/ imports `core` from the repository root, which must stay off this process's sys.path (the
pack's nodes/ would shadow ComfyUI's nodes.py), so the checks run in a child interpreter.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECKS = r'''
import torch
from bench.checker import load_checker, labelled_batch, parse, COLOR_NAMES
from bench.fidelity import fine_detail, frechet, matched_frechet, shared_fine_detail
from core.testbed.dataset import SHAPES

# Frechet distance: zero for a set against itself, the squared mean shift between equal covariances
g = torch.Generator().manual_seed(0)
a = torch.randn(400, 5, generator=g)
assert abs(frechet(a, a)) < 1e-6
assert abs(frechet(a, a + torch.tensor([3.0, 0, 0, 0, 0])) - 9.0) < 1e-6
b = torch.randn(400, 5, generator=g)
d_img, d_floor, n = matched_frechet(b[:50], a, b[50:], draws=5)
assert n == 50 and d_img > 0 and d_floor > 0 and abs(d_img - d_floor) < 0.5 * d_floor   # same distribution

# fine detail: a smooth blob has almost none, a checkerboard (grain at the pixel period) almost all
r2 = (torch.arange(32.0).view(-1, 1) - 15.5) ** 2 + (torch.arange(32.0).view(1, -1) - 15.5) ** 2
blob = torch.exp(-r2 / 50).expand(2, 3, 32, 32)
checks = ((torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2 * 2.0 - 1).expand(2, 3, 32, 32)
assert float(fine_detail(blob).max()) < 0.01 and float(fine_detail(checks).min()) > 0.99
# at the grid period (2.7 px, bench_mitigation's GRID_PERIOD) the checkerboard counts, stripes 4 px apart do not
stripes = torch.cos(torch.arange(32.0) * torch.pi / 2).view(1, -1).expand(2, 3, 32, 32)
assert float(fine_detail(checks, 2.7).min()) > 0.99 and float(fine_detail(stripes, 2.7).max()) < 0.01
assert float(fine_detail(stripes).min()) > 0.99                     # but they are grain at 8 px
# shared fine detail: an image's own grain under a new layout is shared, independent grain is not
grain = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
other = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
assert float(shared_fine_detail(grain + 3 * blob, grain).min()) > 0.99
assert float(shared_fine_detail(grain, other).abs().max()) < 0.1

# captions of both families parse; others do not
assert parse("a red ring on a teal background by zorvath") == ([("red", "ring")], "teal")
assert parse("a red ring and a blue cross on a white background") == ([("red", "ring"), ("blue", "cross")], "white")
assert parse("a photo of red shapes") is None and parse("a mauve ring on a teal background") is None

# the committed checker on fresh renders: right captions read far better than wrong ones
ck = load_checker("bench/testbeds/weights/checker.safetensors")
images, y_bg, y_obj = labelled_batch(300, torch.Generator().manual_seed(123))
right, wrong = [], []
for i in range(images.shape[0]):
    objs = [(COLOR_NAMES[c], SHAPES[s]) for c, s in y_obj[i].nonzero().tolist()]
    bg = COLOR_NAMES[int(y_bg[i])]
    used = {c for c, _ in objs} | {bg}
    others = [c for c in COLOR_NAMES if c not in used]
    def caption(objects, background):
        body = " and ".join(f"a {c} {s}" for c, s in objects)
        return f"{body} on a {background} background"
    right.append(caption(objs, bg))
    wrong.append(caption([(others[k], s) for k, (_, s) in enumerate(objs)], others[-1]))
r = ck.adherence(images, right)
w = ck.adherence(images, wrong)
assert float(r.mean()) > 0.75 and float(w.mean()) < 0.1, (float(r.mean()), float(w.mean()))
print("ok")
'''


def test_mitigation_yardsticks():
    out = subprocess.run([sys.executable, "-c", CHECKS], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


MODEL_CHECKS = r"""
import subprocess, sys, tempfile
from pathlib import Path
import torch
from bench.checker import COLOR_NAMES, checker_for, load_checker, parse
from bench.testbeds.prompts import split_set
from core.sampling import plain_sample
from core.schedule import start_latent
from core.testbed import load_testbed

w = "bench/testbeds/weights/graded_m.safetensors"
assert checker_for(w).name == "checker_graded_m.safetensors"
assert checker_for("elsewhere/other.safetensors").name == "checker.safetensors"
ck = load_checker(checker_for(w))
assert ck.meta["trained_on"] == "generations" and ck.net.colours is not None

# validation generations of novel captions (never in the checker's training set): right vs wrong captions
tb = load_testbed(w)
gens = [g for g in split_set(tb.data, "validation") if g.kind in ("novel_one", "novel_two")][::2]
sig = tb.schedule.sigmas_for(50, "normal")
x = start_latent(tb.noise([g.seed for g in gens]), sig, tb.schedule.sigma_max)
images = tb.decode(plain_sample(tb.pair([g.caption for g in gens]), x, sig, 7.5, "ddim"))

def wrong(cap):
    objs, bg = parse(cap)
    others = [c for c in COLOR_NAMES if c not in {c for c, _ in objs} | {bg}]
    return " and ".join(f"a {others[k]} {s}" for k, (_, s) in enumerate(objs)) + f" on a {others[-1]} background"

r = float(ck.adherence(images, [g.caption for g in gens]).mean())
wr = float(ck.adherence(images, [wrong(g.caption) for g in gens]).mean())
assert r > 0.15 and wr < 0.5 * r, (r, wr)

# the training script, tiny: it writes a checker that loads as one trained on generations
with tempfile.TemporaryDirectory() as d:
    out = Path(d) / "ck.safetensors"
    p = subprocess.run([sys.executable, "bench/train_model_checker.py", "--weights", w, "--out", str(out),
                        "--generations", "20", "--steps", "2", "--batch", "8", "--threads", "1"],
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    assert load_checker(out).meta["generations"] == 20
print("ok")
"""


def test_model_checker():
    out = subprocess.run([sys.executable, "-c", MODEL_CHECKS], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
