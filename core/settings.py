"""The settings a stability region depends on: its key.

Per-step norms change with the model, sampler, scheduler, step count, guidance scale, latent
size and denoise strength, so a region is only valid for the settings it was measured with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class RunSettings:
    model: str                       # a model identity (a weights hash or a name)
    sampler: str
    scheduler: str                   # "" when unknown (a custom sigma schedule): sigmas decide then
    steps: int
    cfg: float
    latent_shape: tuple[int, ...]    # per item: (C, H, W) or (C, T, H, W)
    denoise: float | None = 1.0      # None when unknown
    sigmas: tuple[float, ...] = ()   # the schedule itself, steps + 1 values; () when unknown
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # informative only

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        d["sigmas"] = [float(v) for v in self.sigmas]
        return d

    @staticmethod
    def from_dict(d: dict) -> "RunSettings":
        missing = [k for k in ("model", "sampler", "scheduler", "steps", "cfg", "latent_shape") if k not in d]
        if missing:
            raise ValueError(f"settings lack {', '.join(missing)}")
        denoise = d.get("denoise", 1.0)
        return RunSettings(model=str(d["model"]), sampler=str(d["sampler"]), scheduler=str(d["scheduler"]),
                           steps=int(d["steps"]), cfg=float(d["cfg"]),
                           latent_shape=tuple(int(v) for v in d["latent_shape"]),
                           denoise=None if denoise is None else float(denoise),
                           sigmas=tuple(float(v) for v in d.get("sigmas", ())), extra=dict(d.get("extra", {})))

    def describe(self) -> str:
        shape = "x".join(str(v) for v in self.latent_shape)
        out = (f"model {self.model}, {self.sampler}/{self.scheduler or 'custom sigmas'}, {self.steps} steps, "
               f"cfg {self.cfg:g}, latent {shape}")
        return out + (f", denoise {self.denoise:g}" if self.denoise is not None else "")

    def mismatches(self, run: "RunSettings") -> list[str]:
        """Human-readable differences between this (calibrated) key and a run's settings.

        The scheduler name, denoise and the sigmas themselves are compared only when both sides
        know them: a model patch sees a run's sigmas but not which node made them.
        """
        out = []
        for name in ("model", "sampler", "steps"):
            a, b = getattr(self, name), getattr(run, name)
            if a != b:
                out.append(f"{name}: calibrated {a!r}, this run {b!r}")
        if self.scheduler and run.scheduler and self.scheduler != run.scheduler:
            out.append(f"scheduler: calibrated {self.scheduler!r}, this run {run.scheduler!r}")
        if not math.isclose(self.cfg, run.cfg, rel_tol=1e-6, abs_tol=1e-6):
            out.append(f"cfg: calibrated {self.cfg:g}, this run {run.cfg:g}")
        if self.denoise is not None and run.denoise is not None and not math.isclose(self.denoise, run.denoise, abs_tol=1e-6):
            out.append(f"denoise: calibrated {self.denoise:g}, this run {run.denoise:g}")
        if tuple(self.latent_shape) != tuple(run.latent_shape):
            out.append("latent size: calibrated " + "x".join(map(str, self.latent_shape))
                       + ", this run " + "x".join(map(str, run.latent_shape)))
        if self.sigmas and run.sigmas and self.steps == run.steps and not all(
                math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-5) for a, b in zip(self.sigmas, run.sigmas)):
            out.append(f"noise schedule: calibrated sigmas {_span(self.sigmas)}, this run {_span(run.sigmas)} "
                       "(a different scheduler or denoise)")
        return out

    def file_stem(self) -> str:
        """A filesystem-safe name for a cached region of these settings."""
        shape = "x".join(str(v) for v in self.latent_shape)
        raw = (f"{self.model}_{self.sampler}_{self.scheduler or 'custom'}_{self.steps}s_cfg{self.cfg:g}_{shape}"
               f"_d{1.0 if self.denoise is None else self.denoise:g}")
        return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in raw)[:180]


def _span(sigmas: tuple[float, ...]) -> str:
    inner = [v for v in sigmas if v > 0]
    return f"{inner[0]:.4g}..{inner[-1]:.4g}" if inner else "[]"
