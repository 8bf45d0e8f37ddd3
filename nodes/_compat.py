"""The one place that feature-detects ComfyUI APIs that differ between 0.3.75 and newer releases."""

from __future__ import annotations

import functools
import inspect

import comfy.sample


@functools.cache
def advanced(input_type) -> dict:
    """`advanced=True` (the input folds under "advanced" in the UI) where this ComfyUI's
    `input_type.Input` takes it: 0.3.75 raises TypeError for unknown keywords, which would abort
    loading the whole pack, and releases need not add it to every input type at once."""
    return {"advanced": True} if "advanced" in inspect.signature(input_type.Input.__init__).parameters else {}


def fix_empty_latent(model, latent: dict):
    """latent["samples"] as common_ksampler hands it to the sampler: an empty latent gets the
    model's channels and, on newer ComfyUI, the size for the model's downscale ratio when the
    latent dict says it was made for another one (0.3.75's function takes neither ratio)."""
    fix = comfy.sample.fix_empty_latent_channels
    accepted = inspect.signature(fix).parameters
    ratios = {k: latent.get(k) for k in ("downscale_ratio_spacial", "downscale_ratio_temporal") if k in accepted}
    return fix(model, latent["samples"], **ratios)


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
