"""scripts/comfy_server.py (the demo's and the browser test's ComfyUI) against a real ComfyUI process."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import comfy_server  # noqa: E402


def test_a_port_taken_before_comfyui_binds_it_is_retried_on_a_new_one(tmp_path, monkeypatch):
    # the race free_port() cannot exclude: another process listens on the port it returned
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = comfy_server.free_port
        handed_out = iter([taken])
        monkeypatch.setattr(comfy_server, "free_port", lambda: next(handed_out, None) or real_free_port())

        server = comfy_server.ComfyServer(output_dir=tmp_path / "out", log_path=tmp_path / "comfyui.log")
        assert server.port == taken
        with server:
            assert server.port != taken
            assert "system" in comfy_server.http(f"{server.url}/system_stats")


def test_a_taken_port_that_was_asked_for_is_an_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        server = comfy_server.ComfyServer(output_dir=tmp_path / "out", log_path=tmp_path / "comfyui.log", port=taken)
        with pytest.raises(RuntimeError, match=f"port {taken} is already in use"):
            server.start()
