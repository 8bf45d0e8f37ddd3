"""The verdict's statistic (core/evidence.py) and its null distribution (core/null.py)."""

import math
from dataclasses import replace

import pytest
import torch
from toy_model import denoise, karras

from memguard.core import evidence
from memguard.core.detect import DetectionConfig
from memguard.core.guard import GuardConfig
from memguard.core.measures import QUANTITIES
from memguard.core.null import fit_tail, leave_one_out_z
from memguard.core.sampling import calibrate, cfg_pair, guarded_sample
from memguard.core.settings import RunSettings

STEPS, SHAPE, CFG = 12, (4, 6, 6), 7.5
SIGMAS = karras(STEPS)
SETTINGS = RunSettings("toy", "euler", "karras", STEPS, CFG, SHAPE)


def ordinary(n, seed):
    """n ordinary toy prompts (small targets) and their starting noise."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, *SHAPE, generator=g) * 0.3
    return cfg_pair(denoise, mu, torch.zeros(n, *SHAPE)), torch.randn(n, *SHAPE, generator=g) * SIGMAS[0]


@pytest.fixture(scope="module")
def region():
    return calibrate([ordinary(20, s) for s in range(4)], SIGMAS, SETTINGS, CFG)


def test_leave_one_out_z_matches_the_definition():
    t = torch.randn(7, 3, 4, generator=torch.Generator().manual_seed(1)) * 2 + 5
    z = leave_one_out_z(t)
    for i in range(7):
        rest = torch.cat([t[:i], t[i + 1:]])
        expected = (t[i] - rest.mean(0)) / rest.std(0)
        assert torch.allclose(z[i], expected, atol=1e-4)


def test_tail_threshold_and_rate_are_inverse():
    tail = fit_tail(torch.randn(500, generator=torch.Generator().manual_seed(2)))
    for rate in (0.1, 0.01, 0.001):
        assert math.isclose(tail.rate(tail.threshold(rate)), rate, rel_tol=1e-9)
    assert tail.threshold(0.001) > tail.threshold(0.01) > tail.threshold(0.1)
    with pytest.raises(ValueError, match="false-flag rate"):
        tail.threshold(0.0)


def test_region_keeps_its_calibration_trajectories(region):
    assert region.trajectories.shape == (80, STEPS, len(QUANTITIES))


def test_online_evidence_and_verdict_equal_the_offline_ones(region):
    """The guard's step-by-step statistic is the benchmark's whole-trajectory one, to the bit."""
    pair, x = ordinary(6, 77)
    cond = torch.cat([torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5)) * 4.0,
                      torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(6)) * 0.3])
    pair = cfg_pair(denoise, cond, torch.zeros(6, *SHAPE))
    r = guarded_sample(pair, x, SIGMAS, SETTINGS, CFG, region=region, config=GuardConfig(mode="detect"))
    guard = r.guard
    z = guard.z.permute(2, 0, 1)                                    # [B, N, Q]
    offline = evidence.path(z, guard.null)
    assert torch.equal(offline.float(), guard.evidence.T)
    window = guard.k_active
    expect = (offline[:, :window] > guard.threshold).any(1)
    assert [it.flagged for it in r.report.items] == expect.tolist()
    assert r.report.items[0].flagged and r.report.items[1].flagged      # the far targets
    assert r.report.region["verdict"]["rule"] == "evidence"
    assert r.report.items[0].ordinary_rate < 0.001


def test_the_false_flag_rate_holds_on_new_ordinary_trajectories(region):
    """Fresh ordinary runs cross the threshold at about the asked-for rate (the LOO null)."""
    flagged, total = 0, 0
    cfg = GuardConfig(mode="detect", detection=DetectionConfig(false_flag_rate=0.1))
    for s in range(10):
        pair, x = ordinary(40, 1000 + s)
        r = guarded_sample(pair, x, SIGMAS, SETTINGS, CFG, region=region, config=cfg)
        flagged += sum(it.flagged for it in r.report.items)
        total += len(r.report.items)
    assert 0.03 <= flagged / total <= 0.2, flagged / total


def test_a_region_without_trajectories_uses_the_band_rule_and_says_so(region):
    old = replace(region, trajectories=None)
    pair, x = ordinary(2, 5)
    r = guarded_sample(pair, x, SIGMAS, SETTINGS, CFG, region=old, config=GuardConfig(mode="detect"))
    assert r.report.region["verdict"]["rule"] == "band"
    assert any("Recalibrate" in n for n in r.report.notes)
    assert all(it.ordinary_rate is None and all(v is None for v in it.evidence) for it in r.report.items)


def test_a_region_without_agreement_statistics_keeps_the_update_and_gap_verdict(region):
    """Regions calibrated before the agreement was measured (format 1-2 files, loaded with it
    unmeasured) flag by the update and guidance gap, and say so; new ones by the agreement."""
    q = QUANTITIES.index("agreement")
    assert evidence.weights_for(region.trajectories) == evidence.EVIDENCE_WEIGHTS
    old = replace(region, trajectories=region.trajectories.clone())
    old.trajectories[:, :, q] = float("nan")
    old.mean, old.std, old.count = old.mean.clone(), old.std.clone(), old.count.clone()
    old.mean[q], old.std[q], old.count[q] = float("nan"), float("nan"), 0
    assert evidence.weights_for(old.trajectories) == evidence.LEGACY_WEIGHTS
    g = torch.Generator().manual_seed(9)
    pair = cfg_pair(denoise, torch.cat([torch.randn(2, *SHAPE, generator=g) * 0.3, torch.randn(1, *SHAPE, generator=g) * 4.0]),
                    torch.zeros(3, *SHAPE))
    x = torch.randn(3, *SHAPE, generator=g) * SIGMAS[0]
    for r, rule in ((region, evidence.EVIDENCE_WEIGHTS), (old, evidence.LEGACY_WEIGHTS)):
        res = guarded_sample(pair, x, SIGMAS, SETTINGS, CFG, region=r, config=GuardConfig(mode="detect"))
        assert res.report.region["verdict"]["weights"] == rule
        assert [it.flagged for it in res.report.items] == [False, False, True]
        assert any("before the prediction agreement" in n for n in res.report.notes) == (r is old)


def test_the_evidence_reads_two_starts_online_as_offline():
    """The agreement evidence is the larger of two standardized paths, one from step 0 and one
    from after the first steps (EVIDENCE_START_FRACTIONS); the guard's step-by-step statistic
    equals the offline one, and regions without the agreement keep one path from step 0."""
    g = torch.Generator().manual_seed(3)
    calib = torch.randn(40, 50, len(QUANTITIES), generator=g)
    null = evidence.null_from_trajectories(calib, window=15)
    late = int(evidence.EVIDENCE_START_FRACTIONS[1] * 50 + 1e-9)
    assert null.starts == (0, late) and late > 0
    assert evidence.null_from_trajectories(calib, 15, evidence.LEGACY_WEIGHTS).starts == (0,)
    assert evidence.null_from_trajectories(calib, window=2).starts == (0, 1)      # never past the window
    z = torch.randn(5, 50, len(QUANTITIES), generator=g)
    offline = evidence.path(z, null)
    online = evidence.EvidencePath(null, 5)
    steps = torch.stack([online.push(z[:, j].T) for j in range(50)], 1)
    assert torch.equal(steps, offline)
    # by hand: each path's running mean in its own ordinary units, the larger one
    e = evidence.step_evidence(z)
    by_hand = []
    for k, start in enumerate(null.starts):
        r = torch.stack([e[:, start:j + 1].mean(1) if j >= start else torch.full((5,), float("nan"))
                         for j in range(50)], 1)
        by_hand.append((r - null.mean[k]) / null.spread[k])
    expect = torch.fmax(by_hand[0], by_hand[1])
    assert torch.allclose(offline, expect, atol=1e-9)
    assert torch.equal(offline[:, :late], by_hand[0][:, :late])
