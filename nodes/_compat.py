"""The one place that feature-detects ComfyUI APIs that differ between 0.3.75 and newer releases."""

from __future__ import annotations

import inspect

from comfy_api.latest import io

# `advanced=` (inputs folded under "advanced" in the UI) exists on newer ComfyUI only; 0.3.75
# raises TypeError for unknown keywords, which would abort loading the whole pack.
_HAS_ADVANCED = "advanced" in inspect.signature(io.Float.Input.__init__).parameters


def advanced() -> dict:
    return {"advanced": True} if _HAS_ADVANCED else {}


def executing_node_id() -> str | None:
    """The id of the node being executed (the sampler node, inside model hooks)."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:  # pragma: no cover
        return None
    ctx = get_executing_context()
    return None if ctx is None else ctx.node_id


def send_ui_event(event: str, data: dict) -> None:
    """Send a JSON event to the browser if a server is running (never in headless scripts)."""
    try:
        from server import PromptServer
    except ImportError:  # pragma: no cover
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        instance.send_sync(event, data, getattr(instance, "client_id", None))
