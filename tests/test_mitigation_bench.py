"""The mitigation benchmark's yardsticks (bench/checker.py, bench/fidelity.py): the Frechet distance
is one, the committed checker reads the generator's renders and tells a caption from a wrong one.

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
from bench.fidelity import frechet, matched_frechet
from core.testbed.dataset import SHAPES

# Frechet distance: zero for a set against itself, the squared mean shift between equal covariances
g = torch.Generator().manual_seed(0)
a = torch.randn(400, 5, generator=g)
assert abs(frechet(a, a)) < 1e-6
assert abs(frechet(a, a + torch.tensor([3.0, 0, 0, 0, 0])) - 9.0) < 1e-6
b = torch.randn(400, 5, generator=g)
d_img, d_floor, n = matched_frechet(b[:50], a, b[50:], draws=5)
assert n == 50 and d_img > 0 and d_floor > 0 and abs(d_img - d_floor) < 0.5 * d_floor   # same distribution

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
