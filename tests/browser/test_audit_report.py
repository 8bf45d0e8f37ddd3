"""The audit's HTML report opens in headless Chromium with no console errors, no failed loads
and every picture decoded; a screenshot lands in out/test-artifacts/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from comfyui_path import comfyui_root  # noqa: E402

ARTIFACTS = ROOT / "out" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
MEMORIZED = "a orange cross on a purple background by zorvath"
NOVEL = "a green circle on a blue background"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh installs it as root)")


def test_audit_report_renders_without_errors(tmp_path):
    from playwright.sync_api import sync_playwright

    captions = tmp_path / "captions.txt"
    captions.write_text(f"{MEMORIZED}\n{NOVEL}\n")
    out = tmp_path / "audit"
    done = subprocess.run([sys.executable, str(ROOT / "audit"), "--cpu", "--captions", str(captions), "--out", str(out),
                           "--seeds", "2"], env={**os.environ, "COMFYUI_PATH": str(comfyui_root()), "TQDM_DISABLE": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))
            page.goto((out / "report.html").as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth > 0])")
            rows = page.eval_on_selector_all("table tr", "els => els.map(e => e.innerText)")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "audit_report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    # two flagged generations of the memorized caption, three pictures each, all decoded
    assert len(images) == 6 and all(ok for _, ok in images), images
    assert MEMORIZED in rows[1] and "2/2" in rows[1]
    assert NOVEL in rows[2] and "0/2" in rows[2]
