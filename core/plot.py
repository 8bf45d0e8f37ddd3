"""Stability curves: each norm of a run against its calibrated band, per step, as an RGB image.

Drawn with Pillow (which every ComfyUI install has) so that nodes, scripts and the README share
one picture: the band is shaded, the item's curve is drawn over it, out-of-band steps are red dots,
active steps are shaded red, and steps the guard changed carry a blue tick.
"""

from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw

from .report import RunReport

PANELS = (("update", "update norm ||z' - z||"), ("clean", "clean-prediction norm ||x0||"),
          ("gap", "guidance gap ||eps_c - eps_u||"),
          ("agreement", "prediction agreement cos(D_c, D_u): low is the verdict's evidence"))
BAND, MEAN, CURVE, FLAG, ACTIVE, FIX, AXIS = ((214, 230, 245), (120, 150, 190), (20, 20, 20), (220, 30, 30),
                                               (250, 215, 215), (30, 90, 220), (90, 90, 90))


def stability_curves(report: RunReport, width: int = 640, height: int = 480) -> torch.Tensor:
    """[B, height, width, 3] float images in [0, 1], one chart per item."""
    images = [_chart(report, i, width, height) for i in range(len(report.items))]
    if not images:
        return torch.zeros(0, height, width, 3)
    return torch.stack([torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(height, width, 3)
                        for im in images]).float() / 255.0


def _chart(report: RunReport, index: int, width: int, height: int) -> Image.Image:
    item = report.items[index]
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    title = f"item {index}: {item.verdict}"
    score = item.scores.get("first")
    if score is not None:
        title += f"   score {score:.1f}"
    draw.text((8, 4), title, fill=(0, 0, 0))
    panels = [p for p in PANELS if any(v is not None for v in item.norms.get(p[0], []))]
    top, left, right, gap = 20, 46, width - 10, 22
    ph = (height - top - 10 - gap * (len(panels) - 1)) // max(1, len(panels))
    steps = max(1, len(item.norms["update"]))
    fixed = set(item.corrected_steps) | set(item.steered_steps)
    for n, (key, label) in enumerate(panels):
        y0 = top + n * (ph + gap)
        y1 = y0 + ph
        values = item.norms[key]
        band = (report.region or {}).get("band", {}).get(key)
        lows = band["low"][:steps] if band else []
        highs = band["high"][:steps] if band else []
        pool = [v for v in list(values) + list(lows) + list(highs) if v is not None and math.isfinite(v)]
        lo, hi = (min(pool), max(pool)) if pool else (0.0, 1.0)
        if hi - lo < 1e-9:
            hi = lo + 1.0
        lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)

        def xy(step, v, y0=y0, y1=y1, lo=lo, hi=hi):
            x = left + (right - left) * (step / max(1, steps - 1))
            return x, y1 - (y1 - y0) * ((v - lo) / (hi - lo))

        for s in item.active_steps:
            xa, _ = xy(max(0, s - 0.5), lo)
            xb, _ = xy(min(steps - 1, s + 0.5), lo)
            draw.rectangle([xa, y0, xb, y1], fill=ACTIVE)
        if band:
            poly = [xy(s, v) for s, v in enumerate(highs) if v is not None]
            poly += [xy(s, v) for s, v in reversed(list(enumerate(lows))) if v is not None]
            if len(poly) > 2:
                draw.polygon(poly, fill=BAND)
            mids = [xy(s, (a + b) / 2) for s, (a, b) in enumerate(zip(lows, highs)) if a is not None and b is not None]
            if len(mids) > 1:
                draw.line(mids, fill=MEAN, width=1)
        draw.rectangle([left, y0, right, y1], outline=AXIS)
        draw.text((left + 4, y0 + 2), label, fill=AXIS)
        draw.text((2, y0), f"{hi:.3g}", fill=AXIS)
        draw.text((2, y1 - 10), f"{lo:.3g}", fill=AXIS)
        points = [xy(s, v) if v is not None and math.isfinite(v) else None for s, v in enumerate(values)]
        for a, b in zip(points, points[1:]):
            if a is not None and b is not None:
                draw.line([a, b], fill=CURVE, width=2)
        for s, (p, f) in enumerate(zip(points, item.step_flags)):
            if p is not None and f > 0:
                draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=FLAG)
            if p is not None and s in fixed:
                draw.polygon([(p[0], y1 - 8), (p[0] - 4, y1), (p[0] + 4, y1)], fill=FIX)
    draw.text((left, height - 12), f"step 0 .. {steps - 1}   band: calibrated mean +- gamma sd   "
              "red: out of band   blue: steered", fill=AXIS)
    return im
