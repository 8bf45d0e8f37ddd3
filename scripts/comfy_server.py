"""A real ComfyUI server (its own main.py) with this pack loaded, on a free local port.

Used by the demo and the browser test. Everything it writes goes to a temporary base directory
(custom_nodes with a link to this pack, models, input, temp, user) except the output folder given.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from comfyui_path import comfyui_root  # noqa: E402

PACK_LINK = "memorization-guard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, payload: dict | None = None, timeout: float = 30.0):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def port_is_taken(port: int) -> bool:
    """Whether another socket holds 127.0.0.1:port (asked after our ComfyUI has exited: its
    own socket is gone by then)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class PortTaken(RuntimeError):
    """ComfyUI could not bind its port."""


class ComfyServer:
    def __init__(self, output_dir: Path, log_path: Path, port: int | None = None):
        self.output_dir, self.log_path = Path(output_dir), Path(log_path)
        self.fixed_port = bool(port)
        self.port = port or free_port()
        self.comfy_root = comfyui_root()
        self.base: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600.0, attempts: int = 3) -> "ComfyServer":
        """Start ComfyUI and wait until it answers. A free port found by `free_port` can be taken
        by another process before ComfyUI binds it: then it retries on a new port."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except PortTaken:
                self.stop()
                if self.fixed_port or attempt == attempts - 1:
                    raise RuntimeError(f"port {self.port} is already in use; see {self.log_path}") from None
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> "ComfyServer":
        import torch

        self.base = Path(tempfile.mkdtemp(prefix="memguard-comfyui-"))
        (self.base / "custom_nodes").mkdir()
        os.symlink(ROOT, self.base / "custom_nodes" / PACK_LINK, target_is_directory=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(self.comfy_root / "main.py"), "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--output-directory", str(self.output_dir),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
        if not torch.cuda.is_available():
            cmd.append("--cpu")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(self.comfy_root), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                # 0.3.75 logs aiohttp's "address already in use", 0.33 its own "Port N is already in
                # use" (and releases word it as they like): the port itself is the robust witness
                if port_is_taken(self.port) or "already in use" in self.log_path.read_text(errors="replace").lower():
                    raise PortTaken(self.port)
                raise RuntimeError(f"ComfyUI exited during start-up; see {self.log_path}")
            try:
                http(f"{self.url}/system_stats", timeout=2)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
                continue
            if self.proc.poll() is None:   # an answer after our ComfyUI exited came from another process
                break
        else:
            self.stop()
            raise RuntimeError(f"ComfyUI did not answer on port {self.port} within {timeout:.0f}s; see {self.log_path}")
        self.check_pack_loaded()
        return self

    def check_pack_loaded(self) -> None:
        text = self.log_path.read_text(errors="replace")
        bad = [ln for ln in text.splitlines() if PACK_LINK in ln and ("IMPORT FAILED" in ln or "Cannot import" in ln)]
        if bad:
            raise RuntimeError("the pack failed to import into ComfyUI:\n" + "\n".join(bad) + f"\n(log: {self.log_path})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_log", None):
            self._log.close()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
