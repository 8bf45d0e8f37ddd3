"""core.hooked drives the guard from a host's hooks; on a first-order sampler its folded
corrections must reproduce the core's own exact sampler."""

import pytest
import torch
from toy_model import denoise, karras

from memguard.core.guard import RESTART_STRATEGIES, STRATEGIES, GuardConfig, StabilityGuard
from memguard.core.hooked import HookedRun
from memguard.core.sampling import calibrate, cfg_pair, guarded_sample, plain_sample
from memguard.core.settings import RunSettings

STEPS, SHAPE, CFG = 12, (4, 6, 6), 7.5
SIGMAS = karras(STEPS)
SETTINGS = RunSettings("toy", "euler", "karras", STEPS, CFG, SHAPE)


def mus(n, scale, seed):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture(scope="module")
def region():
    runs = [(cfg_pair(denoise, mus(8, 0.3, s), torch.zeros(8, *SHAPE)),
             torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(100 + s)) * SIGMAS[0]) for s in range(6)]
    return calibrate(runs, SIGMAS, SETTINGS, CFG)


def host_euler(cond_mu, x, run: HookedRun, exact: bool):
    """A stand-in for ComfyUI's loop: Euler steps, a post-CFG hook at every model call, a callback."""
    sig = [float(s) for s in SIGMAS]
    uncond_mu = torch.zeros_like(cond_mu)

    def model(xx, s, mu):
        return denoise(xx, torch.full((xx.shape[0],), s), mu)

    for i in range(STEPS):
        c, u = model(x, sig[i], cond_mu), model(x, sig[i], uncond_mu)
        d = u + CFG * (c - u)                                   # ComfyUI's own CFG
        reevaluate = (lambda xf, s=sig[i]: (model(xf, s, cond_mu), model(xf, s, uncond_mu))) if exact else None
        d = run.on_eval(x, sig[i], c, u, d, reevaluate)
        run.on_step(i, x, d)
        x = x + (x - d) / sig[i] * (sig[i + 1] - sig[i])
    return run.finish(x)


def test_detect_mode_changes_nothing(region):
    cond = torch.cat([mus(2, 0.3, 1), mus(1, 4.0, 2)])
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(5)) * SIGMAS[0]
    guard = StabilityGuard(SETTINGS, SIGMAS, 3, region, GuardConfig(mode="detect"))
    out = host_euler(cond, x, HookedRun(guard, CFG, "euler"), exact=False)
    assert torch.allclose(out, plain_sample(cfg_pair(denoise, cond, torch.zeros_like(cond)), x, SIGMAS, CFG), atol=1e-5)
    assert [it.flagged for it in guard.report().items] == [False, False, True]
    assert guard.observed == STEPS


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s not in RESTART_STRATEGIES])
def test_folded_mitigation_reproduces_the_exact_core_sampler_on_euler(region, strategy):
    cond = torch.cat([mus(2, 0.3, 3), mus(2, 4.0, 4)])
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(6)) * SIGMAS[0]
    config = GuardConfig(mode="mitigate", strategy=strategy, exact=True)
    guard = StabilityGuard(SETTINGS, SIGMAS, 4, region, config)
    hooked = host_euler(cond, x, HookedRun(guard, CFG, "euler"), exact=True)
    core = guarded_sample(cfg_pair(denoise, cond, torch.zeros_like(cond), batched=False), x, SIGMAS, SETTINGS, CFG,
                          region=region, config=config)
    assert torch.allclose(hooked, core.latent, atol=1e-4, rtol=1e-4)
    assert [it.flagged for it in guard.report().items] == [it.flagged for it in core.report.items]


def test_multi_evaluation_samplers_are_observed_at_the_callback(region):
    cond = mus(2, 4.0, 7)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(8)) * SIGMAS[0]
    guard = StabilityGuard(SETTINGS, SIGMAS, 2, region, GuardConfig(mode="detect"))
    run = HookedRun(guard, CFG, "heun")
    assert not run.per_eval
    host_euler(cond, x, run, exact=False)
    assert guard.observed == STEPS and all(it.flagged for it in guard.report().items)


def test_video_latents_through_the_hooks():
    shape = (4, 3, 4, 4)
    settings = RunSettings("toy", "euler", "karras", STEPS, CFG, shape)
    guard = StabilityGuard(settings, SIGMAS, 2, None, GuardConfig())
    run = HookedRun(guard, CFG, "euler")
    x = torch.randn(2, *shape) * SIGMAS[0]
    sig = [float(s) for s in SIGMAS]
    for i in range(STEPS):
        c = denoise(x, torch.full((2,), sig[i]), torch.ones(2, *shape))
        u = denoise(x, torch.full((2,), sig[i]), torch.zeros(2, *shape))
        d = run.on_eval(x, sig[i], c, u, u + CFG * (c - u))
        run.on_step(i, x, d)
        x = x + (x - d) / sig[i] * (sig[i + 1] - sig[i])
    run.finish(x)
    assert guard.observed == STEPS and guard.report().items[0].verdict.startswith("unavailable: no stability region")
