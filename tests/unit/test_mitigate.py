import math

import torch

from memguard.core.measures import item_norm, to_vp
from memguard.core.mitigate import guided, project_out, shifted_prediction, stability_correction


def test_rescale_sets_the_clean_norm_when_clamps_are_loose():
    torch.manual_seed(0)
    x_prev, x_next, d = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4) * 5
    wide = (0.0, 1e9)
    out = stability_correction(x_prev, x_next, d, 2.0, 1.0, clean_mean=3.0, update_band=wide,
                               latent_band=wide, strong=torch.zeros(3, dtype=torch.bool))
    d_new = d * (3.0 / item_norm(d)).view(-1, 1, 1, 1)
    assert torch.allclose(out, x_next + (d_new - d), atol=1e-5)   # coefficient 1 in x-space


def test_update_clamp_for_strong_items_only():
    torch.manual_seed(1)
    x_prev, x_next, d = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4) * 50, torch.randn(2, 4, 4, 4)
    out = stability_correction(x_prev, x_next, d, 2.0, 1.0, clean_mean=1.0, update_band=(0.5, 1.0),
                               latent_band=(0.0, 1e9), strong=torch.tensor([True, False]))
    n_upd = item_norm(to_vp(out, 1.0) - to_vp(x_prev, 2.0))
    assert abs(float(n_upd[0]) - 1.0) < 1e-4
    assert n_upd[1] > 1.0


def test_latent_clamp_for_every_item():
    torch.manual_seed(2)
    x_prev, x_next, d = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4) * 50, torch.randn(2, 4, 4, 4)
    out = stability_correction(x_prev, x_next, d, 2.0, 1.0, clean_mean=1.0, update_band=(0.0, 1e9),
                               latent_band=(0.0, 6.0), strong=torch.tensor([True, False]))
    assert torch.allclose(item_norm(to_vp(out, 1.0)), torch.full((2,), 6.0), atol=1e-4)


def test_guided_per_item_scales_and_shift():
    c, u = torch.ones(2, 3), torch.zeros(2, 3)
    out = guided(c, u, torch.tensor([7.5, 0.0]))
    assert torch.equal(out[0], torch.full((3,), 7.5)) and torch.equal(out[1], torch.zeros(3))
    d, x, x2 = torch.zeros(1, 2), torch.ones(1, 2), torch.full((1, 2), 3.0)
    assert torch.equal(shifted_prediction(d, x, x2), torch.full((1, 2), 2.0))
    assert math.isclose(float(guided(c, u, torch.tensor([1.0, 1.0])).sum()), 6.0)


def test_project_out_removes_only_the_given_direction():
    torch.manual_seed(3)
    g, d = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    p = project_out(g, d)
    assert torch.allclose((p * d).flatten(1).sum(1), torch.zeros(2), atol=1e-4)   # nothing left along d
    assert torch.allclose(project_out(g, g), torch.zeros_like(g), atol=1e-5)
    ortho = project_out(torch.randn(2, 4, 3, 3), d)
    assert torch.allclose(project_out(ortho, d), ortho, atol=1e-5)                 # idempotent


def test_repel_removes_only_the_positive_part_along_the_pattern_and_keeps_colours():
    torch.manual_seed(4)
    from memguard.core.mitigate import repel, unit_pattern
    copy = torch.randn(2, 3, 4, 4) + torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    p = unit_pattern(copy)
    assert torch.allclose(item_norm(p), torch.ones(2), atol=1e-5)
    assert torch.allclose(p.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-6)        # no colour in it
    towards = copy * 2 + 3.0                                                         # the copy, brighter
    out = repel(towards, p)
    centred = out - out.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose((centred * p).flatten(1).sum(1), torch.zeros(2), atol=1e-4)   # nothing left towards it
    assert torch.allclose(out.mean(dim=(2, 3)), towards.mean(dim=(2, 3)), atol=1e-5)    # colours unchanged
    away = -copy
    assert torch.allclose(repel(away, p), away, atol=1e-6)                              # already away: untouched
