"""Cheap, stable identities for ComfyUI models and text encoders: calibrations are only valid for
the model they were measured on, LoRAs and other weight patches included."""

from __future__ import annotations

import hashlib
import weakref

import torch

_SAMPLE_TENSORS = 16     # evenly spread over the leaf modules' parameters, by name
_SAMPLE_VALUES = 256     # leading values of each
_cache: "weakref.WeakKeyDictionary[object, tuple[object, str, int]]" = weakref.WeakKeyDictionary()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """Shape and leading values. A quantized tensor (newer ComfyUI's fp8 and mixed-precision
    weights) gives its stored data, which it cannot hand to numpy itself; a tensor with no data
    (the meta placeholder of a weight still loading) gives its shape alone."""
    data = getattr(t, "_qdata", t)
    head = str(tuple(t.shape)).encode()
    if data.is_meta or data.numel() == 0:
        return head
    return head + data.detach().reshape(-1)[:_SAMPLE_VALUES].to("cpu", torch.float32).numpy().tobytes()


def sampled_names(module: torch.nn.Module) -> list[str]:
    """The weights an identity samples: parameters of leaf modules, evenly spread by name. Newer
    ComfyUI (dynamic VRAM) casts the parameters of non-leaf modules when it loads a model, with no
    backup of the originals, so theirs would change with the moment the identity is taken."""
    names = sorted(f"{prefix}.{name}" if prefix else name
                   for prefix, m in module.named_modules() if next(m.children(), None) is None
                   for name, _ in m.named_parameters(recurse=False))
    step = max(1, len(names) // _SAMPLE_TENSORS)
    return names[::step][:_SAMPLE_TENSORS]


def _hash_weights(h, module: torch.nn.Module, backup: dict, prefix: str) -> None:
    """Sampled weights of `module`. ComfyUI patches LoRAs into the weights in place when it loads a
    model and keeps the originals in the patcher's backup (shared by clones): hash the originals,
    so an identity does not depend on which clone was loaded last."""
    sd = module.state_dict()
    for name in sampled_names(module):
        saved = backup.get(prefix + name)
        value = saved.weight if saved is not None else sd.get(name)
        if value is not None:
            h.update(name.encode())
            h.update(_tensor_bytes(value))


def _hash_adapter(h, adapter) -> None:
    """A LoRA-style weight adapter (ComfyUI wraps LoRA weights in these): its tensors."""
    weights = getattr(adapter, "weights", ())
    for w in weights if isinstance(weights, (tuple, list)) else (weights,):
        if isinstance(w, torch.Tensor):
            h.update(_tensor_bytes(w))


def _hash_patches(h, patches: dict) -> None:
    for key in sorted(patches):
        h.update(key.encode())
        for patch in patches[key]:
            h.update(repr(patch[0]).encode())            # strength
            value = patch[1]
            tensors = value if isinstance(value, (tuple, list)) else (value,)
            for t in tensors:
                if isinstance(t, torch.Tensor):
                    h.update(_tensor_bytes(t))
                else:
                    _hash_adapter(h, t)


def _injection_owners(injection) -> list:
    """What an injection's inject callable holds: the object of a bound method and the values its
    closure captured (newer ComfyUI's bypass LoRAs capture their BypassInjectionManager)."""
    inject = getattr(injection, "inject", None)
    owners = [getattr(inject, "__self__", None)]
    for cell in getattr(inject, "__closure__", None) or ():
        try:
            owners.append(cell.cell_contents)
        except ValueError:                               # a cell not yet filled
            pass
    return [o for o in owners if o is not None]


def _hash_injections(h, injections: dict) -> None:
    """Weight adapters applied at forward time instead of into the weights (newer ComfyUI's bypass
    LoRAs: `injections`, not `patches`). Their adapters and strengths are hashed when the injection
    shows them, as BypassInjectionManager and BypassForwardHook do; any other injection counts by
    its key and its function's name, so a region calibrated without it is still refused."""
    for key in sorted(injections):
        h.update(f"injection:{key}".encode())
        for injection in injections[key]:
            inject = getattr(injection, "inject", None)
            h.update(getattr(inject, "__qualname__", type(injection).__name__).encode())
            for owner in _injection_owners(injection):
                adapters = getattr(owner, "adapters", None)
                hooks = getattr(owner, "hooks", None)
                if isinstance(adapters, dict):           # a manager: module key -> (adapter, strength)
                    for name in sorted(adapters):
                        entry = adapters[name]
                        adapter, strength = entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, None)
                        h.update(f"{name}@{strength!r}".encode())
                        _hash_adapter(h, adapter)
                elif isinstance(hooks, (list, tuple)) or hasattr(owner, "adapter"):
                    for hook in hooks if isinstance(hooks, (list, tuple)) else (owner,):
                        h.update(repr(getattr(hook, "multiplier", None)).encode())
                        _hash_adapter(h, getattr(hook, "adapter", None))


def model_identity(patcher) -> str:
    """"<ModelClass>-<12 hex digits>" from the architecture, sampled weights and weight patches."""
    base = patcher.model
    if (getattr(base, "memguard_identity", None) and not getattr(patcher, "patches", None)
            and not getattr(patcher, "injections", None)):
        return base.memguard_identity   # the testbed: the same identity as in the core's own sampler
    stamp = (getattr(patcher, "patches_uuid", None), len(getattr(patcher, "patches", {})),
             _injection_stamp(patcher))
    cached = _cache.get(base)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    h = hashlib.sha256()
    config = type(getattr(base, "model_config", base)).__name__
    h.update(f"{config}/{type(base).__name__}/{getattr(base, 'model_type', '')}".encode())
    diffusion = getattr(base, "diffusion_model", None)
    if diffusion is not None:
        _hash_weights(h, diffusion, getattr(patcher, "backup", {}) or {}, "diffusion_model.")
    _hash_patches(h, getattr(patcher, "patches", {}))
    _hash_injections(h, getattr(patcher, "injections", None) or {})
    identity = f"{config}-{h.hexdigest()[:12]}"
    _cache[base] = (stamp, identity)
    return identity


def _injection_stamp(patcher) -> tuple:
    """Which injection objects a patcher holds (clones copy the lists, not the objects), so the
    cached identity is recomputed when one is added, removed or replaced. Weak references: an
    injection that holds the model must not keep it alive through this cache."""
    injections = getattr(patcher, "injections", None) or {}
    return tuple((key, tuple(_weak(i) for i in injections[key])) for key in sorted(injections))


def _weak(obj):
    try:
        return weakref.ref(obj)        # equal while alive and the same object; never after
    except TypeError:
        return id(obj)


def encoder_identity(clip) -> str:
    """The text encoder's identity: its weights, LoRA patches and the layer it outputs (CLIP Set
    Last Layer); the testbed's encoder is part of the testbed's identity."""
    if getattr(clip, "identity", None):
        return clip.identity
    patcher = getattr(clip, "patcher", None)
    encoder = getattr(clip, "cond_stage_model", None)
    h = hashlib.sha256(type(encoder).__name__.encode())
    if encoder is not None:
        _hash_weights(h, encoder, getattr(patcher, "backup", {}) or {}, "")
    _hash_patches(h, getattr(patcher, "patches", {}) if patcher is not None else {})
    _hash_injections(h, getattr(patcher, "injections", None) or {})
    h.update(repr(getattr(clip, "layer_idx", None)).encode())
    return h.hexdigest()[:12]
