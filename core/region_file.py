"""Stability regions on disk: a versioned safetensors file (tensors plus JSON metadata).

Loading never unpickles anything and says exactly what is wrong with a file. Saving validates
first and writes through a temporary file, so a failed save leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .measures import QUANTITIES
from .region import StabilityRegion
from .settings import RunSettings

FORMAT = "memguard-stability-region"
FORMAT_VERSION = 3          # 2 adds the calibration trajectories, 3 the agreement quantity; 1 and 2 files still load
EXTENSION = ".safetensors"


class RegionFileError(ValueError):
    """A region file that cannot be used; the message names the file and the problem."""


def save_region(region: StabilityRegion, path: str | os.PathLike) -> Path:
    path = Path(path)
    problems = validate(region)
    if problems:
        raise RegionFileError(f"refusing to save an invalid stability region to {path}: {'; '.join(problems)}")
    tensors = {"mean": region.mean.float().cpu().contiguous(), "std": region.std.float().cpu().contiguous(),
               "count": region.count.long().cpu().contiguous()}
    if region.trajectories is not None:
        tensors["trajectories"] = region.trajectories.float().cpu().contiguous()
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "quantities": json.dumps(list(QUANTITIES)), "settings": json.dumps(region.settings.to_dict()),
                "meta": json.dumps(region.meta)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=EXTENSION, dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read(path: Path, tensors: bool) -> tuple[dict, dict]:
    """(metadata, tensors) of a safetensors file, the tensors only if asked for."""
    if not path.is_file():
        raise RegionFileError(f"stability region file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return f.metadata() or {}, ({k: f.get_tensor(k) for k in f.keys()} if tensors else {})
    except Exception as e:  # safetensors raises several types for truncated or corrupt headers
        raise RegionFileError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e


def load_region(path: str | os.PathLike) -> StabilityRegion:
    path = Path(path)
    metadata, tensors = _read(path, tensors=True)

    def fail(msg: str) -> RegionFileError:
        return RegionFileError(f"{path} is not a usable stability region: {msg}")

    if metadata.get("format") != FORMAT:
        raise fail(f"its metadata 'format' is {metadata.get('format')!r}, expected {FORMAT!r} "
                   "(is it a model or another kind of file?)")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise fail(f"unreadable format_version {metadata.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise fail(f"it has format version {version}, written by a newer Memorization Guard; "
                   f"this version reads up to {FORMAT_VERSION}: update the pack")
    if version < 1:
        raise fail(f"unknown format version {version}")
    try:
        quantities = json.loads(metadata["quantities"])
        settings = RunSettings.from_dict(json.loads(metadata["settings"]))
        meta = json.loads(metadata.get("meta", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise fail(f"broken metadata ({e})") from e
    if list(quantities) != list(QUANTITIES[:len(quantities)]) or not quantities:
        raise fail(f"it stores quantities {quantities}, expected {list(QUANTITIES)} or the first of them")
    missing = [k for k in ("mean", "std", "count") if k not in tensors]
    if missing:
        raise fail(f"tensors missing: {', '.join(missing)}")
    kept = tensors.get("trajectories") if version >= 2 else None
    if len(quantities) < len(QUANTITIES):   # an older file: the quantities it lacks were not measured
        tensors, kept = _pad_quantities(tensors, kept, len(quantities))
    region = StabilityRegion(settings, tensors["mean"].float(), tensors["std"].float(), tensors["count"].long(), meta,
                             None if kept is None else kept.float())
    problems = validate(region)
    if problems:
        raise fail("; ".join(problems))
    return region


def _pad_quantities(tensors: dict, kept: torch.Tensor | None, stored: int) -> tuple[dict, torch.Tensor | None]:
    """Statistics of a file that measured only the first `stored` quantities, with the rest
    unmeasured (NaN statistics, count 0): their z-scores are NaN, and the verdict counts them 0."""
    extra = len(QUANTITIES) - stored

    def pad(t: torch.Tensor, dim: int, value: float) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = extra
        return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=dim)

    out = dict(tensors)
    out["mean"], out["std"] = pad(tensors["mean"].float(), 0, float("nan")), pad(tensors["std"].float(), 0, float("nan"))
    out["count"] = pad(tensors["count"].long(), 0, 0)
    if kept is not None and kept.ndim == 3 and kept.shape[2] == stored:
        kept = pad(kept.float(), 2, float("nan"))
    return out, kept


def read_settings(path: str | os.PathLike) -> RunSettings:
    """Only the settings a region file was calibrated for (reads the header, not the tensors)."""
    path = Path(path)
    metadata, _ = _read(path, tensors=False)
    if metadata.get("format") != FORMAT:
        raise RegionFileError(f"{path} is not a stability region (format {metadata.get('format')!r})")
    try:
        return RunSettings.from_dict(json.loads(metadata["settings"]))
    except (KeyError, ValueError, TypeError) as e:
        raise RegionFileError(f"{path} has broken settings metadata ({e})") from e


def validate(region: StabilityRegion) -> list[str]:
    q, n = len(QUANTITIES), region.settings.steps
    out = []
    for name in ("mean", "std", "count"):
        t = getattr(region, name)
        if tuple(t.shape) != (q, n):
            out.append(f"{name} has shape {tuple(t.shape)}, expected ({q}, {n}) for {n} steps")
    t = region.trajectories
    if t is not None and (t.ndim != 3 or tuple(t.shape[1:]) != (n, q)):
        out.append(f"trajectories have shape {tuple(t.shape)}, expected (runs, {n}, {q})")
    if out:
        return out
    have = region.count > 0
    required = torch.zeros_like(have)
    required[:3] = True  # latent, update and clean must exist at every step; gap and agreement are optional (cfg 1)
    if bool((required & ~have).any()):
        out.append("some steps have no calibration data")
    if not bool(torch.isfinite(region.mean[have]).all() and torch.isfinite(region.std[have]).all()):
        out.append("non-finite statistics")
    elif bool((region.std[have] <= 0).any()):
        out.append("non-positive spreads")
    return out
