#!/usr/bin/env bash
# Prints the virtual environment that scripts/setup.sh and scripts/test.sh use:
#   .venv                          ComfyUI 0.3.75 (the default) or your COMFYUI_PATH checkout
#   .cache/venv-comfyui-0.33.0     COMFYUI_VERSION=0.33.0 (its requirements pin other versions of
#                                  the same packages as 0.3.75's, so it cannot share .venv)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${COMFYUI_VERSION:-0.3.75}" in
    0.3.75) echo "$ROOT/.venv" ;;
    0.33.0)
        if [[ -n "${COMFYUI_PATH:-}" ]]; then
            echo "venv_path.sh: set COMFYUI_VERSION (a cached ComfyUI) or COMFYUI_PATH (your own), not both" >&2
            exit 1
        fi
        echo "$ROOT/.cache/venv-comfyui-0.33.0" ;;
    *)
        echo "venv_path.sh: COMFYUI_VERSION=${COMFYUI_VERSION} is not one this project gets (0.3.75 or 0.33.0); use COMFYUI_PATH for your own ComfyUI" >&2
        exit 1 ;;
esac
