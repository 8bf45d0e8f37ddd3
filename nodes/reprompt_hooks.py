"""The `reprompt` strategy inside ComfyUI's sampling (core/reprompt.py has the method).

The model patch's SAMPLER_SAMPLE wrapper owns the whole run, so after it, it can run it again:
1. during the run, a keyed APPLY_MODEL wrapper keeps the inputs of the model calls at the first
   sigma: per item, its positive (cond) and negative (uncond) cross-attention embedding and the
   other per-item model inputs;
2. for the flagged items, the positive embedding is moved with gradients through the model
   (outside ComfyUI's inference mode: the weights stay frozen, only the embedding is a leaf);
3. the sampler runs again from the same noise and seed, with the wrapper putting the moved
   embedding into the flagged items' positive rows; their rows of the output come from it. The
   whole batch is sampled again (ComfyUI batches conditioning per run, not per item), so the
   second run costs a full run; the other items' rows are kept from the first.
Conditioning that is not one positive and one negative per item (area or timestep-ranged conds,
several conds combined) is left as sampled, with a note saying so.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import comfy.patcher_extension
import torch

from ..core.reprompt import reprompt

APPLY_KEY = "memorization_guard_reprompt"
COND, UNCOND = 0, 1


class FirstCall:
    """APPLY_MODEL wrapper for one run: records the first sigma's inputs per item; with
    `substitute` set ({item row: embedding}) it puts those embeddings into the positive rows."""

    def __init__(self, batch: int, sigma0: float):
        self.batch, self.sigma0 = batch, float(sigma0)
        self.chunks: dict[int, dict] = {}
        self.substitute: dict[int, torch.Tensor] | None = None
        self.irregular = False

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        kinds = list(transformer_options.get("cond_or_uncond", []))
        b = self.batch
        regular = bool(kinds) and x.shape[0] == len(kinds) * b and c_crossattn is not None \
            and c_crossattn.shape[0] == x.shape[0]
        if self.substitute is None:
            # only until the first sigma's calls are in hand: no host sync on the rest of the run
            if not self.done and math.isclose(float(t.flatten()[0]), self.sigma0, rel_tol=1e-4, abs_tol=1e-6):
                if not regular or len(set(kinds)) != len(kinds):
                    self.irregular = True
                else:
                    for k, kind in enumerate(kinds):
                        if kind in self.chunks:
                            continue
                        rows = slice(k * b, (k + 1) * b)
                        self.chunks[kind] = {
                            "x": x[rows].clone(),
                            "c_crossattn": c_crossattn[rows].clone(),
                            "c_concat": None if c_concat is None else c_concat[rows],
                            "kwargs": {n: (v[rows] if isinstance(v, torch.Tensor) and v.shape[:1] == x.shape[:1] else v)
                                       for n, v in kwargs.items()},
                        }
        elif regular:
            c_crossattn = c_crossattn.clone()
            for k, kind in enumerate(kinds):
                if kind == COND:
                    for row, ctx in self.substitute.items():
                        c_crossattn[k * b + row] = ctx.to(c_crossattn.device, c_crossattn.dtype)
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    @property
    def done(self) -> bool:
        return self.irregular or (COND in self.chunks and UNCOND in self.chunks)

    @property
    def ready(self) -> bool:
        return not self.irregular and COND in self.chunks and UNCOND in self.chunks


def with_apply_wrapper(model_options: dict, wrapper: FirstCall) -> dict:
    """A copy of `model_options` whose transformer_options carry `wrapper` under this pack's key
    (the wrappers dict is copied, so the model's own options never see it)."""
    to = dict(model_options.get("transformer_options", {}))
    wrappers = {kind: {key: list(fns) for key, fns in by_key.items()} for kind, by_key in to.get("wrappers", {}).items()}
    to["wrappers"] = wrappers
    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, APPLY_KEY, wrapper, to)
    return {**model_options, "transformer_options": to}


def _unchanged(t):
    return t


@contextmanager
def weights_copied_per_call(diffusion_model):
    """Let autograd run through a model whose weights were made in ComfyUI's inference mode.

    Such weights cannot be saved for backward. ComfyUI's own layers (comfy.ops) copy their weight
    for every call when they have a weight function (the hook its LoRA training uses), and a copy
    made outside inference mode is an ordinary tensor; so for the descent each of them gets a
    no-op weight function, removed afterwards. Plain torch layers with inference-mode weights are
    named in the error."""
    touched, plain = [], []
    for name, m in diffusion_model.named_modules():
        own = list(m.parameters(recurse=False))
        if hasattr(m, "weight_function") and hasattr(m, "bias_function"):
            touched.append((m, m.__dict__.get("weight_function"), m.__dict__.get("bias_function")))
            m.weight_function = [*m.weight_function, _unchanged]   # on the instance: the class list is shared
            m.bias_function = [*m.bias_function, _unchanged]
        elif any(p.is_inference() for p in own):
            plain.append(name or type(m).__name__)
    try:
        if plain:
            raise RuntimeError(f"layers {', '.join(plain[:3])}{' ...' if len(plain) > 3 else ''} hold weights made in "
                               "inference mode outside ComfyUI's ops")
        yield
    finally:
        for m, weight_fns, bias_fns in touched:
            for attr, old in (("weight_function", weight_fns), ("bias_function", bias_fns)):
                if old is None:
                    del m.__dict__[attr]
                else:
                    setattr(m, attr, old)


def move_embeddings(base_model, first: FirstCall, rows: list[int], target: float):
    """(moved embeddings [len(rows), ...], core.reprompt.Reprompted) for the flagged rows, from the
    recorded first call; gradients flow to the embedding only."""
    cond, unc = first.chunks[COND], first.chunks[UNCOND]
    idx = torch.tensor(rows)

    def pick(d, key):
        v = d[key]
        return None if v is None else v[idx.to(v.device)].clone()

    def inputs(d):
        return {n: (v[idx.to(v.device)].clone() if isinstance(v, torch.Tensor) and v.shape[:1] == (first.batch,) else v)
                for n, v in d["kwargs"].items()}

    with torch.inference_mode(False), weights_copied_per_call(base_model.diffusion_model):
        x = pick(cond, "x")
        sigma = torch.full((len(rows),), first.sigma0, device=x.device, dtype=x.dtype)
        cond_inputs, cond_concat = inputs(cond), pick(cond, "c_concat")

        def denoise(xx, s, ctx):
            return base_model.apply_model(xx, s, c_concat=cond_concat, c_crossattn=ctx, **cond_inputs)

        with torch.no_grad():
            d_u = base_model.apply_model(x, sigma, c_concat=pick(unc, "c_concat"), c_crossattn=pick(unc, "c_crossattn"),
                                         **inputs(unc))
        moved = reprompt(denoise, x, first.sigma0, pick(cond, "c_crossattn"), d_u, target)
    return moved
