"""The settings a stability region depends on: its key.

Per-step norms change with the model, sampler, scheduler, step count, guidance scale, latent
size and denoise strength, so a region is only valid for the settings it was measured with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class RunSettings:
    model: str                       # a model identity (hash or name), see model_identity()
    sampler: str
    scheduler: str
    steps: int
    cfg: float
    latent_shape: tuple[int, ...]    # per item: (C, H, W) or (C, T, H, W)
    denoise: float = 1.0
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # informative only

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        return d

    @staticmethod
    def from_dict(d: dict) -> "RunSettings":
        missing = [k for k in ("model", "sampler", "scheduler", "steps", "cfg", "latent_shape") if k not in d]
        if missing:
            raise ValueError(f"settings lack {', '.join(missing)}")
        return RunSettings(model=str(d["model"]), sampler=str(d["sampler"]), scheduler=str(d["scheduler"]),
                           steps=int(d["steps"]), cfg=float(d["cfg"]),
                           latent_shape=tuple(int(v) for v in d["latent_shape"]),
                           denoise=float(d.get("denoise", 1.0)), extra=dict(d.get("extra", {})))

    def describe(self) -> str:
        shape = "x".join(str(v) for v in self.latent_shape)
        return (f"model {self.model}, {self.sampler}/{self.scheduler}, {self.steps} steps, cfg {self.cfg:g}, "
                f"latent {shape}, denoise {self.denoise:g}")

    def mismatches(self, run: "RunSettings") -> list[str]:
        """Human-readable differences between this (calibrated) key and a run's settings."""
        out = []
        for name in ("model", "sampler", "scheduler", "steps"):
            a, b = getattr(self, name), getattr(run, name)
            if a != b:
                out.append(f"{name}: calibrated {a!r}, this run {b!r}")
        for name in ("cfg", "denoise"):
            a, b = getattr(self, name), getattr(run, name)
            if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6):
                out.append(f"{name}: calibrated {a:g}, this run {b:g}")
        if tuple(self.latent_shape) != tuple(run.latent_shape):
            out.append("latent size: calibrated " + "x".join(map(str, self.latent_shape))
                       + ", this run " + "x".join(map(str, run.latent_shape)))
        return out

    def file_stem(self) -> str:
        """A filesystem-safe name for a cached region of these settings."""
        shape = "x".join(str(v) for v in self.latent_shape)
        raw = f"{self.model}_{self.sampler}_{self.scheduler}_{self.steps}s_cfg{self.cfg:g}_{shape}_d{self.denoise:g}"
        return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in raw)[:180]
