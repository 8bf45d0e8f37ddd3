"""A SAMPLER that wraps another one and runs it one step at a time, with the guard between steps.

For SamplerCustom / SamplerCustomAdvanced. Running the stock single-step function on 2-sigma
slices gives exact per-step control: the latent can be corrected or a step redone before the
next one starts, with no folding approximation. Each step's first model call is made once (the
evaluation the guard needs at the proposal is cached and served to the next slice). Multistep
samplers lose their history when sliced, so only samplers known to be slice-safe are accepted;
the others are refused with a pointer to the model patch.
"""

from __future__ import annotations

import inspect

import comfy.k_diffusion.sampling as kds
import comfy.model_management
import comfy.model_patcher
import comfy.samplers

from ..core.guard import StabilityGuard
from ._compat import executing_node_id, send_ui_event
from .guard_hooks import STEP_EVENT, GuardSpec, publish_run, sampler_name, start_guard, step_event

# samplers whose steps depend only on (x, sigma_i, sigma_i+1) and the shared noise sampler: running
# them on 2-sigma slices is exactly the unsliced run (checked against ComfyUI 0.3.75's k-diffusion);
# the rest keep a history or read the whole schedule, and slicing would silently change them
SLICE_SAFE = frozenset({
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "dpm_2", "dpm_2_ancestral",
    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "ddpm", "lcm",
})
# sampler options that act on each step alone; any other option set away from its default may
# read the whole schedule (euler's s_churn is divided by the step count, newer lcm's s_noise_end
# is interpolated over it), which a one-step slice would silently change
PER_STEP_OPTIONS = frozenset({"eta", "s_noise", "r"})


def schedule_dependent_options(inner) -> list[str]:
    """The options of `inner` that would act differently on one-step slices than on the whole run."""
    defaults = {k: p.default for k, p in inspect.signature(inner.sampler_function).parameters.items()}
    options = dict(getattr(inner, "extra_options", {}))
    constant_noise = options.get("s_noise", defaults.get("s_noise", 1.0))
    return [f"{k}={v}" for k, v in options.items()
            if k not in PER_STEP_OPTIONS and not (k in defaults and defaults[k] == v)
            and not (k == "s_noise_end" and v == constant_noise)]


def guarded_sampler(inner, spec: GuardSpec):
    name = sampler_name(inner)
    if not hasattr(inner, "sampler_function"):
        raise ValueError(f"The guarded SAMPLER can wrap ComfyUI's k-diffusion samplers; {type(inner).__name__} is not one.")
    if name not in SLICE_SAFE:
        raise ValueError(f"The guarded SAMPLER steps one sigma at a time, which would change the multistep sampler "
                         f"'{name}' (it keeps a history across steps or reads the whole schedule). Use "
                         "'Memorization Guard (model patch)' with it instead, or one of: " + ", ".join(sorted(SLICE_SAFE)) + ".")
    changed = schedule_dependent_options(inner)
    if changed:
        raise ValueError(f"The guarded SAMPLER steps one sigma at a time, and the option(s) {', '.join(changed)} of "
                         f"'{name}' depend on the whole schedule, so the result would silently differ. Leave them at "
                         "their defaults, or use 'Memorization Guard (model patch)' with this sampler.")
    return comfy.samplers.KSAMPLER(_sample, extra_options={"memguard_inner": inner, "memguard_spec": spec},
                                   inpaint_options=getattr(inner, "inpaint_options", {}))


class _Proxy:
    """The model as the inner sampler sees it: serves the cached evaluation at a step's start."""

    def __init__(self, model, serve):
        self._model, self._serve = model, serve

    def __call__(self, x, sigma, **kwargs):
        return self._serve(x, sigma, kwargs)

    def __getattr__(self, name):      # samplers read model.inner_model... and model_patcher
        return getattr(self._model, name)


