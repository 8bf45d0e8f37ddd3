"""Run the pack inside a real ComfyUI, in-process, for tests.

`ComfySession.start(base_dir)` does what ComfyUI's main.py does at startup, minus the HTTP server:
- puts the ComfyUI root (scripts/comfyui_path.py: COMFYUI_PATH, else the setup.sh cache) first on
  sys.path and forces CPU unless MEMGUARD_TEST_GPU=1;
- points every ComfyUI folder (models, custom_nodes, input, output, temp, user) into `base_dir`,
  so nothing is written into the ComfyUI tree or the repository;
- installs `RecordingServer` as `server.PromptServer.instance` (records every `send_sync`);
- installs the same progress hook as main.py's `hijack_progress` (so ProgressBar updates become
  "progress" events and Cancel works);
- loads the pack the way ComfyUI loads custom nodes: `base_dir/custom_nodes/memorization-guard`
  is a symlink to the repo root and `nodes.init_extra_nodes()` imports it (plus ComfyUI's own
  comfy_extras nodes; API nodes are skipped). `PackImportError` if the pack did not load.

`session.run_prompt(prompt)` validates an API-format prompt with `execution.validate_prompt` and
runs it with `execution.PromptExecutor`, raising `PromptValidationError` / `PromptExecutionError`
with ComfyUI's own messages (and the node's traceback) when either fails.

ComfyUI 0.3.75 APIs used (all checked against that tree):
- `await nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=True)`
  -> `await nodes.load_custom_node(module_path, ignore=set(), module_parent="custom_nodes") -> bool`
- `await execution.validate_prompt(prompt_id, prompt, partial_execution_list)`
  -> `(valid, error, good_output_ids, node_errors)`
- `execution.PromptExecutor(server, cache_type=..., cache_args={"lru": n, "ram": gb, "ram_inactive": gb})`;
  `.execute(prompt, prompt_id, extra_data={}, execute_outputs=[])` (sync wrapper around
  `execute_async`); afterwards `.success`, `.status_messages`, `.history_result`, `.caches`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import os
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "memorization-guard"


# --- locating ComfyUI --------------------------------------------------------------------------

def _load_comfyui_path_helper():
    spec = importlib.util.spec_from_file_location(
        "_memguard_comfyui_path", REPO_ROOT / "scripts" / "comfyui_path.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def comfyui_root() -> Path:
    """COMFYUI_PATH, else .cache/comfyui-<COMFYUI_VERSION, default 0.3.75>/ComfyUI; ComfyUINotFound names both."""
    return _load_comfyui_path_helper().comfyui_root()


# --- errors ------------------------------------------------------------------------------------

class HarnessError(RuntimeError):
    pass


class PackImportError(HarnessError):
    pass


class PromptValidationError(HarnessError):
    def __init__(self, message: str, error: dict | None, node_errors: dict):
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors


class PromptExecutionError(HarnessError):
    def __init__(self, message: str, status_messages: list):
        super().__init__(message)
        self.status_messages = status_messages


# --- stand-in for server.PromptServer.instance -------------------------------------------------

class RecordingServer:
    """What ComfyUI's execution, progress and node code use of `PromptServer.instance`.

    Used by 0.3.75: `client_id`, `last_node_id`, `last_prompt_id`, `sockets_metadata`,
    `send_sync(event, data, sid)`, `send_progress_text(text, node_id, sid)`, `queue_updated()`.
    Commonly used by packs at import: `routes` (aiohttp RouteTableDef), `app`, `supports`,
    `add_on_prompt_handler`. Every message is recorded in `events` as `(event, data)`; `sids`
    holds the matching recipient ids. Binary events keep ComfyUI's int event codes
    (protocol.BinaryEventTypes).
    """

    def __init__(self):
        from aiohttp import web

        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets: dict = {}
        self.sockets_metadata: dict = {}
        self.supports = ["custom_nodes_from_web"]
        self.routes = web.RouteTableDef()
        self.app = web.Application()
        self.loop = None
        self.number = 0
        self.on_prompt_handlers: list = []
        self.events: list[tuple[Any, Any]] = []
        self.sids: list[str | None] = []
        self._lock = threading.Lock()

    # messages
    def send_sync(self, event, data, sid=None):
        with self._lock:
            self.events.append((event, data))
            self.sids.append(sid)

    async def send(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    async def send_json(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    def send_progress_text(self, text, node_id, sid=None):
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        self.send_sync("progress_text", {"node_id": str(node_id), "text": text}, sid)

    def queue_updated(self):
        pass

    def add_on_prompt_handler(self, handler):
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data):
        for handler in self.on_prompt_handlers:
            json_data = handler(json_data)
        return json_data

    # inspection helpers for tests
    def clear(self) -> None:
        with self._lock:
            self.events.clear()
            self.sids.clear()

    def events_named(self, name) -> list:
        with self._lock:
            return [data for event, data in self.events if event == name]


# --- log capture -------------------------------------------------------------------------------

class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def lines(self) -> list[str]:
        out = []
        for r in self.records:
            try:
                out.append(f"{r.levelname}: {r.getMessage()}")
            except Exception:  # noqa: BLE001  (a bad format string in someone's log call)
                out.append(f"{r.levelname}: {r.msg!r}")
        return out


# --- the session -------------------------------------------------------------------------------

@dataclass
class PromptResult:
    prompt_id: str
    outputs: dict            # history "outputs": {node_id: ui dict} (what /history returns)
    meta: dict               # history "meta"
    status_messages: list    # (event, data) the executor produced (execution_start, ...)
    events: list             # every (event, data) the server stand-in got during this run
    _executor: Any = field(repr=False, default=None)

    def node_output(self, node_id: str) -> tuple:
        """A node's return values (one per output socket), from the executor's output cache."""
        entry = self._executor.caches.outputs.get(str(node_id))
        if inspect.isawaitable(entry):  # async caches in some ComfyUI releases
            entry = asyncio.run(entry)
        if entry is None:
            raise KeyError(f"node {node_id!r} has no cached output (did it run in this prompt?)")
        values = []
        # 0.3.75 caches CacheEntry(ui, outputs); older releases cached the outputs list itself
        for per_output in getattr(entry, "outputs", entry):
            # ComfyUI keeps a list per output socket (one item unless the node mapped over lists)
            values.append(per_output[0] if len(per_output) == 1 else per_output)
        return tuple(values)

    def events_named(self, name) -> list:
        return [data for event, data in self.events if event == name]


class ComfySession:
    """ComfyUI imported and initialised in this process; see the module docstring."""

    def __init__(self, base_dir: Path, comfy_root: Path, pack_dir: Path = REPO_ROOT):
        self.base_dir = base_dir
        self.comfy_root = comfy_root
        self.pack_dir = pack_dir
        self.server = RecordingServer()
        self.pack_module_name: str | None = None
        self.pack_module = None
        self.load_results: dict[str, bool] = {}  # custom node path -> load_custom_node() result
        self.builtin_load_results: dict[str, bool] = {}  # the same for ComfyUI's comfy_extras
        self.startup_log: list[str] = []
        self._executor = None
        self._saved_sys_path: list[str] | None = None

    @property
    def builtin_import_failures(self) -> list[str]:
        """ComfyUI's own node files that did not import (0.3.75 without torchaudio: audio)."""
        return sorted(os.path.basename(p) for p, ok in self.builtin_load_results.items() if not ok)

    # folders
    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def checkpoints_dir(self) -> Path:
        return self.models_dir / "checkpoints"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.base_dir / "custom_nodes"

    # start-up
    @classmethod
    def start(cls, base_dir: Path, pack_dir: Path = REPO_ROOT) -> ComfySession:
        """Start ComfyUI with `base_dir` as its base folder and `pack_dir` as the custom node."""
        session = cls(Path(base_dir).resolve(), comfyui_root(), Path(pack_dir).resolve())
        session._start()
        return session

    def _start(self) -> None:
        root = str(self.comfy_root)
        self._saved_sys_path = list(sys.path)
        sys.path[:] = [root] + [p for p in sys.path if p != root]
        self._check_no_shadowing()

        for d in (self.checkpoints_dir, self.output_dir, self.temp_dir, self.input_dir,
                  self.base_dir / "user", self.custom_nodes_dir):
            d.mkdir(parents=True, exist_ok=True)

        # ComfyUI parses argv only in main.py; imported elsewhere, `args` holds the defaults
        from comfy.cli_args import args

        if "folder_paths" in sys.modules or "comfy.model_management" in sys.modules:
            raise HarnessError(
                "ComfyUI's folder_paths / comfy.model_management were imported before the "
                "harness configured them; start the ComfyUI session fixture before importing "
                "ComfyUI modules"
            )
        args.base_directory = str(self.base_dir)
        args.cpu = os.environ.get("MEMGUARD_TEST_GPU", "") != "1"
        args.disable_api_nodes = True

        import folder_paths

        folder_paths.set_output_directory(str(self.output_dir))
        folder_paths.set_temp_directory(str(self.temp_dir))
        folder_paths.set_input_directory(str(self.input_dir))
        folder_paths.set_user_directory(str(self.base_dir / "user"))
        folder_paths.folder_names_and_paths["custom_nodes"] = ([str(self.custom_nodes_dir)], set())

        # main.py's import order matters: `utils` must be ComfyUI's utils/ package before nodes.py
        # inserts ComfyUI/comfy at sys.path[0] (where comfy/utils.py would shadow it).
        # isort: off
        import utils.extra_config  # noqa: F401
        import comfy.utils
        import execution  # noqa: F401
        import server
        # isort: on

        server.PromptServer.instance = self.server
        import comfy.model_management  # noqa: F401
        import hook_breaker_ac10a0

        import nodes

        if Path(nodes.__file__).resolve() != self.comfy_root / "nodes.py":
            raise HarnessError(
                f"`import nodes` gave {nodes.__file__}, not ComfyUI's nodes.py: something put "
                f"the pack's folder on sys.path"
            )
        self._install_progress_hook()

        link = self.custom_nodes_dir / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(self.pack_dir, target_is_directory=True)
        pack_path = os.path.join(str(self.custom_nodes_dir), PACK_DIR_NAME)

        handler = _ListHandler()
        root_logger = logging.getLogger()
        old_level = root_logger.level
        root_logger.addHandler(handler)
        root_logger.setLevel(logging.INFO)  # the "(IMPORT FAILED)" summary is logged at INFO
        original_load = nodes.load_custom_node

        custom_prefix = str(self.custom_nodes_dir) + os.sep

        async def recording_load(module_path, *a, **kw):
            ok = await original_load(module_path, *a, **kw)
            if str(module_path).startswith(custom_prefix):
                self.load_results[module_path] = ok
            else:
                self.builtin_load_results[module_path] = ok
            return ok

        nodes.load_custom_node = recording_load
        try:
            hook_breaker_ac10a0.save_functions()
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
            hook_breaker_ac10a0.restore_functions()
        finally:
            nodes.load_custom_node = original_load
            root_logger.removeHandler(handler)
            root_logger.setLevel(old_level)
        self.startup_log = handler.lines()

        ok = self.load_results.get(pack_path)
        pack_lines = [line for line in self.startup_log if pack_path in line]
        # ComfyUI imports a folder pack under its path (dots replaced) as the module name
        self.pack_module_name = pack_path.replace(".", "_x_")
        self.pack_module = sys.modules.get(self.pack_module_name)
        if ok is not True:
            raise PackImportError(
                f"ComfyUI did not load the pack from {pack_path} "
                f"(load_custom_node returned {ok!r}). ComfyUI said:\n" + "\n".join(pack_lines)
                + self._entrypoint_traceback()
            )

    def _entrypoint_traceback(self) -> str:
        """ComfyUI logs only str(exc) when comfy_entrypoint fails: rerun it for the traceback."""
        import traceback

        entry = getattr(self.pack_module, "comfy_entrypoint", None)
        if entry is None:
            return ""

        async def call():
            ext = await entry() if asyncio.iscoroutinefunction(entry) else entry()
            await ext.get_node_list()

        try:
            asyncio.run(call())
        except Exception:  # noqa: BLE001  (whatever it raises, show it)
            return "\ncomfy_entrypoint() raised (called again by the harness):\n" + \
                traceback.format_exc()
        return ""

    def _check_no_shadowing(self) -> None:
        root = REPO_ROOT.resolve()
        for entry in sys.path:
            try:
                if Path(entry or os.getcwd()).resolve() == root:
                    raise HarnessError(
                        f"the repository root {root} is on sys.path: the pack's nodes/ would "
                        f"shadow ComfyUI's nodes.py (tests/conftest.py should have removed it)"
                    )
            except OSError:
                pass
        for name in ("nodes", "execution", "server", "folder_paths"):
            mod = sys.modules.get(name)
            if mod is not None and not str(getattr(mod, "__file__", "")).startswith(
                str(self.comfy_root)
            ):
                raise HarnessError(f"a module named {name!r} from {mod.__file__} is already "
                                   f"imported; it shadows ComfyUI's")

    def _install_progress_hook(self) -> None:
        """Same as main.py's hijack_progress (main.py cannot be imported: it starts up)."""
        import comfy.model_management
        import comfy.utils
        from comfy_api import feature_flags
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context
        from protocol import BinaryEventTypes

        server_instance = self.server

        def hook(value, total, preview_image, prompt_id=None, node_id=None):
            executing_context = get_executing_context()
            if prompt_id is None and executing_context is not None:
                prompt_id = executing_context.prompt_id
            if node_id is None and executing_context is not None:
                node_id = executing_context.node_id
            comfy.model_management.throw_exception_if_processing_interrupted()
            if prompt_id is None:
                prompt_id = server_instance.last_prompt_id
            if node_id is None:
                node_id = server_instance.last_node_id
            progress = {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id}
            get_progress_state().update_progress(node_id, value, total, preview_image)
            server_instance.send_sync("progress", progress, server_instance.client_id)
            if preview_image is not None and not feature_flags.supports_feature(
                server_instance.sockets_metadata, server_instance.client_id,
                "supports_preview_metadata",
            ):
                server_instance.send_sync(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE,
                                          preview_image, server_instance.client_id)

        comfy.utils.set_progress_bar_global_hook(hook)

    # running prompts
    def new_executor(self):
        import execution

        return execution.PromptExecutor(
            # newer ComfyUI reads "ram_inactive" on every run (a KeyError without it); 0.3.75 ignores it
            self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0}
        )

    def run_prompt(self, prompt: dict, *, client_id: str | None = "memguard-tests",
                   reuse_cache: bool = False, extra_data: dict | None = None) -> PromptResult:
        """Validate and execute an API-format prompt ({node_id: {"class_type", "inputs"}}).

        A fresh executor (empty node cache) runs each prompt unless `reuse_cache`, in which case
        one executor is kept for the session, as ComfyUI's prompt worker does (unchanged nodes are
        then not executed again). With `client_id` None, ComfyUI sends per-node events to nobody
        (the stand-in then records only broadcasts and progress).
        """
        import execution

        prompt_id = str(uuid.uuid4())
        valid, error, good_outputs, node_errors = asyncio.run(
            execution.validate_prompt(prompt_id, prompt, None)
        )
        if not valid or node_errors:
            raise PromptValidationError(_format_validation(error, node_errors), error, node_errors)

        if reuse_cache:
            if self._executor is None:
                self._executor = self.new_executor()
            executor = self._executor
        else:
            executor = self.new_executor()

        data = dict(extra_data or {})
        if client_id is not None:
            data["client_id"] = client_id
        first_event = len(self.server.events)
        self.server.last_prompt_id = prompt_id
        executor.execute(prompt, prompt_id, data, good_outputs)
        if self.server.client_id is not None:  # what main.py's prompt_worker sends at the end
            self.server.send_sync("executing", {"node": None, "prompt_id": prompt_id},
                                  self.server.client_id)
        events = self.server.events[first_event:]
        if not executor.success or any(ev in ("execution_error", "execution_interrupted")
                                       for ev, _ in executor.status_messages):
            raise PromptExecutionError(_format_execution_failure(executor.status_messages),
                                       executor.status_messages)
        history = executor.history_result
        return PromptResult(prompt_id=prompt_id, outputs=history["outputs"],
                            meta=history["meta"], status_messages=list(executor.status_messages),
                            events=events, _executor=executor)

    def register_node(self, node_id: str, cls, display_name: str | None = None) -> None:
        """Add a node class to ComfyUI's registry (remove it again with `unregister_node`)."""
        import nodes

        if node_id in nodes.NODE_CLASS_MAPPINGS:
            raise HarnessError(f"node id {node_id!r} is already registered")
        nodes.NODE_CLASS_MAPPINGS[node_id] = cls
        if display_name:
            nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] = display_name

    def unregister_node(self, node_id: str) -> None:
        import nodes

        nodes.NODE_CLASS_MAPPINGS.pop(node_id, None)
        nodes.NODE_DISPLAY_NAME_MAPPINGS.pop(node_id, None)

    # shutdown
    def close(self) -> None:
        try:
            import comfy.model_management
            import comfy.utils

            self._executor = None
            comfy.model_management.unload_all_models()
            comfy.model_management.soft_empty_cache()
            comfy.utils.set_progress_bar_global_hook(None)
        finally:
            import server

            if getattr(server.PromptServer, "instance", None) is self.server:
                del server.PromptServer.instance
            if self._saved_sys_path is not None:
                sys.path[:] = self._saved_sys_path


