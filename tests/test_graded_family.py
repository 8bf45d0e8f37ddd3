"""The graded testbed family's data (bench/testbeds): replayable, graded, split cleanly; and the rate
sweep (bench/rate_sweep.py) counts flags as the guard does.

bench/ imports `core` from the repository root, which must stay off this process's sys.path (the
pack's nodes/ would shadow ComfyUI's nodes.py), so the checks run in a child interpreter.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECKS = r'''
import torch
from bench.copies import StreamBank
from bench.testbeds.graded import DOSES, GradedStream, clean_kinds, fixed_image, make_recipe, template_render, vocabulary
from bench.testbeds.prompts import calibration_set, split_set
from core.testbed.text import unknown_words

r = make_recipe(11)
assert r == make_recipe(11) and r != make_recipe(12)          # the seed draws the items
items = r["items"]
assert len(items) == 2 * sum(len(d) for d in DOSES.values())   # one item per split and dose
for kind, doses in DOSES.items():
    for split in ("validation", "test"):
        assert sorted(it["dose"] for it in items if it["kind"] == kind and it["split"] == split) == sorted(doses)

s = GradedStream(r, 1, 32)
a, b = s.batch(5), GradedStream(r, 1, 32).batch(5)
assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]     # replayable
assert not torch.equal(s.batch(6)[0], a[0])
vocab = vocabulary()
for k in range(40):
    for c in s.batch(k)[1]:
        assert not unknown_words(c, vocab), c

# a template is one layout in other colours; a token item is one image
t = next(it for it in items if it["kind"] == "template")
imgs, caps = template_render(t, ["red", "blue"], ["white", "black"])
assert caps[0].endswith("by " + t["title"]) and "red" in caps[0]
assert not torch.equal(imgs[0], imgs[1])

# splits share no item, ordinary caption or seed, with each other or the calibration set
cal, val, test = calibration_set(r), split_set(r, "validation"), split_set(r, "test")
seeds = [g.seed for g in cal + val + test]
assert len(seeds) == len(set(seeds))
ordinary = lambda gens: {g.caption for g in gens if g.kind in ("novel_one", "novel_two", "calibration")}  # noqa: E731
assert not ordinary(val) & ordinary(test) and not ordinary(cal) & (ordinary(val) | ordinary(test))
assert not {g.item for g in val if g.item >= 0} & {g.item for g in test if g.item >= 0}
for g in cal + val + test:
    assert not unknown_words(g.caption, vocab), g

# the mixed recipe: clean general data, and a token item's caption also on fresh renders
assert "duplicate_share" not in r and clean_kinds(r) == ()          # older recipes replay unchanged
m = make_recipe(37, general_style="clean", duplicate_share=0.6)
assert m["items"] == make_recipe(37)["items"] and clean_kinds(m) == ("general", "fresh")
sm = GradedStream(m, 3, 64)
fixed = {it["caption"]: fixed_image(it) for it in m["items"] if it["kind"] in ("token", "scene")}
seen = {"fresh": 0, "dup": 0}
for k in range(60):
    imgs, caps, kinds = sm.batch(k)
    for img, cap, kind in zip(imgs, caps, kinds):
        if cap in fixed:
            assert kind in ("fresh", "token", "scene"), kind
            assert torch.equal(img, fixed[cap]) == (kind != "fresh")
            seen["fresh" if kind == "fresh" else "dup"] += 1
assert 0.25 < seen["fresh"] / sum(seen.values()) < 0.55, seen
for bad in ({"general_style": "noisy"}, {"duplicate_share": 0.0}):
    try:
        make_recipe(37, **bad)
    except ValueError as e:
        assert str(next(iter(bad))) in str(e)
    else:
        raise AssertionError(bad)

# the copy search leaves the clean renders out, and finds an item's fixed image
bank = StreamBank(GradedStream(m, 3, 64), 8, clean_kinds(m))
assert all(sm.batch(k)[2][i] not in ("general", "fresh") for k, i in bank.index)
assert len(bank.index) < 0.5 * 8 * 64
k, i = bank.index[0]
assert float(bank.truth(sm.batch(k)[0][i:i + 1]).corr[0]) > 0.999
# the rate sweep counts what the guard flags: a score strictly above the threshold (core/guard.py)
from bench.rate_sweep import flagged_counts
score = torch.tensor([1.0, 6.0, 7.0, 9.0])
assert flagged_counts(score, {"a": [0, 1], "b": [2, 3], "c": []}, 6.0) == {"a": (0, 2), "b": (2, 2), "c": (0, 0)}
# the seeds' agreement: -log(1 - cos) stretches cosines near 1 and stays finite at 1; a generation is
# flagged when its z passes the calibration's tail inside the window, and not after it
import math
from bench.seed_agreement import closeness, online
c = closeness(torch.tensor([0.0, 0.9, 0.99, 1.0]))
assert bool((c[1:] > c[:-1]).all()) and abs(float(c[1]) - 2.302585) < 1e-4 and bool(torch.isfinite(c).all())
cal = torch.randn(60, 12, generator=torch.Generator().manual_seed(0))
ev = torch.zeros(3, 12)
ev[1, 4] = ev[2, 11] = 50.0
flags, thr, rarity = online(cal, ev, 10, 0.001)
assert flags.tolist() == [False, True, False] and 2 < thr < 10, (flags, thr)
assert float(rarity[1]) > -math.log(0.001) > float(rarity[0]), rarity   # -log("1 in N") by the same tail
print("ok")
'''


def test_graded_family_data():
    out = subprocess.run([sys.executable, "-c", CHECKS], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
