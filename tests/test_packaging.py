"""Packaging for the Comfy Registry and ComfyUI-Manager: metadata, dependencies, licence, lint,
and comfy-cli's own validation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_lines(text: str) -> list[str]:
    return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]


def test_requirements_and_pyproject_dependencies_agree():
    assert requirement_lines((ROOT / "requirements.txt").read_text()) == PYPROJECT["project"]["dependencies"]


def test_audit_requirements_and_the_audit_extra_agree():
    # the audit's extras are never the pack's: a user's ComfyUI gets them only on request
    audit = requirement_lines((ROOT / "requirements-audit.txt").read_text())
    assert audit == PYPROJECT["project"]["optional-dependencies"]["audit"]
    assert not set(audit) & set(PYPROJECT["project"]["dependencies"])
    assert "-r requirements-audit.txt" in requirement_lines((ROOT / "requirements-dev.txt").read_text())


def test_no_torch_family_or_numpy_pins_in_runtime_dependencies():
    for dep in PYPROJECT["project"]["dependencies"]:
        assert not re.match(r"^(torch|torchvision|torchaudio|numpy)\b", dep), dep


def test_registry_metadata():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9._-]*", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["license"] == {"file": "LICENSE"}
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text()[:200]
    assert "Repository" in project["urls"]
    assert {"PublisherId", "DisplayName", "Icon", "requires-comfyui"} <= set(comfy)
    assert (ROOT / "docs" / "images" / "icon.png").is_file()


def test_web_folder_registered_once_and_holds_only_the_extension():
    init = (ROOT / "__init__.py").read_text()
    assert 'WEB_DIRECTORY = "./web"' in init and "web" not in PYPROJECT["tool"]["comfy"]
    assert "NODE_CLASS_MAPPINGS" not in init   # it would silently disable comfy_entrypoint
    assert sorted(p.relative_to(ROOT / "web").as_posix() for p in (ROOT / "web").rglob("*.js")) == ["js/memguard.js"]


def test_no_install_script_and_no_pickle_loading():
    assert not (ROOT / "install.py").exists()
    sources = [p for p in ROOT.glob("**/*.py") if ".venv" not in p.parts and ".cache" not in p.parts and "tests" not in p.parts]
    unsafe = re.compile(r"^\s*(import pickle|from pickle)|pickle\.loads?\(|torch\.load\(|(?<![.\w])(eval|exec)\(", re.M)
    for path in sources:
        assert not unsafe.search(path.read_text()), path


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(ROOT / ".venv" / "bin")) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (scripts/setup.sh installs it)")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_comfy_node_validate_passes():
    comfy = ROOT / ".cache" / "tools-venv" / "bin" / "comfy"
    if not comfy.exists():
        pytest.skip("comfy-cli is not installed (scripts/setup.sh installs it into .cache/tools-venv)")
    result = subprocess.run([str(comfy), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and "passed" in result.stdout + result.stderr, result.stdout + result.stderr