def _sample(model, x, sigmas, extra_args=None, callback=None, disable=None, *, memguard_inner, memguard_spec, **kw):
    inner, spec = memguard_inner, memguard_spec
    extra_args = dict(extra_args or {})
    guider = model.inner_model
    cfg = float(getattr(guider, "cfg", 1.0))
    name = sampler_name(inner)
    sig = [float(s) for s in sigmas]
    guard = start_guard(spec, guider, name, sigmas, x)
    has_uncond = cfg != 1.0
    seen = {}   # the latest evaluation's cond/uncond predictions

    def capture(args):
        seen["cond"] = args["cond_denoised"]
        seen["uncond"] = args["uncond_denoised"] if args.get("uncond") is not None else None
        return _with_guidance(args["denoised"], seen["cond"], seen["uncond"], guard, cfg)

    model_options = comfy.model_patcher.set_model_options_post_cfg_function(dict(extra_args.get("model_options", {})), capture)
    run_args = {**extra_args, "model_options": model_options}
    cache = {"x": None}

    def evaluate(xx, s):
        return model(xx, s * xx.new_ones([xx.shape[0]]), **run_args)

    def serve(xx, sigma, kwargs):
        if cache["x"] is xx and abs(float(sigma.flatten()[0]) - cache["sigma"]) < 1e-6 * max(1.0, cache["sigma"]):
            return _with_guidance(cache["denoised"], cache["cond"], cache["uncond"], guard, cfg)
        return model(xx, sigma, **kwargs)

    proxy = _Proxy(model, serve)
    params = inspect.signature(inner.sampler_function).parameters
    noise = {}
    if "noise_sampler" in params and extra_args.get("noise_sampler") is None:
        # one noise sampler for the whole run, as the unsliced sampler would have
        seed = extra_args.get("seed")
        if name in ("dpmpp_sde", "dpmpp_sde_gpu"):
            positive = sigmas[sigmas > 0]
            sampler = kds.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=seed, cpu=name == "dpmpp_sde")
        else:
            sampler = kds.default_noise_sampler(x, seed=seed)
        noise["noise_sampler"] = _ReplayedOnRedo(sampler)
    node = executing_node_id()

    def remember(xx, s, d):
        cache.update(x=xx, sigma=s, denoised=d, cond=seen.get("cond"), uncond=seen.get("uncond") if has_uncond else None)

    def one_step(j, x_start):
        def cb(d):
            if callback is not None:
                callback({**d, "i": j})
        return inner.sampler_function(proxy, x_start, sigmas[j:j + 2].clone(), extra_args=dict(run_args), callback=cb,
                                      disable=True, **inner.extra_options, **noise, **kw)

    remember(x, sig[0], evaluate(x, sig[0]))
    guard.begin(cache["cond"], cache["uncond"])
    for j in range(len(sig) - 1):
        comfy.model_management.throw_exception_if_processing_interrupted()
        x_start, c_start, u_start = x, cache["cond"], cache["uncond"]
        x_next = one_step(j, x_start)
        last = j + 1 == len(sig) - 1
        d_next = None if last else evaluate(x_next, sig[j + 1])
        cond = None if last else seen.get("cond")
        uncond = None if (last or not has_uncond) else seen.get("uncond")
        act = guard.observe(j, x_start, x_next, d_next, cond, uncond)
        if not last and act.rewind is not None and bool(act.rewind.any()) and spec.config.exact:
            # redo step j with the item's guidance off, from the same start (served from the cache)
            # and the same noise; only the flagged items take the redone step
            cache.update(x=x_start, sigma=sig[j], cond=c_start, uncond=u_start)
            rows = act.rewind.nonzero().flatten().to(x_next.device)
            redo = one_step(j, x_start)
            x_next = x_next.clone()
            x_next[rows] = redo[rows]
            d_next = evaluate(x_next, sig[j + 1])
            guard.note_extra_evals(int(act.rewind.sum()))
        elif not last and act.reguide is not None and bool(act.reguide.any()):
            d_next = _with_guidance(d_next, seen.get("cond"), seen.get("uncond"), guard, cfg)
        if bool(act.correct.any()):
            rows = act.correct.nonzero().flatten().to(x_next.device)
            x_next = x_next.clone()
            x_next[rows] = act.x_corrected[rows.cpu()].to(x_next.device, x_next.dtype)
            if not last:
                d_next = evaluate(x_next, sig[j + 1])
                guard.note_extra_evals(len(rows))
        if not last:
            remember(x_next, sig[j + 1], d_next)
        if node is not None and spec.live_events:
            send_ui_event(STEP_EVENT, step_event(node, guard, j))
        x = x_next

    base = guider.model_patcher.model
    samples = base.process_latent_out(base.model_sampling.inverse_noise_scaling(sigmas[-1], x))
    publish_run(spec, guard, guider, samples, node, last_step_event=False)   # the loop sent every step
    return x


class _ReplayedOnRedo:
    """A noise sampler that gives a redone step the same noise as its first try, so a redo changes
    nothing but the flagged items' guidance (and the generator stays where the stock run has it)."""

    def __init__(self, sampler):
        self.sampler, self.key, self.noise = sampler, None, None

    def __call__(self, sigma, sigma_next):
        key = (float(sigma), float(sigma_next))
        if key != self.key:
            self.key, self.noise = key, self.sampler(sigma, sigma_next)
        return self.noise


def _with_guidance(denoised, cond, uncond, guard: StabilityGuard, cfg: float):
    """Items whose guidance the guard steers get its guidance; the others keep ComfyUI's."""
    if uncond is None or cond is None or not bool(guard.steering.any()):
        return denoised
    rows = guard.steering.nonzero().flatten().to(denoised.device)
    out = denoised.clone()
    out[rows] = guard.guided_prediction(cond, uncond, cfg)[rows].to(out.dtype)
    return out

