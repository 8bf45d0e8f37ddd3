"""ComfyUI nodes: thin adapters over `core`. Imported only by `comfy_entrypoint`."""

from __future__ import annotations

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

from . import _paths

log = logging.getLogger(__name__)
MODULES = ("sampler_nodes", "detector_nodes", "calibration_nodes", "testbed_nodes")


def node_classes() -> list[type[io.ComfyNode]]:
    """Every node of the pack. A module that fails to import is logged and skipped, so one
    broken feature does not take the whole pack down."""
    found = []
    for name in MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except Exception:
            log.exception("Memorization Guard: could not load %s; its nodes are unavailable", name)
            continue
        found.extend(module.NODES)
    return found


class MemorizationGuardExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        _paths.register()
        return node_classes()
