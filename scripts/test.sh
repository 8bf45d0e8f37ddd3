#!/usr/bin/env bash
# The test command: set up what is missing (idempotent), then run every test, the real-ComfyUI
# ones included. Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
echo
echo "== tests"
exec "$ROOT/.venv/bin/python" -m pytest "${@:-tests}" -q -p no:randomly
