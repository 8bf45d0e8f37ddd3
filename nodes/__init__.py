"""ComfyUI nodes: thin adapters over `core`."""

from comfy_api.latest import ComfyExtension, io


class MemorizationGuardExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []
