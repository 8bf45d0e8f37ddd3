"""The audit on a Ray cluster: one actor per worker slot (a GPU, or a CPU where there is none)
holds the model; batches go out as tasks, rows and PNG bytes come back, and the driver writes
them. What crosses the wire per batch: its index out, its rows (a few KB per generation) and the
pictures of its flagged generations back. The model never does: each actor loads it itself, so
every node needs the pack, ComfyUI and the model files at the same paths as the driver.

A worker that dies (a killed process, a lost node) is restarted by Ray, which runs its batch
again; a batch whose worker cannot be restarted goes back to the queue. A batch is written once,
when its result first reaches the driver, so every generation is in the table exactly once.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from . import bootstrap
from .bootstrap import load_pack, start_comfyui
from .job import AuditJob

IN_FLIGHT = 2          # batches queued per worker, so it never waits for the driver
MAX_TRIES = 4          # a batch whose worker keeps dying is given up after this many tries


class AuditWorker:
    """A Ray actor. Shipped by value (see RayBackend): nothing of the pack is importable in a
    fresh worker until load_pack has run."""

    def __init__(self, pack_root: str, comfyui_root: str, cpu: bool | None, job: dict, region: bytes | None):
        load_pack(Path(pack_root))
        start_comfyui(Path(comfyui_root), cpu)
        from memguard.audit.engine import Engine
        from memguard.audit.job import AuditJob as Job

        self.engine = Engine(Job.from_dict(job))
        if region is not None:
            self.engine.use_region(region)

    def region_for_job(self, given, label):
        return self.engine.region_for_job(given, label)

    def calibrate(self):
        return self.engine.calibrate()

    def run_batch(self, index: int) -> dict:
        from memguard.audit.backends import batch_dict

        return batch_dict(self.engine.run_batch(index))

    def pid(self) -> int:
        return os.getpid()


class RayBackend:
    def __init__(self, job: AuditJob, address: str, workers: int | None, pack_root: Path, comfyui_root: Path,
                 cpu: bool | None, log=print):
        try:
            import ray
        except ImportError:
            raise SystemExit("audit: --ray needs Ray: pip install -r requirements-audit.txt "
                             "(into the Python that runs ComfyUI)") from None
        self.ray, self.job, self.log = ray, job, log
        self.args = (str(pack_root), str(comfyui_root), cpu)
        # the pack is imported under a name workers do not have: ship these two modules by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        ray.cloudpickle.register_pickle_by_value(bootstrap)
        if address == "local":
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.per_worker = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        self.workers = workers or gpus or int(resources.get("CPU", 1))
        self.actor_class = ray.remote(max_restarts=MAX_TRIES, max_task_retries=MAX_TRIES, **self.per_worker)(AuditWorker)
        log(f"Ray: {self.workers} worker(s), each with {'one GPU' if gpus else 'one CPU'} "
            f"(cluster: {resources.get('CPU', 0):g} CPUs, {gpus} GPUs)")

    def _actor(self, region):
        # the job and region go into the object store once and stay referenced here, so a
        # restarted actor finds its constructor arguments
        if not hasattr(self, "_job_ref"):
            self._job_ref = self.ray.put(self.job.to_dict())
        return self.actor_class.remote(*self.args, self._job_ref, region)

    def region_for_job(self, given: bytes | None, label: str) -> tuple[bytes | None, str]:
        self._scout = self._actor(None)
        return self._get(self._scout.region_for_job.remote(given, label))

    def calibrate(self) -> bytes:
        return self._get(self._scout.calibrate.remote())

    def _get(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None   # the worker's own error (bad file, mismatch, ...)

    def start(self, region: bytes, batches: int) -> None:
        """Start the workers (each loads the model) and wait until they are ready."""
        ray = self.ray
        if getattr(self, "_scout", None) is not None:
            ray.kill(self._scout)
            self._scout = None
        self._region_ref = ray.put(region)
        self.actors = [self._actor(self._region_ref) for _ in range(max(1, min(self.workers, batches)))]
        self._get([a.pid.remote() for a in self.actors])

    def run(self, todo: Iterable[int], region: bytes, on_result: Callable[[dict], None]) -> None:
        ray = self.ray
        queue = deque(todo)
        if not queue:
            return
        if not getattr(self, "actors", None):
            self.start(region, len(queue))
        actors = list(self.actors)
        tries: dict[int, int] = {}
        pending: dict = {}

        def submit(actor):
            index = queue.popleft()
            pending[actor.run_batch.remote(index)] = (actor, index)

        for actor in actors:
            for _ in range(IN_FLIGHT):
                if queue:
                    submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor, index = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayActorError:
                # the worker died beyond what Ray restarts: the batch goes to another worker
                tries[index] = tries.get(index, 0) + 1
                if tries[index] >= MAX_TRIES:
                    raise RuntimeError(f"batch {index} failed on {MAX_TRIES} workers; giving up") from None
                actors = [a for a in actors if a is not actor]
                if not actors:
                    raise RuntimeError("every Ray worker died; the finished batches are saved, rerun to resume") from None
                queue.appendleft(index)
                submit(actors[0])
                continue
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None
            on_result(result)
            if queue and actor in actors:
                submit(actor)

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        self.actors = []
        if self.ray.is_initialized():
            self.ray.shutdown()
