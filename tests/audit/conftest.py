"""Audit tests: the command runs as a user runs it, in a subprocess, on the testbed."""

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from audit_run import rows, run, testbed_captions  # noqa: E402


@pytest.fixture(scope="session")
def captions_file(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """10 memorized + 40 ordinary testbed captions: 200 generations at 4 seeds."""
    memorized, ordinary = testbed_captions()
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(memorized + ordinary) + "\n")
    return path, memorized, ordinary


@pytest.fixture(scope="session")
def local_audit(captions_file, tmp_path_factory):
    """The uninterrupted local audit every other run is compared with: (out folder, its rows)."""
    out = tmp_path_factory.mktemp("local") / "audit"
    run("--captions", captions_file[0], "--out", out, "--seeds", 4)
    return out, rows(out)
