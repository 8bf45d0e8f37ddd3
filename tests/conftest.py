"""Test-wide setup: make the pack importable as `memguard`, without putting the repo on sys.path.

The pack's `nodes/` package would shadow ComfyUI's top-level `nodes.py` (and `core/` is a very
generic name), so the repository root must never be a sys.path entry. `python -m pytest` puts the
current directory first on sys.path, so that entry is removed here too.

Instead the pack is loaded as a synthetic package named `memguard` whose `__path__` is the repo
root, so unit tests anywhere under tests/ can write `from memguard.core.guard import ...`
(`core` is pure torch and never imports ComfyUI). Only the root `__init__.py` runs at import; it
imports nothing (the ComfyUI-facing `memguard.nodes` needs ComfyUI on sys.path: use the
fixtures in tests/comfyui/ for that).

Never add tests/__init__.py: pytest would then put the repo root on sys.path.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "memguard"


def _drop_repo_root_from_sys_path() -> None:
    def is_root(entry: str) -> bool:
        try:
            return Path(entry or os.getcwd()).resolve() == ROOT
        except OSError:
            return False

    sys.path[:] = [entry for entry in sys.path if not is_root(entry)]


def _load_pack_as_memguard():
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(
        PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    return module


_drop_repo_root_from_sys_path()
_load_pack_as_memguard()