def _format_validation(error: dict | None, node_errors: dict) -> str:
    lines = ["ComfyUI rejected the prompt"]
    if error:
        lines[0] += f": {error.get('message')}"
        if error.get("details"):
            lines.append(f"  {error['details']}")
    for node_id, info in (node_errors or {}).items():
        for reason in info.get("errors", []):
            lines.append(f"  node {node_id} ({info.get('class_type')}): "
                         f"{reason.get('message')}: {reason.get('details')}")
    return "\n".join(lines)


def _format_execution_failure(status_messages: list) -> str:
    for event, data in status_messages:
        if event == "execution_error":
            tb = "".join(data.get("traceback") or [])
            return (f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                    f"{data.get('exception_type')}: {data.get('exception_message')}\n{tb}")
        if event == "execution_interrupted":
            return f"execution interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return f"execution failed; status messages: {[e for e, _ in status_messages]}"


# --- a test-only node --------------------------------------------------------------------------

class ConstantConditioning:
    """MOCK, test-only: CONDITIONING `[[full((1, tokens, width), value), {}]]` without a text encoder.

    The tiny test checkpoints carry no text-encoder weights, so CheckpointLoaderSimple returns
    clip=None, and no core node of ComfyUI 0.3.75 makes CONDITIONING from nothing (CLIPTextEncode
    needs a CLIP; ConditioningZeroOut and the other conditioning nodes need a CONDITIONING input).
    Registered only inside tests (`session.register_node`), never shipped. value=0 gives the zero
    conditioning; two different values make cond and uncond differ, so CFG matters.
    """

    NODE_ID = "MemGuardTest_ConstantConditioning"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 768, "min": 1, "max": 8192}),
            "tokens": ("INT", {"default": 77, "min": 1, "max": 4096}),
            "value": ("FLOAT", {"default": 0.0, "min": -100.0, "max": 100.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, width, tokens, value):
        import torch

        return ([[torch.full((1, tokens, width), float(value)), {}]],)
