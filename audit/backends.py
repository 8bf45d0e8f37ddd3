"""Where the batches run: in this process (LocalBackend) or on a Ray cluster (RayBackend, in
distributed.py). Both hand each finished batch to `on_result` as plain data, in the order they
finish; the driver writes it (store.py), so workers never touch the output folder."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .job import AuditJob


def batch_dict(result) -> dict:
    return {"index": result.index, "rows": result.rows, "files": result.files}


class LocalBackend:
    """One Engine in this process (ComfyUI started by the caller)."""

    def __init__(self, job: AuditJob):
        from .engine import Engine  # imports ComfyUI

        self.engine = Engine(job)

    def region_for_job(self, given: bytes | None, label: str) -> tuple[bytes | None, str]:
        return self.engine.region_for_job(given, label)

    def calibrate(self) -> bytes:
        return self.engine.calibrate()

    def start(self, region: bytes, batches: int) -> None:
        self.engine.use_region(region)

    def run(self, todo: Iterable[int], region: bytes, on_result: Callable[[dict], None]) -> None:
        if self.engine.regions is None:
            self.start(region, 0)
        for index in todo:
            on_result(batch_dict(self.engine.run_batch(index)))

    def close(self) -> None:
        pass
