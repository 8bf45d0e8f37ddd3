import pytest
import torch

from memguard.core.detect import DetectionConfig, legacy_scores, out_of_band, roc_auc, tpr_at_fpr


def test_out_of_band_needs_both_quantities():
    zu = torch.tensor([4.0, -4.0, 4.0, 1.0])
    zc = torch.tensor([4.0, 5.0, 1.0, 9.0])
    assert out_of_band(zu, zc, 3.0).tolist() == [True, True, False, False]


def test_scores_windows():
    cfg = DetectionConfig(first_fraction=0.2)
    z = torch.zeros(10, 2)
    z[1, 0] = -8.0     # early overshoot (sign does not matter)
    z[9, 1] = 6.0      # late excursion only
    s = legacy_scores(z, torch.full_like(z, 99.0), cfg, steps=10)   # clean z large: update decides
    assert s["max"].tolist() == [8.0, 6.0]
    assert s["first"].tolist() == [8.0, 0.0]
    assert s["mean"].tolist() == pytest.approx([0.8, 0.6])


def test_scores_need_both_norms_out_of_band():
    # item 0: the update spikes while the clean prediction stays in the band (not memorization);
    # item 1: both leave the band, by 9 and 7: the score is the smaller excess
    zu = torch.tensor([[12.0, 9.0], [0.0, 8.0]])
    zc = torch.tensor([[0.5, -7.0], [0.0, 8.5]])
    s = legacy_scores(zu, zc, DetectionConfig(), steps=2)
    assert s["max"].tolist() == [0.5, 8.0]
    assert s["first"].tolist() == [0.5, 7.0]


def test_roc_auc_matches_pair_counting():
    torch.manual_seed(0)
    p, n = torch.randn(30) + 1, torch.randn(40)
    brute = sum((a > b) + 0.5 * (a == b) for a in p.tolist() for b in n.tolist()) / (30 * 40)
    assert roc_auc(p, n) == pytest.approx(brute)
    assert roc_auc(torch.tensor([2.0, 3.0]), torch.tensor([1.0])) == 1.0


def test_tpr_at_one_percent_fpr():
    neg = torch.arange(100).float()           # one negative (99) may pass at 1 %
    pos = torch.tensor([98.5, 99.5, 120.0, 50.0])
    assert tpr_at_fpr(pos, neg, 0.01) == pytest.approx(0.75)   # threshold is 98: 98.5, 99.5, 120 pass
    assert tpr_at_fpr(pos, neg, 0.0) == pytest.approx(0.5)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown score"):
        DetectionConfig(score="median")
    with pytest.raises(ValueError, match="tau_strong"):
        DetectionConfig(tau_mild=5, tau_strong=4)
    assert DetectionConfig(active_fraction=0.2).active_window(50) == 10
