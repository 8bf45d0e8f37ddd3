#!/usr/bin/env bash
# The main job: set up what is missing (idempotent), then run the demo workflow on the embedded
# testbed model inside a real ComfyUI, headless. Images and reports go to out/demo/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
echo
echo "== demo"
exec "$ROOT/.venv/bin/python" scripts/demo.py "$@"
