"""Starting the pack and ComfyUI in a plain Python process: the audit command and its Ray workers.

Standard library only, and free of the pack's imports, because Ray ships this module to its
workers by value (distributed.py) before anything of the pack can be imported there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

PACKAGE = "memguard"          # the name the pack is imported under (its folder name may hold dashes)
ENV_VAR = "COMFYUI_PATH"


class SetupError(RuntimeError):
    """The audit cannot start: the message says what to set or install."""


def _is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "nodes.py").is_file() and (path / "comfy").is_dir()


def find_comfyui(pack_root: Path, given: str | None = None) -> Path:
    """--comfyui, else $COMFYUI_PATH, else the ComfyUI whose custom_nodes holds the pack, else the
    development copy scripts/setup.sh unpacks (.cache/comfyui-<version>/ComfyUI)."""
    explicit = given or os.environ.get(ENV_VAR)
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not _is_comfyui(path):
            where = "--comfyui" if given else ENV_VAR
            raise SetupError(f"{where}={explicit} is not a ComfyUI folder (it should hold main.py, nodes.py and comfy/).")
        return path
    if pack_root.parent.name == "custom_nodes" and _is_comfyui(pack_root.parent.parent):
        return pack_root.parent.parent
    dev = pack_root / ".cache" / f"comfyui-{os.environ.get('COMFYUI_VERSION') or '0.3.75'}" / "ComfyUI"
    if _is_comfyui(dev):
        return dev
    raise SetupError(f"ComfyUI was not found: the pack is not inside a ComfyUI's custom_nodes folder. Pass "
                     f"--comfyui /path/to/ComfyUI or set {ENV_VAR}.")


def load_pack(pack_root: Path):
    """Import the pack as the package `memguard`. Its folder must not be on sys.path: its nodes/
    would shadow ComfyUI's nodes.py."""
    pack_root = pack_root.resolve()
    blocked = {pack_root, pack_root / "audit"}

    def blocked_entry(entry: str) -> bool:
        try:
            return Path(entry or os.getcwd()).resolve() in blocked
        except OSError:
            return False

    sys.path[:] = [entry for entry in sys.path if not blocked_entry(entry)]
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, pack_root / "__init__.py",
                                                  submodule_search_locations=[str(pack_root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def start_comfyui(root: Path, cpu: bool | None = None) -> None:
    """Import ComfyUI from `root` as main.py would, without its server: its folders (and the
    user's extra_model_paths.yaml), its device choice (`cpu`: None picks the CPU when torch sees
    no GPU)."""
    if "folder_paths" in sys.modules:
        return   # already started in this process (a Ray actor that restarted keeps nothing, a test may)
    root_s = str(root)
    sys.path[:] = [root_s] + [p for p in sys.path if p != root_s]
    import torch
    from comfy.cli_args import args  # imported as a library, ComfyUI parses no argv

    if cpu is None:
        mps = getattr(torch.backends, "mps", None)
        cpu = not torch.cuda.is_available() and not (mps is not None and mps.is_available())
    args.cpu = bool(cpu)
    args.disable_api_nodes = True
    # main.py's import order: ComfyUI's utils/ package before anything puts ComfyUI/comfy first
    import utils.extra_config  # noqa: I001
    import folder_paths

    extra = root / "extra_model_paths.yaml"
    if extra.is_file():
        utils.extra_config.load_extra_path_config(str(extra))
    import comfy.model_management  # noqa: F401  (picks the device now, with the args above)

    if Path(folder_paths.__file__).resolve().parent != root.resolve():
        raise SetupError(f"`import folder_paths` gave {folder_paths.__file__}, not {root}'s: another ComfyUI is on sys.path.")
