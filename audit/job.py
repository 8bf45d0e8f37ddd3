"""What an audit is: the model, the captions, the sampling settings, the guard's settings, and
how the generations are cut into batches (the unit of work, of resuming and of a Ray task).

A job is plain JSON-ready data, so it is written into the output folder (a rerun checks it) and
sent to Ray workers as is. No ComfyUI here.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

TESTBED = "testbed"
CAPTION_COLUMNS = ("caption", "prompt", "text")   # looked for when --column is not given


class JobError(ValueError):
    """Bad input: the message names the file, column or setting at fault."""


@dataclass(frozen=True)
class AuditJob:
    captions: tuple[str, ...]
    checkpoint: str = TESTBED             # a checkpoint name (ComfyUI's checkpoints folder), a path, or "testbed"
    loras: tuple[tuple[str, float], ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2, 3)   # every caption is sampled once per seed
    sampler: str = "euler"
    scheduler: str = "normal"
    steps: int = 50
    cfg: float = 7.5
    width: int = 512
    height: int = 512
    negative: str = ""
    false_flag_rate: float = 0.001
    active_fraction: float = 0.3
    batch_captions: int = 4               # captions per batch
    save_images: str = "flagged"          # "flagged" | "all" | "none"
    calibration_prompts: tuple[str, ...] = field(default_factory=tuple)   # empty: the pack's default pool
    calibration_seeds: int = 2

    def __post_init__(self):
        if not self.captions:
            raise JobError("There are no captions to audit.")
        if not self.seeds:
            raise JobError("--seeds must be at least 1.")
        if self.steps < 1:
            raise JobError(f"--steps must be at least 1, got {self.steps}.")
        if self.cfg <= 1.0:
            raise JobError(f"--cfg must be above 1 (got {self.cfg}): the guard reads classifier-free guidance.")
        if self.batch_captions < 1:
            raise JobError(f"--batch-captions must be at least 1, got {self.batch_captions}.")
        if self.save_images not in ("flagged", "all", "none"):
            raise JobError(f"--save-images must be flagged, all or none, got {self.save_images!r}.")
        if self.width % 8 or self.height % 8 or self.width < 8 or self.height < 8:
            raise JobError(f"--width and --height must be positive multiples of 8, got {self.width}x{self.height}.")

    @property
    def is_testbed(self) -> bool:
        return self.checkpoint == TESTBED

    @property
    def batches(self) -> int:
        return -(-len(self.captions) // self.batch_captions)

    def batch(self, index: int) -> list[int]:
        """The caption indices of batch `index`."""
        start = index * self.batch_captions
        return list(range(start, min(start + self.batch_captions, len(self.captions))))

    @property
    def generations(self) -> int:
        return len(self.captions) * len(self.seeds)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AuditJob:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise JobError(f"unknown audit settings {sorted(unknown)} (written by another version?)")
        data = dict(data)
        for key in ("captions", "seeds", "calibration_prompts"):
            if key in data:
                data[key] = tuple(data[key])
        if "loras" in data:
            data["loras"] = tuple((str(n), float(s)) for n, s in data["loras"])
        return cls(**data)

    def fingerprint(self) -> str:
        """What must match for a rerun to resume in the same folder."""
        blob = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def differences(self, other: AuditJob) -> list[str]:
        a, b = self.to_dict(), other.to_dict()
        out = []
        for key in a:
            if a[key] != b[key]:
                shown = (f"{len(a[key])} vs {len(b[key])} entries" if key in ("captions", "calibration_prompts")
                         and len(str(a[key])) > 80 else f"{a[key]!r} vs {b[key]!r}")
                out.append(f"{key}: {shown}")
        return out


def read_captions(path: str | Path, column: str | None = None) -> list[str]:
    """Captions from .txt (one per line), .csv/.tsv, .jsonl or .parquet (a column). Blank ones are
    refused with their line, since a blank caption is rarely what the file meant."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"Captions file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".txt", ""):
        if column:
            raise JobError(f"--column {column!r} was given, but {path} is a plain text file (one caption per line).")
        lines = path.read_text(encoding="utf-8").splitlines()
        captions = [ln.strip() for ln in lines if ln.strip()]
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if not rows:
            raise JobError(f"{path} holds no captions.")
        name = _pick_column(path, list(rows[0].keys()) if rows else [], column)
        captions = _non_blank(path, [r.get(name) for r in rows], name, first_line=2)
    elif suffix == ".jsonl":
        records = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise JobError(f"{path}, line {n}: not JSON ({e.msg}).") from None
            if not isinstance(record, dict):
                raise JobError(f"{path}, line {n}: expected a JSON object per line.")
            records.append(record)
        if not records:
            raise JobError(f"{path} holds no captions.")
        name = _pick_column(path, list(records[0].keys()) if records else [], column)
        captions = _non_blank(path, [r.get(name) for r in records], name, first_line=1)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise JobError("Reading Parquet captions needs pyarrow: pip install -r requirements-audit.txt") from None
        schema_names = pq.read_schema(path).names
        name = _pick_column(path, schema_names, column)
        captions = _non_blank(path, pq.read_table(path, columns=[name]).column(name).to_pylist(), name, first_line=0)
    else:
        raise JobError(f"{path}: unknown captions format {suffix!r}; use .txt, .csv, .tsv, .jsonl or .parquet.")
    if not captions:
        raise JobError(f"{path} holds no captions.")
    return captions


def _pick_column(path: Path, names: list[str], column: str | None) -> str:
    if column:
        if column not in names:
            raise JobError(f"{path} has no column {column!r}; its columns: {', '.join(map(str, names)) or 'none'}.")
        return column
    for name in CAPTION_COLUMNS:
        if name in names:
            return name
    if len(names) == 1:
        return names[0]
    raise JobError(f"{path}: which column holds the captions? Pass --column (its columns: {', '.join(map(str, names))}).")


def _non_blank(path: Path, values: list, column: str, first_line: int) -> list[str]:
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            where = f"row {i + first_line}" if first_line else f"row {i}"
            raise JobError(f"{path}, {where}: column {column!r} is empty or not text ({value!r}).")
        out.append(value.strip())
    return out
