"""The guarded sampler on an analytic toy model (tests/unit/toy.py)."""

import re

import pytest
import torch
from toy_model import denoise, karras

from memguard.core.guard import RESTART_STRATEGIES, STRATEGIES, GuardConfig
from memguard.core.region import RegionMismatch
from memguard.core.sampling import calibrate, cfg_pair, guarded_sample, plain_sample
from memguard.core.settings import RunSettings

STEPS, SHAPE, CFG = 12, (4, 6, 6), 7.5
SIGMAS = karras(STEPS)


def settings(sampler="euler", steps=STEPS, shape=SHAPE, cfg=CFG):
    return RunSettings("toy", sampler, "karras", steps, cfg, shape)


def mus(n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g) * scale


def noise(n, seed, shape=SHAPE):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)) * SIGMAS[0]


@pytest.fixture(scope="module")
def region():
    runs = [(cfg_pair(denoise, mus(8, 0.3, s), torch.zeros(8, *SHAPE)), noise(8, 100 + s)) for s in range(6)]
    return calibrate(runs, SIGMAS, settings(), CFG)


def test_detect_mode_is_bit_identical_to_plain_sampling(region):
    pair = cfg_pair(denoise, torch.cat([mus(3, 0.3, 50), mus(1, 4.0, 51)]), torch.zeros(4, *SHAPE))
    x = noise(4, 7)
    plain = plain_sample(pair, x, SIGMAS, CFG)
    guarded = guarded_sample(pair, x, SIGMAS, settings(), CFG, region=region, config=GuardConfig(mode="detect"))
    assert torch.equal(plain, guarded.latent)
    flagged = [it.flagged for it in guarded.report.items]
    assert flagged == [False, False, False, True]


def test_euler_and_ddim_agree():
    pair = cfg_pair(denoise, mus(2, 0.3, 1), torch.zeros(2, *SHAPE))
    a = plain_sample(pair, noise(2, 3), SIGMAS, CFG, "euler")
    b = plain_sample(pair, noise(2, 3), SIGMAS, CFG, "ddim")
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("exact", [True, False])
def test_mitigation_touches_only_flagged_items(region, strategy, exact):
    pair = cfg_pair(denoise, torch.cat([mus(3, 0.3, 60), mus(1, 4.0, 61)]), torch.zeros(4, *SHAPE))
    x = noise(4, 8)
    plain = plain_sample(pair, x, SIGMAS, CFG)
    r = guarded_sample(pair, x, SIGMAS, settings(), CFG, region=region,
                       config=GuardConfig(mode="mitigate", strategy=strategy, exact=exact))
    assert torch.equal(r.latent[:3], plain[:3])
    assert not torch.equal(r.latent[3], plain[3])
    item = r.report.items[3]
    assert item.flagged and item.active_steps
    if strategy == "stability":
        assert item.corrected_steps
    else:
        assert item.steered_steps
    # restarting strategies always sample the item again; the others call the model again only in exact mode
    assert (r.report.extra_model_calls > 0) == (exact or strategy in RESTART_STRATEGIES)


def test_reprompt_moves_a_flagged_prompt_until_its_pull_is_ordinary_and_samples_it_again(region):
    cond, uncond = torch.cat([mus(2, 0.3, 62), mus(1, 1.0, 63)]), torch.zeros(3, *SHAPE)
    x = noise(3, 9)
    r = guarded_sample(cfg_pair(denoise, cond, uncond), x, SIGMAS, settings(), CFG, region=region,
                       config=GuardConfig(mode="mitigate", strategy="reprompt"))
    plain = plain_sample(cfg_pair(denoise, cond, uncond), x, SIGMAS, CFG)
    assert torch.equal(r.latent[:2], plain[:2])
    assert r.report.items[2].flagged and r.report.items[2].steered_steps == list(range(STEPS))
    note = next(n for n in r.report.notes if n.startswith("item 2: re-prompted"))
    before, after, ordinary = map(float, re.search(r"gap ([\d.]+) -> ([\d.]+), ordinary ([\d.]+)", note).groups())
    assert after <= ordinary < before     # moved until its first-step pull is the calibration's mean
    assert not torch.equal(r.latent[2], plain[2])
    assert r.report.extra_model_calls > STEPS   # the descent and the second run are counted


