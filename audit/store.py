"""The audit's output folder, written so that a crash, a Ctrl-C or a killed worker leaves it
consistent and a rerun resumes it:

    audit.json                the job (a rerun with other settings is refused) and the pack version
    calibration.safetensors   the stability region the audit used (calibrated once, reused on resume)
    parts/batch-000012.parquet one file per finished batch, written after its pictures, atomically:
                              a batch is done exactly when its part exists, so nothing is counted twice
    images/ heatmaps/ curves/  pictures of the flagged generations (or all, or none: --save-images)
    results.parquet           every finished generation, one row each, sorted; rebuilt from the parts
    report.html               the self-contained report (html_report.py)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .job import AuditJob, JobError

KEY = ("caption_index", "seed")


def schema(quantities: tuple[str, ...]) -> pa.Schema:
    steps = pa.list_(pa.float64())
    return pa.schema([
        ("caption_index", pa.int64()), ("caption", pa.string()), ("seed", pa.int64()), ("batch", pa.int64()),
        ("verdict", pa.string()), ("flagged", pa.bool_()), ("severity", pa.string()),
        ("first_flagged_step", pa.int64()), ("ordinary_rate", pa.float64()),
        ("score_first", pa.float64()), ("score_max", pa.float64()), ("score_mean", pa.float64()),
        ("evidence", steps), *[(f"z_{q}", steps) for q in quantities],
        ("image", pa.string()), ("heatmap", pa.string()), ("curves", pa.string()),
    ])


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AuditStore:
    def __init__(self, out: str | Path, quantities: tuple[str, ...]):
        self.out = Path(out)
        self.parts = self.out / "parts"
        self.schema = schema(quantities)

    @property
    def job_file(self) -> Path:
        return self.out / "audit.json"

    @property
    def region_file(self) -> Path:
        return self.out / "calibration.safetensors"

    @property
    def table_file(self) -> Path:
        return self.out / "results.parquet"

    def check(self, job: AuditJob) -> bool:
        """Whether an audit of this job is here to resume; JobError if another one is, or other files."""
        if self.job_file.exists():
            try:
                stored = AuditJob.from_dict(json.loads(self.job_file.read_text(encoding="utf-8"))["job"])
            except (ValueError, KeyError, TypeError) as e:
                raise JobError(f"{self.job_file} is not an audit file this version can resume ({e}). "
                               "Use another --out folder.") from None
            diffs = stored.differences(job)
            if diffs:
                raise JobError(f"{self.out} holds an audit with other settings ({'; '.join(diffs)}). Rerun with "
                               "the same settings to resume it, or use another --out folder.")
            return True
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise JobError(f"{self.out} is not an empty folder and holds no audit.json: use a new or empty --out folder.")
        return False

    def create(self, job: AuditJob, version: str) -> None:
        """Start a new audit here (after check())."""
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"job": job.to_dict(), "fingerprint": job.fingerprint(), "pack_version": version}
        _atomic_write(self.job_file, json.dumps(record, indent=1).encode())

    def done(self) -> set[int]:
        if not self.parts.is_dir():
            return set()
        return {int(p.stem.split("-")[1]) for p in self.parts.glob("batch-*.parquet")}

    def write_batch(self, index: int, rows: list[dict], files: dict[str, bytes]) -> None:
        """Pictures first, the part last: a part on disk means its batch is complete."""
        for rel, data in files.items():
            _atomic_write(self.out / rel, data)
        table = pa.Table.from_pylist(rows, schema=self.schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        _atomic_write(self.parts / f"batch-{index:06d}.parquet", sink.getvalue().to_pybytes())

    def part_files(self) -> list[Path]:
        """The finished batches' parts, in batch order: batches hold consecutive captions, so this
        is also caption order, and the table can be written part by part without a global sort."""
        return sorted(self.parts.glob("batch-*.parquet")) if self.parts.is_dir() else []

    def _part(self, path: Path) -> pa.Table:
        table = pq.read_table(path, schema=self.schema).sort_by([(k, "ascending") for k in KEY])
        keys = list(zip(*(table.column(k).to_pylist() for k in KEY)))
        if len(set(keys)) != len(keys):
            raise RuntimeError(f"{path} holds a generation twice: the folder was edited by hand?")
        return table

    def write_table(self) -> int:
        """results.parquet: every finished generation, sorted by caption and seed, each exactly
        once. Streamed part by part, so memory stays that of one batch however large the audit."""
        tmp = self.table_file.with_name(f".{self.table_file.name}.{os.getpid()}.tmp")
        rows = 0
        with pq.ParquetWriter(tmp, self.schema) as writer:
            for path in self.part_files():
                part = self._part(path)
                writer.write_table(part)
                rows += part.num_rows
        os.replace(tmp, self.table_file)
        return rows
    def save_region(self, data: bytes, source: str) -> None:
        """The region this audit uses, kept so that a resumed run uses the same one."""
        _atomic_write(self.region_file, data)
        record = json.loads(self.job_file.read_text(encoding="utf-8"))
        record["calibration_source"] = source
        _atomic_write(self.job_file, json.dumps(record, indent=1).encode())
