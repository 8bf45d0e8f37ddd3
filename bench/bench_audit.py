"""Throughput of the headless audit: plain sampling, the local audit, and the Ray audit with one
and two workers, on the same testbed captions and seeds, measured in one run.

    .venv/bin/python bench/bench_audit.py [--ordinary 20] [--seeds 4] [--out bench/results/audit_throughput.txt]

Every configuration runs torch on one thread per worker (Ray's default for a one-CPU actor; the
in-process runs are set to match), so the number of workers is the only difference. Startup (each
worker importing ComfyUI and loading the model) is timed apart from sampling: on a long audit it
is paid once per worker. Plain sampling is ComfyUI's KSampler arithmetic (comfy.sample.sample)
and decoding, with no guard and nothing written; the audit adds the guard, the table, and the
pictures of the flagged generations. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("_audit_bootstrap", ROOT / "audit" / "bootstrap.py")
    bootstrap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bootstrap)
    bootstrap.load_pack(ROOT)
    comfyui = bootstrap.find_comfyui(ROOT)
    bootstrap.start_comfyui(comfyui, cpu=True)
    return comfyui


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ordinary", type=int, default=20, help="ordinary captions beside the 10 memorized ones")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "audit_throughput.txt")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"      # inherited by the Ray workers started below
    comfyui = load()
    import comfy.sample
    import pyarrow.parquet as pq
    import torch

    from memguard.audit.backends import LocalBackend
    from memguard.audit.distributed import RayBackend
    from memguard.audit.job import AuditJob
    from memguard.audit.store import AuditStore
    from memguard.core.measures import QUANTITIES
    from memguard.core.testbed.dataset import all_general_combos, general_caption, special_items

    torch.set_num_threads(1)
    combos = all_general_combos()
    captions = ([it.caption for it in special_items() if it.kind == "memorized"]
                + [general_caption(*combos[i]) for i in range(5, len(combos), 5)][:args.ordinary])
    job = AuditJob(captions=tuple(captions), seeds=tuple(range(args.seeds)), width=32, height=32)
    todo = list(range(job.batches))
    lines = [f"audit throughput, testbed (euler/normal, 50 steps, cfg 7.5), {len(captions)} captions x {args.seeds} "
             f"seeds = {job.generations} generations in {job.batches} batches of {job.batch_captions} captions; "
             f"one torch thread per worker; {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}"]
    results = {}

    def record(name, startup, seconds, flagged=None):
        results[name] = job.generations / seconds
        extra = "" if flagged is None else f", {flagged} flagged"
        line = f"{name:<22} startup {startup:6.1f}s  sampling {seconds:7.1f}s  {results[name]:6.2f} generations/s{extra}"
        print(line, flush=True)
        lines.append(line)

    t = time.perf_counter()
    local = LocalBackend(job)
    startup = time.perf_counter() - t
    engine = local.engine
    region, _ = local.region_for_job(None, "")

    t = time.perf_counter()
    for index in todo:
        for ci in job.batch(index):
            one = engine.latent["samples"]
            noise = torch.cat([comfy.sample.prepare_noise(one, s) for s in job.seeds])
            samples = comfy.sample.sample(engine.model, noise, job.steps, job.cfg, job.sampler, job.scheduler,
                                          engine.encode(job.captions[ci]), engine.negative,
                                          one.repeat(len(job.seeds), 1, 1, 1), denoise=1.0, disable_pbar=True, seed=0)
            engine.decode(samples)
    record("plain sampling", startup, time.perf_counter() - t)

    def audit(name, backend, startup):
        with tempfile.TemporaryDirectory() as folder:
            store = AuditStore(Path(folder) / "audit", QUANTITIES)
            store.check(job)
            store.create(job, "bench")
            t = time.perf_counter()
            backend.start(region, len(todo))
            startup += time.perf_counter() - t
            t = time.perf_counter()
            backend.run(todo, region, lambda r: store.write_batch(r["index"], r["rows"], r["files"]))
            seconds = time.perf_counter() - t
            store.write_table()
            flagged = pq.read_table(store.table_file, columns=["flagged"])["flagged"].to_pylist().count(True)
        backend.close()
        record(name, startup, seconds, flagged)

    audit("local audit", local, startup)
    for workers in (1, 2):
        t = time.perf_counter()
        backend = RayBackend(job, "local", workers, ROOT, comfyui, True, log=lambda *_: None)
        audit(f"Ray audit, {workers} worker(s)", backend, time.perf_counter() - t)

    plain = results["plain sampling"]
    lines.append(f"ratios (generations/s over plain sampling): local audit {results['local audit'] / plain:.3f}, "
                 f"Ray 1 worker {results['Ray audit, 1 worker(s)'] / plain:.3f}, "
                 f"Ray 2 workers {results['Ray audit, 2 worker(s)'] / plain:.3f}; "
                 f"Ray 2 workers / 1 worker {results['Ray audit, 2 worker(s)'] / results['Ray audit, 1 worker(s)']:.3f}")
    print(lines[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