def test_reprompt_without_a_tensor_embedding_says_so(region):
    cond, uncond = mus(1, 4.0, 63), torch.zeros(1, *SHAPE)
    inner = cfg_pair(denoise, cond, uncond)
    r = guarded_sample(lambda *a: inner(*a), noise(1, 9), SIGMAS, settings(), CFG, region=region,
                       config=GuardConfig(mode="mitigate", strategy="reprompt"))
    assert r.report.items[0].flagged
    assert any("reprompt needs the prompt embedding" in n for n in r.report.notes)


@pytest.mark.parametrize("off_scale", [0.0, -0.5])
def test_unconditional_runs_a_flagged_item_at_off_scale_from_the_flagged_step(region, off_scale):
    # flagged at step 0 and that step redone (exact): the item is sampled at guidance off_scale throughout
    cond, uncond = torch.cat([mus(1, 0.3, 60), mus(1, 4.0, 61)]), torch.zeros(2, *SHAPE)
    x = noise(2, 8)
    r = guarded_sample(cfg_pair(denoise, cond, uncond), x, SIGMAS, settings(), CFG, region=region,
                       config=GuardConfig(mode="mitigate", strategy="unconditional", off_scale=off_scale))
    assert r.report.items[1].first_flagged_step == 0 and not r.report.items[0].flagged
    alone = plain_sample(cfg_pair(denoise, cond[1:], uncond[1:]), x[1:], SIGMAS, off_scale)
    assert torch.allclose(r.latent[1:], alone, atol=1e-5)


def test_repel_takes_its_pattern_from_the_conditional_prediction_at_the_flagged_step(region):
    # the conditional model's clean prediction is its estimate of the image the caption maps to; the
    # guided one overshoots it (cfg 7.5) and differs from it in layout wherever uncond has structure
    from memguard.core.mitigate import unit_pattern

    cond, uncond = torch.cat([mus(1, 0.3, 60), mus(1, 4.0, 61)]), torch.zeros(2, *SHAPE)
    uncond[1] = mus(1, 2.0, 64)[0]
    seen = {}

    def watch(step, guard):
        if guard.repelled.any() and "pattern" not in seen:
            seen["pattern"] = guard.copy_pattern[1].clone()
            seen["step"] = step

    def recording_pair(x, sigma, rows, need_uncond):
        c, u = cfg_pair(denoise, cond, uncond)(x, sigma, rows, need_uncond)
        seen.setdefault("cond", []).append((float(sigma[0]), c.clone(), u.clone()))
        return c, u

    r = guarded_sample(recording_pair, noise(2, 8), SIGMAS, settings(), CFG, region=region,
                       config=GuardConfig(mode="mitigate", strategy="repel", exact=False), callback=watch)
    step = r.report.items[1].first_flagged_step
    assert step == seen["step"] and not r.report.items[0].flagged
    _, c, u = next(e for e in seen["cond"] if e[0] == float(SIGMAS[step + 1]))   # D(x_{step+1}), as observed
    assert torch.allclose(seen["pattern"], unit_pattern(c[1:2])[0], atol=1e-6)
    guided = u[1:2] + CFG * (c[1:2] - u[1:2])
    assert not torch.allclose(seen["pattern"], unit_pattern(guided)[0], atol=1e-3)


def test_non_finite_latents_are_reported_not_raised(region):
    pair = cfg_pair(denoise, mus(2, 0.3, 70), torch.zeros(2, *SHAPE))
    x = noise(2, 9)
    x[1, 0, 0, 0] = float("nan")
    r = guarded_sample(pair, x, SIGMAS, settings(), CFG, region=region, config=GuardConfig(mode="mitigate"))
    assert r.report.items[1].verdict.startswith("invalid: non-finite")
    assert r.report.items[1].non_finite_step == 0
    assert r.report.items[0].verdict == "clean"
    assert any("non-finite" in n for n in r.report.notes)
    r.report.to_json()   # NaNs never reach the JSON


