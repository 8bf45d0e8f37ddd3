import pytest
import torch

from memguard.core.measures import QUANTITIES
from memguard.core.region import RegionBuilder, RegionMismatch
from memguard.core.settings import RunSettings

SETTINGS = RunSettings("toy", "euler", "karras", 5, 7.5, (4, 8, 8))


def test_streaming_statistics_match_a_direct_computation():
    torch.manual_seed(0)
    runs = [torch.randn(5, len(QUANTITIES), b) * 3 + 10 for b in (1, 4, 7, 2)]
    builder = RegionBuilder(SETTINGS)
    for r in runs:
        builder.add_run(r)
    region = builder.build()
    allv = torch.cat(runs, dim=2).double()
    assert torch.allclose(region.mean.double(), allv.mean(dim=2).T, atol=1e-5)
    assert torch.allclose(region.std.double(), allv.std(dim=2).T, atol=1e-5)
    assert region.count.eq(14).all()
    assert builder.runs == 14


def test_non_finite_values_are_skipped_and_missing_gap_is_allowed():
    builder = RegionBuilder(SETTINGS)
    v = torch.ones(5, len(QUANTITIES), 3)
    v[:, 0, 0] = float("nan")
    v[:, 3, :] = float("nan")     # cfg 1: no guidance gap at all
    builder.add_run(v)
    region = builder.build()
    assert region.count[0].eq(2).all() and region.count[3].eq(0).all()
    assert torch.isnan(region.mean[3]).all()
    assert (region.std[:3] > 0).all()   # floored, never zero


def test_zscores_and_bands():
    builder = RegionBuilder(SETTINGS)
    builder.add_run(torch.tensor([1.0, 3.0]).repeat(5, len(QUANTITIES), 1))
    region = builder.build()
    z = region.zscores(0, torch.tensor([[2.0, 2.0 + 3 * 2 ** 0.5]] * len(QUANTITIES)))
    assert torch.allclose(z[:, 0], torch.zeros(len(QUANTITIES)), atol=1e-6)
    assert torch.allclose(z[:, 1], torch.full((len(QUANTITIES),), 3.0), atol=1e-5)
    lo, hi = region.band("update", 0, 3.0)
    assert lo == pytest.approx(2 - 3 * 2 ** 0.5) and hi == pytest.approx(2 + 3 * 2 ** 0.5)


def test_region_refuses_other_settings_and_names_every_mismatch():
    builder = RegionBuilder(SETTINGS)
    builder.add_run(torch.rand(5, len(QUANTITIES), 2))
    region = builder.build()
    region.check(SETTINGS)
    other = RunSettings("other", "euler", "karras", 8, 5.0, (4, 16, 16))
    with pytest.raises(RegionMismatch) as e:
        region.check(other)
    msg = str(e.value)
    for needle in ("model", "steps: calibrated 5, this run 8", "cfg: calibrated 7.5, this run 5", "latent size"):
        assert needle in msg


def test_empty_builder_and_bad_step_are_errors():
    builder = RegionBuilder(SETTINGS)
    with pytest.raises(ValueError, match="no calibration"):
        builder.build()
    with pytest.raises(IndexError):
        builder.add(5, torch.zeros(len(QUANTITIES), 1))
