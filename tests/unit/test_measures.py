import math

import pytest
import torch

from memguard.core.measures import guidance_gap, item_norm, measure_step, scratch_for, to_vp, update_energy_map


def test_item_norm_is_per_item_over_all_other_dims():
    t = torch.ones(3, 4, 2, 2)
    t[1] *= 2
    assert torch.allclose(item_norm(t), torch.tensor([4.0, 8.0, 4.0]))
    video = torch.ones(2, 4, 3, 2, 2)
    assert torch.allclose(item_norm(video), torch.full((2,), math.sqrt(48)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_latents_are_measured_in_float32(dtype):
    x = (torch.randn(2, 4, 8, 8) * 100).to(dtype)
    n = item_norm(x)
    assert n.dtype == torch.float32
    assert torch.allclose(n, x.float().flatten(1).norm(dim=1))
    m = measure_step(x, x * 0.5, 10.0, 5.0, x * 0.1)
    for v in (m.latent, m.update, m.clean):
        assert v.dtype == torch.float32 and torch.isfinite(v).all()


def test_step_quantities_follow_the_method():
    x_prev, x_next, d = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    m = measure_step(x_prev, x_next, 3.0, 1.5, d)
    z_prev, z_next = x_prev / math.sqrt(1 + 9), x_next / math.sqrt(1 + 2.25)
    assert torch.allclose(m.latent, item_norm(z_next))
    assert torch.allclose(m.update, item_norm(z_next - z_prev))
    assert torch.allclose(m.clean, item_norm(d))
    assert torch.isnan(m.gap).all()
    last = measure_step(x_prev, x_next, 0.5, 0.0, None)   # the clean norm falls back to the latent
    assert torch.allclose(last.clean, item_norm(x_next))


def test_guidance_gap_is_wens_noise_difference():
    c, u = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    assert torch.allclose(guidance_gap(c, u, 2.0), torch.full((2,), 4.0 / 2.0))
    assert guidance_gap(c, None, 2.0) is None


def test_update_energy_map_keeps_spatial_dims():
    x = torch.zeros(2, 4, 3, 5, 5)
    y = x.clone()
    y[:, :, 1, 2, 3] = 1.0
    e = update_energy_map(x, y, 0.0, 0.0)
    assert e.shape == (2, 3, 5, 5)
    assert e[:, 1, 2, 3].eq(4.0).all() and e.sum() == 8.0
    assert torch.allclose(to_vp(torch.ones(1), 1.0), torch.tensor([1 / math.sqrt(2)]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reused_working_memory_gives_the_textbook_values_to_the_bit(dtype):
    torch.manual_seed(3)
    scratch = None
    for shape in [(5, 4, 8, 8), (5, 4, 8, 8), (2, 4, 3, 6, 6)]:     # reused, then a new shape
        x0, x1, d, c, u = (torch.randn(shape).to(dtype) * 3 for _ in range(5))
        x0 = x0.transpose(-1, -2)                                  # not contiguous
        scratch = scratch_for(x1, scratch)
        gap = guidance_gap(c, u, 1.7, scratch)
        m = measure_step(x0, x1, 2.5, 1.7, d, gap, scratch)
        assert scratch.shape[1:] == shape and scratch.dtype == torch.float32
        assert torch.equal(m.latent, item_norm(to_vp(x1, 1.7)))
        assert torch.equal(m.update, item_norm(to_vp(x1, 1.7) - to_vp(x0, 2.5)))
        assert torch.equal(m.clean, item_norm(d))
        assert torch.equal(gap, item_norm(u.float() - c.float()) / 1.7)
        energy = update_energy_map(x0, x1, 2.5, 1.7, scratch)
        assert torch.equal(energy, (to_vp(x1, 1.7) - to_vp(x0, 2.5)).pow(2).sum(dim=1))


def test_prediction_agreement_is_the_cosine_of_the_centred_predictions():
    from memguard.core.measures import prediction_agreement
    torch.manual_seed(5)
    c = torch.randn(3, 4, 5, 5)
    u = torch.randn(3, 4, 5, 5)
    a = prediction_agreement(c, u)
    cc, uu = c - c.mean(dim=(2, 3), keepdim=True), u - u.mean(dim=(2, 3), keepdim=True)
    expected = torch.nn.functional.cosine_similarity(cc.flatten(1), uu.flatten(1), dim=1)
    assert torch.allclose(a, expected, atol=1e-5)
    # the same picture in other colours (a per-channel offset) and brightness agrees fully
    assert torch.allclose(prediction_agreement(c, 2 * c + 3), torch.ones(3), atol=1e-5)
    assert prediction_agreement(c, None) is None
    # with working memory the result is the same to the bit, and the inputs are left alone
    c0 = c.clone()
    assert torch.equal(prediction_agreement(c, u, scratch_for(c)), a) and torch.equal(c, c0)
    m = measure_step(c, u, 2.0, 1.0, u, None, None, a)
    assert torch.equal(m.agreement, a) and torch.isnan(measure_step(c, u, 2.0, 1.0, u).agreement).all()
