#!/usr/bin/env bash
# The test command: set up what is missing (idempotent), then run every test, the real-ComfyUI
# ones included. Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
# ComfyUI 0.3.75 by default; COMFYUI_VERSION=0.33.0 for the cached 0.33.0 (its own venv), or
# COMFYUI_PATH=/your/ComfyUI (see scripts/setup.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$(bash scripts/venv_path.sh)" || exit 1
bash scripts/setup.sh
echo
echo "== tests (ComfyUI: $("$VENV/bin/python" scripts/comfyui_path.py))"
exec "$VENV/bin/python" -m pytest "${@:-tests}" -q -p no:randomly
