"""The audit command: parse, check, resume, run, write the table and the report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .job import TESTBED, AuditJob, JobError, read_captions

PACK_ROOT = Path(__file__).resolve().parents[1]
TESTBED_SIZE = 32


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python <pack>/audit",
        description="Audit a model for memorized training images: sample every caption with a few seeds while the "
                    "Memorization Guard watches (detect mode), and rank the captions by how often and how surely "
                    "their generations were flagged. Resumes when rerun with the same --out.")
    what = p.add_argument_group("what to audit")
    what.add_argument("--captions", required=True, help="captions file: .txt (one per line), .csv, .tsv, .jsonl or .parquet")
    what.add_argument("--column", help="the column or key holding the captions (default: caption, prompt or text)")
    what.add_argument("--checkpoint", default=TESTBED,
                      help="a checkpoint in ComfyUI's checkpoints folder, a path to one, or 'testbed' (the pack's "
                           "own memorizing model; the default)")
    what.add_argument("--lora", action="append", default=[], metavar="NAME[:STRENGTH]",
                      help="a LoRA (loras folder or path) applied to model and text encoder; repeatable")
    sampling = p.add_argument_group("sampling (as a KSampler)")
    sampling.add_argument("--seeds", type=int, default=4, help="generations per caption (default 4)")
    sampling.add_argument("--seed", type=int, default=0, help="the first seed; caption seeds are seed..seed+seeds-1")
    sampling.add_argument("--sampler", default="euler")
    sampling.add_argument("--scheduler", default="normal")
    sampling.add_argument("--steps", type=int, default=50)
    sampling.add_argument("--cfg", type=float, default=7.5)
    sampling.add_argument("--width", type=int, help="image width (default 512; the testbed is 32)")
    sampling.add_argument("--height", type=int, help="image height (default 512; the testbed is 32)")
    sampling.add_argument("--negative", default="", help="negative prompt")
    guard = p.add_argument_group("the guard")
    guard.add_argument("--calibration", type=Path,
                       help="a stability region (.safetensors) for these settings; default: the testbed's own, a "
                            "matching file in the calibration folder, or a calibration made first and saved in --out")
    guard.add_argument("--calibration-prompts", type=Path, help="ordinary prompts to calibrate on (one per line)")
    guard.add_argument("--calibration-seeds", type=int, default=2, help="seeds per calibration prompt (default 2)")
    guard.add_argument("--false-flag-rate", type=float, default=0.001,
                       help="share of ordinary generations the verdict may flag (default 0.001)")
    run = p.add_argument_group("the run")
    run.add_argument("--out", type=Path, required=True, help="output folder (rerun with the same one to resume)")
    run.add_argument("--batch-captions", type=int, default=4, help="captions per batch, the unit of work (default 4)")
    run.add_argument("--save-images", choices=("flagged", "all", "none"), default="flagged")
    run.add_argument("--report-top", type=int, default=200, help="captions shown in report.html (default 200)")
    run.add_argument("--ray", metavar="ADDRESS",
                     help="run on Ray: 'local' starts a cluster on this machine, 'auto' or HOST:PORT joins one")
    run.add_argument("--workers", type=int, help="Ray workers (default: one per GPU, else one per CPU)")
    run.add_argument("--comfyui", help="the ComfyUI folder (default: $COMFYUI_PATH, or the one holding the pack)")
    run.add_argument("--cpu", action="store_true", help="sample on the CPU even if a GPU is there")
    return p


def _lora(text: str) -> tuple[str, float]:
    name, sep, strength = text.rpartition(":")
    if not sep or not name:
        return text, 1.0
    try:
        return name, float(strength)
    except ValueError:
        return text, 1.0


def build_job(args) -> AuditJob:
    testbed = args.checkpoint == TESTBED
    size = TESTBED_SIZE if testbed else 512
    width, height = args.width or size, args.height or size
    if testbed and (width, height) != (TESTBED_SIZE, TESTBED_SIZE):
        raise JobError(f"The testbed draws {TESTBED_SIZE}x{TESTBED_SIZE} images; drop --width/--height.")
    if args.seeds < 1:
        raise JobError(f"--seeds must be at least 1, got {args.seeds}.")
    if not 0.0 < args.false_flag_rate < 0.5:
        raise JobError(f"--false-flag-rate must be in (0, 0.5), got {args.false_flag_rate}.")
    calibration_prompts = ()
    if args.calibration_prompts:
        calibration_prompts = tuple(read_captions(args.calibration_prompts))
    return AuditJob(captions=tuple(read_captions(args.captions, args.column)), checkpoint=args.checkpoint,
                    loras=tuple(_lora(x) for x in args.lora), seeds=tuple(range(args.seed, args.seed + args.seeds)),
                    sampler=args.sampler, scheduler=args.scheduler, steps=args.steps, cfg=args.cfg, width=width,
                    height=height, negative=args.negative, false_flag_rate=args.false_flag_rate,
                    batch_captions=args.batch_captions, save_images=args.save_images,
                    calibration_prompts=calibration_prompts, calibration_seeds=args.calibration_seeds)


def _version() -> str:
    import tomllib

    try:
        return tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ValueError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        print("audit: error: the audit writes Parquet and needs pyarrow: python -m pip install -r "
              f"{PACK_ROOT / 'requirements-audit.txt'} (with the Python that runs ComfyUI)", file=sys.stderr)
        return 2
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from ..core.measures import QUANTITIES
    from ..core.region import RegionMismatch
    from ..core.region_file import RegionFileError
    from .bootstrap import SetupError, find_comfyui, start_comfyui
    from .html_report import write_report
    from .store import AuditStore

    def fail(message: str) -> int:
        print(f"audit: error: {message}", file=sys.stderr)
        return 2

    try:
        job = build_job(args)
        comfyui = find_comfyui(PACK_ROOT, args.comfyui)
        given = None
        if args.calibration is not None:
            if not args.calibration.is_file():
                raise JobError(f"--calibration {args.calibration} does not exist.")
            given = args.calibration.read_bytes()
        store = AuditStore(args.out, QUANTITIES)
        resuming = store.check(job)
    except (JobError, SetupError) as e:
        return fail(str(e))

    saved = store.region_file.read_bytes() if resuming and store.region_file.is_file() else None
    if given is not None and saved is not None and given != saved:
        return fail(f"{args.out} was audited with another calibration ({store.region_file}); use another --out.")
    done = store.done()
    todo = [b for b in range(job.batches) if b not in done]
    print(f"audit: {len(job.captions)} captions x {len(job.seeds)} seeds = {job.generations} generations in "
          f"{job.batches} batches; {len(done)} batch(es) already done in {args.out}")

    backend, interrupted, t0 = None, False, time.time()
    source = json.loads(store.job_file.read_text()).get("calibration_source", "") if resuming else ""
    bar = tqdm(total=job.generations, initial=sum(len(job.batch(b)) for b in done) * len(job.seeds),
               unit="gen", desc="auditing", dynamic_ncols=True)
    try:
        if todo:   # a finished audit only rebuilds its table and report: no model to load
            if args.ray:
                from .distributed import RayBackend

                backend = RayBackend(job, args.ray, args.workers, PACK_ROOT, comfyui, True if args.cpu else None,
                                     log=bar.write)
            else:
                start_comfyui(comfyui, True if args.cpu else None)
                from .backends import LocalBackend

                backend = LocalBackend(job)
            label = f"--calibration {args.calibration}" if given is not None else str(store.region_file)
            region, found = backend.region_for_job(given or saved, label)
            if region is None:
                prompts = len(job.calibration_prompts) or 50
                bar.write(f"audit: {found}: calibrating on {prompts} ordinary prompts x {job.calibration_seeds} seeds first")
                region, found = backend.calibrate(), "calibrated by this audit"
            if not resuming:
                store.create(job, _version())   # only now: bad input has written nothing
            if saved is None:
                source = found
                store.save_region(region, source)

            def on_result(result: dict) -> None:
                store.write_batch(result["index"], result["rows"], result["files"])
                bar.update(len(result["rows"]))

            backend.run(todo, region, on_result)
    except KeyboardInterrupt:
        interrupted = True
    except (JobError, RegionMismatch, RegionFileError, SetupError) as e:   # from this process or a worker
        return fail(str(e))
    finally:
        bar.close()
        if backend is not None:
            backend.close()
    if not store.job_file.exists():   # stopped before anything was written
        print("audit: interrupted before the audit started; nothing was written", file=sys.stderr)
        return 130
    rows = store.write_table()
    complete = rows == job.generations
    report = write_report(store.out, job, store.table_file, source or "unknown", top=args.report_top, complete=complete)
    flagged = pq.read_table(store.table_file, columns=["flagged"])["flagged"].to_pylist().count(True)
    print(f"audit: {rows} of {job.generations} generations in {store.table_file}, {flagged} flagged; "
          f"report: {report} ({time.time() - t0:.0f}s)")
    if interrupted or not complete:
        print("audit: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