def test_empty_batch(region):
    pair = cfg_pair(denoise, torch.zeros(0, *SHAPE), torch.zeros(0, *SHAPE))
    r = guarded_sample(pair, torch.zeros(0, *SHAPE), SIGMAS, settings(), CFG, region=region)
    assert r.latent.shape == (0, *SHAPE) and r.report.items == []


def test_more_steps_than_calibrated_is_a_clear_error(region):
    pair = cfg_pair(denoise, mus(1, 0.3, 1), torch.zeros(1, *SHAPE))
    with pytest.raises(RegionMismatch, match="steps: calibrated 12, this run 20"):
        guarded_sample(pair, noise(1, 1), karras(20), settings(steps=20), CFG, region=region)


def test_another_noise_schedule_is_named(region):
    pair = cfg_pair(denoise, mus(1, 0.3, 1), torch.zeros(1, *SHAPE))
    other = karras(STEPS, sigma_min=0.1)
    with pytest.raises(RegionMismatch, match="noise schedule: calibrated sigmas 14.6..0.03, this run 14.6..0.1"):
        guarded_sample(pair, noise(1, 1), other, settings(), CFG, region=region)


def test_settings_must_match_the_sigmas():
    pair = cfg_pair(denoise, mus(1, 0.3, 1), torch.zeros(1, *SHAPE))
    with pytest.raises(ValueError, match="13 steps but its settings say 12"):
        guarded_sample(pair, noise(1, 1), karras(13), settings(), CFG)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_latents(region, dtype):
    pair = cfg_pair(denoise, torch.cat([mus(1, 0.3, 80), mus(1, 4.0, 81)]).to(dtype), torch.zeros(2, *SHAPE, dtype=dtype))
    r = guarded_sample(pair, noise(2, 10).to(dtype), SIGMAS, settings(), CFG, region=region,
                       config=GuardConfig(mode="mitigate"))
    assert r.latent.dtype == dtype
    assert [it.flagged for it in r.report.items] == [False, True]


def test_video_latents_and_cfg_one_is_never_clean():
    shape = (4, 3, 4, 4)
    pair = cfg_pair(denoise, torch.zeros(2, *shape), torch.zeros(2, *shape))
    x = torch.randn(2, *shape) * SIGMAS[0]
    r = guarded_sample(pair, x, SIGMAS, settings(shape=shape, cfg=1.0), 1.0)
    assert r.latent.shape == (2, *shape)
    assert all(it.verdict.startswith("unavailable: no classifier-free guidance") for it in r.report.items)
    assert all(not it.flagged for it in r.report.items)
    assert r.guard.heat_map(8, 8).shape == (2, 8, 8)


def test_start_latent_matches_comfyui_noise_scaling():
    from memguard.core.schedule import DiscreteSchedule, start_latent

    schedule = DiscreteSchedule()
    unit = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3))
    full = schedule.sigmas_for(20, "normal")
    # a full denoise starts with a VP latent that is exactly the unit noise
    assert torch.allclose(start_latent(unit, full, schedule.sigma_max) / (1 + full[0] ** 2).sqrt(), unit)
    partial = schedule.sigmas_for(20, "normal", denoise=0.5)
    assert torch.equal(start_latent(unit, partial, schedule.sigma_max), unit * float(partial[0]))


def test_calibration_without_guidance_is_refused():
    runs = [(cfg_pair(denoise, mus(2, 0.3, 1), torch.zeros(2, *SHAPE)), noise(2, 1))]
    with pytest.raises(ValueError, match="cfg > 1"):
        calibrate(runs, SIGMAS, settings(cfg=1.0), 1.0)
