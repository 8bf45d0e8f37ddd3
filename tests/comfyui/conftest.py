"""Session fixtures: one in-process ComfyUI per test session (see harness.py).

- `comfy_session`: the started `ComfySession` (run_prompt, server stand-in, folders, pack module).
- `run_prompt`: `comfy_session.run_prompt` (validate + execute an API-format prompt).
- `ui_events`: the `RecordingServer`, emptied before the test.
- `tiny_sd_ckpt` / `tiny_sd_v_ckpt`: names (for CheckpointLoaderSimple) of the tiny SD1.x eps and
  SD2-shaped v-prediction checkpoints, built once per session into the session's checkpoints dir.
- `constant_conditioning`: registers the test-only conditioning node for one test; its node id.

Module names here (harness, tiny_sd) are top-level while tests run: never name a helper after a
ComfyUI module (nodes, execution, server, utils, comfy, app, folder_paths, ...).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib (pyproject.toml), which puts no test folder on sys.path:
# make this folder's helpers importable as top-level `harness` and `tiny_sd`.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from harness import ComfySession, ConstantConditioning  # noqa: E402


@pytest.fixture(scope="session")
def comfy_session(tmp_path_factory):
    session = ComfySession.start(tmp_path_factory.mktemp("comfyui-base"))
    try:
        yield session
    finally:
        session.close()
        stray = [t for t in threading.enumerate()
                 if t is not threading.main_thread() and not t.daemon and t.is_alive()]
        if stray:  # would keep the interpreter alive after pytest finishes
            pytest.fail(f"ComfyUI left non-daemon threads running: {stray}")


@pytest.fixture
def run_prompt(comfy_session):
    """`run_prompt(prompt, **kw) -> PromptResult` (ComfySession.run_prompt)."""
    return comfy_session.run_prompt


@pytest.fixture
def ui_events(comfy_session):
    comfy_session.server.clear()
    return comfy_session.server


@pytest.fixture(scope="session")
def tiny_sd_ckpt(comfy_session) -> str:
    from tiny_sd import build_tiny_sd

    return build_tiny_sd(comfy_session.checkpoints_dir, "sd15").name


@pytest.fixture(scope="session")
def tiny_sd_v_ckpt(comfy_session) -> str:
    from tiny_sd import build_tiny_sd

    return build_tiny_sd(comfy_session.checkpoints_dir, "sd2_v").name


@pytest.fixture
def constant_conditioning(comfy_session):
    comfy_session.register_node(ConstantConditioning.NODE_ID, ConstantConditioning)
    try:
        yield ConstantConditioning.NODE_ID
    finally:
        comfy_session.unregister_node(ConstantConditioning.NODE_ID)
