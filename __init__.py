"""Memorization Guard: catch a diffusion model reproducing a training image, and steer it away.

ComfyUI loads this file; the nodes (and with them ComfyUI's APIs) are imported only when ComfyUI
asks for them, so `core` stays importable anywhere.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import MemorizationGuardExtension

    return MemorizationGuardExtension()
