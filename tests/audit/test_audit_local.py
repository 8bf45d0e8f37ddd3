"""The headless audit on the testbed, locally: what it finds, resuming, Ctrl-C, bad input."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest
from audit_run import command, environment, rows, run, start


def test_finds_every_memorized_caption_and_writes_table_pictures_and_report(local_audit, captions_file):
    out, table = local_audit
    _, memorized, ordinary = captions_file
    assert len(table) == 200
    assert len({(r["caption_index"], r["seed"]) for r in table}) == 200
    flagged_captions = {r["caption"] for r in table if r["flagged"]}
    # the benchmark (bench_core) flags every generation of the testbed's memorized captions
    assert set(memorized) <= flagged_captions
    assert all(r["flagged"] for r in table if r["caption"] in memorized)
    # ordinary captions at a false-flag rate of 1 in 1,000: 160 generations, none or almost none flagged
    assert sum(r["flagged"] for r in table if r["caption"] in ordinary) <= 1
    for r in table:
        assert r["verdict"] in ("memorized", "clean")
        assert len(r["z_agreement"]) == 50 and len(r["evidence"]) == 50
        if r["flagged"]:
            assert r["first_flagged_step"] is not None
            for key in ("image", "heatmap", "curves"):
                assert (out / r[key]).is_file(), r[key]
        else:
            assert r["image"] is None    # --save-images flagged (the default)
    report = (out / "report.html").read_text()
    # self-contained: no scripts, every picture inlined, nothing fetched
    assert "<script" not in report and not re.search(r"(?:src|href)=(?!['\"]data:)", report)
    assert all(c.replace("&#x27;", "'") in report.replace("&#x27;", "'") for c in memorized)
    # ranked by risk: the memorized captions come first
    first = report.index(memorized[0]) if memorized[0] in report else None
    assert first is not None and all(report.find(o) == -1 or report.find(o) > first for o in ordinary[:5])


def test_rerun_skips_everything(local_audit, captions_file):
    out, table = local_audit
    parts = {p: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    done = run("--captions", captions_file[0], "--out", out, "--seeds", 4)
    assert "13 batch(es) already done" in done.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "parts").iterdir()} == parts
    assert rows(out) == table


def test_interrupted_run_resumes_to_the_same_table(local_audit, captions_file, tmp_path):
    out = tmp_path / "audit"
    proc = start("--captions", captions_file[0], "--out", out, "--seeds", 4)
    deadline = time.time() + 600
    while time.time() < deadline and len(list((out / "parts").glob("batch-*.parquet"))) < 2:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)                      # Ctrl-C
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, log
    assert "rerun the same command to resume" in log
    partial = rows(out)
    assert 0 < len(partial) < 200
    assert len({(r["caption_index"], r["seed"]) for r in partial}) == len(partial)
    assert "Incomplete" in (out / "report.html").read_text()

    run("--captions", captions_file[0], "--out", out, "--seeds", 4)
    assert rows(out) == local_audit[1]


def test_other_settings_in_the_same_folder_are_refused(local_audit, captions_file):
    out, table = local_audit
    done = run("--captions", captions_file[0], "--out", out, "--seeds", 4, "--cfg", 5.0, check=False)
    assert done.returncode == 2
    assert "cfg: 7.5 vs 5.0" in done.stderr and "another --out" in done.stderr
    assert rows(out) == table


@pytest.mark.parametrize("content, suffix, extra, message", [
    (None, ".txt", [], "does not exist"),
    ("a,b\nx,y\n", ".csv", [], "Pass --column"),
    ('{"caption": "a red circle on a blue background"}\n', ".jsonl", ["--column", "prompt"], "has no column 'prompt'"),
    ("caption\n\n", ".csv", [], "holds no captions"),
    ("a red circle on a blue background by nobody\n", ".txt", [], "does not know the word(s) nobody"),
])
def test_bad_input_is_named_and_writes_nothing(tmp_path, content, suffix, extra, message):
    captions = tmp_path / f"captions{suffix}"
    if content is not None:
        captions.write_text(content)
    out = tmp_path / "out"
    done = run("--captions", captions, "--out", out, *extra, check=False, timeout=300)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-3000:]
    assert not out.exists()


def test_calibration_for_other_settings_is_refused(tmp_path, captions_file, local_audit):
    out = tmp_path / "out"
    done = run("--captions", captions_file[0], "--out", out, "--steps", 20,
               "--calibration", local_audit[0] / "calibration.safetensors", check=False, timeout=300)
    assert done.returncode == 2
    assert "made for other settings" in done.stderr and "steps" in done.stderr, done.stderr[-2000:]
    assert not out.exists()


def test_calibrates_first_when_no_region_fits_and_keeps_it_for_the_rerun(tmp_path, captions_file):
    _, memorized, ordinary = captions_file
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(memorized[:2] + ordinary[:2]) + "\n")
    pool = tmp_path / "calibration_prompts.txt"
    pool.write_text("\n".join(ordinary[10:22]) + "\n")     # 12 ordinary prompts x 2 seeds: 24 runs
    out = tmp_path / "audit"
    args = ("--captions", captions, "--out", out, "--seeds", 2, "--steps", 20, "--calibration-prompts", pool)
    first = run(*args)
    assert "no calibration for these settings: calibrating on 12 ordinary prompts x 2 seeds first" in first.stdout + first.stderr
    record = json.loads((out / "audit.json").read_text())
    assert record["calibration_source"] == "calibrated by this audit"
    table = rows(out)
    assert [r["flagged"] for r in table] == [True] * 4 + [False] * 4
    assert all(len(r["evidence"]) == 20 for r in table)

    (out / "results.parquet").unlink()
    for part in (out / "parts").glob("batch-*.parquet"):
        part.unlink()                      # as if every batch had been lost: the rerun samples again
    again = run(*args)
    assert "calibrating" not in again.stdout + again.stderr
    assert rows(out) == table


def test_without_ray_the_local_path_works_and_ray_asks_for_it(tmp_path, captions_file):
    # Ray made unimportable, as in a ComfyUI without the audit extra (a stand-in package that
    # fails to import ahead of site-packages: the one fake here)
    hidden = tmp_path / "hide" / "ray"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    captions = tmp_path / "captions.txt"
    captions.write_text(captions_file[1][0] + "\n")
    env = {**environment(), "PYTHONPATH": str(hidden.parent)}
    local = subprocess.run(command("--captions", captions, "--out", tmp_path / "local", "--seeds", 1), env=env,
                           capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    assert rows(tmp_path / "local")[0]["flagged"]
    on_ray = subprocess.run(command("--captions", captions, "--out", tmp_path / "ray", "--seeds", 1, "--ray", "local"),
                            env=env, capture_output=True, text=True, timeout=600)
    assert on_ray.returncode != 0 and "--ray needs Ray: pip install -r requirements-audit.txt" in on_ray.stderr
