"""Where the ComfyUI that tests and scripts run against lives.

Resolution order:
1. `COMFYUI_PATH` (a user's own ComfyUI checkout, the folder that holds main.py and nodes.py);
2. the copy that scripts/setup.sh unpacks: `<repo>/.cache/comfyui-0.3.75/ComfyUI`.

Usable as a module (`comfyui_root()`) or as a script: `python scripts/comfyui_path.py` prints the
path, or says what is missing and exits 1. Needs only the standard library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

COMFYUI_VERSION = "0.3.75"
REPO_ROOT = Path(__file__).resolve().parent.parent
CACHED_COMFYUI = REPO_ROOT / ".cache" / f"comfyui-{COMFYUI_VERSION}" / "ComfyUI"
ENV_VAR = "COMFYUI_PATH"

# files that every ComfyUI checkout has at its top level
_MARKERS = ("main.py", "nodes.py", "execution.py", "folder_paths.py", "comfy")


class ComfyUINotFound(RuntimeError):
    pass


def _missing_markers(path: Path) -> list[str]:
    return [m for m in _MARKERS if not (path / m).exists()]


def comfyui_root() -> Path:
    """The ComfyUI root folder, or ComfyUINotFound naming both places that were tried."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser().resolve()
        missing = _missing_markers(path)
        if missing:
            raise ComfyUINotFound(
                f"{ENV_VAR}={env!r} is not a ComfyUI checkout (missing: {', '.join(missing)}). "
                f"Point it at the folder that holds main.py and nodes.py, or unset it to use "
                f"the copy that scripts/setup.sh unpacks into {CACHED_COMFYUI}."
            )
        return path
    if not _missing_markers(CACHED_COMFYUI):
        return CACHED_COMFYUI
    raise ComfyUINotFound(
        f"No ComfyUI found: {ENV_VAR} is not set and {CACHED_COMFYUI} does not exist (or is "
        f"incomplete). Run `bash scripts/setup.sh` to download ComfyUI {COMFYUI_VERSION} there, "
        f"or set {ENV_VAR} to your own ComfyUI checkout."
    )


def main() -> int:
    try:
        print(comfyui_root())
    except ComfyUINotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
