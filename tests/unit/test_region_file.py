import json

import pytest
import torch
from safetensors.torch import save_file

from memguard.core.measures import QUANTITIES
from memguard.core.region import RegionBuilder
from memguard.core.region_file import RegionFileError, load_region, save_region
from memguard.core.settings import RunSettings

SETTINGS = RunSettings("toy-model", "euler", "karras", 4, 7.5, (4, 8, 8), extra={"note": "unit"})


@pytest.fixture
def region():
    b = RegionBuilder(SETTINGS)
    b.add_run(torch.rand(4, len(QUANTITIES), 6) + 1)
    return b.build({"prompts": ["a", "b"]})


def test_round_trip(tmp_path, region):
    path = save_region(region, tmp_path / "sub" / "r.safetensors")
    back = load_region(path)
    assert back.settings == region.settings
    assert torch.equal(back.mean, region.mean) and torch.equal(back.std, region.std)
    assert torch.equal(back.count, region.count)
    assert back.meta["prompts"] == ["a", "b"]
    assert [p.name for p in path.parent.iterdir()] == ["r.safetensors"]   # no temp files left


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(RegionFileError, match="not found: .*nope.safetensors"):
        load_region(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("cut", [0, 7, 100, -20])
def test_truncated_file_is_a_clear_error(tmp_path, region, cut):
    path = save_region(region, tmp_path / "r.safetensors")
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RegionFileError, match="bad.safetensors"):
        load_region(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == before      # nothing written


def test_garbage_bytes(tmp_path):
    bad = tmp_path / "g.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + b"\x00" * 50)
    with pytest.raises(RegionFileError, match="truncated or corrupt"):
        load_region(bad)


def _rewrite(path, tmp_path, **meta_changes):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes)
    out = tmp_path / "edited.safetensors"
    save_file(tensors, str(out), metadata={k: v for k, v in meta.items() if v is not None})
    return out


def test_newer_version_says_update(tmp_path, region):
    path = _rewrite(save_region(region, tmp_path / "r.safetensors"), tmp_path, format_version="4")
    with pytest.raises(RegionFileError, match="newer Memorization Guard.*update the pack"):
        load_region(path)


def test_calibration_trajectories_round_trip(tmp_path, region):
    assert region.trajectories is not None and region.trajectories.shape[1:] == (region.steps, len(QUANTITIES))
    back = load_region(save_region(region, tmp_path / "r.safetensors"))
    assert torch.equal(back.trajectories, region.trajectories)


def test_version_1_files_load_without_trajectories(tmp_path, region):
    """Regions saved before the trajectories were kept still load (their bands are the same)."""
    from safetensors import safe_open
    path = save_region(region, tmp_path / "r.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "trajectories"}
    old = tmp_path / "v1.safetensors"
    save_file(tensors, str(old), metadata=meta | {"format_version": "1"})
    back = load_region(old)
    assert back.trajectories is None and torch.equal(back.mean, region.mean)


def test_version_2_files_load_with_the_agreement_unmeasured(tmp_path, region):
    """Regions saved before the agreement quantity (four quantities) still load: its statistics
    are missing (NaN z-scores, which the verdict counts 0), the others are unchanged."""
    from safetensors import safe_open
    path = save_region(region, tmp_path / "r.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    q = QUANTITIES.index("agreement")
    old_tensors = {k: (v[:q] if k != "trajectories" else v[:, :, :q]).contiguous() for k, v in tensors.items()}
    old = tmp_path / "v2.safetensors"
    save_file(old_tensors, str(old), metadata=meta | {"format_version": "2",
                                                      "quantities": json.dumps(list(QUANTITIES[:q]))})
    back = load_region(old)
    assert torch.equal(back.mean[:q], region.mean[:q]) and torch.equal(back.trajectories[:, :, :q], region.trajectories[:, :, :q])
    assert torch.isnan(back.mean[q]).all() and int(back.count[q].sum()) == 0 and torch.isnan(back.trajectories[:, :, q]).all()
    assert torch.isnan(back.zscores(0, torch.ones(len(QUANTITIES), 2))[q]).all()


def test_other_kind_of_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(RegionFileError, match="is it a model"):
        load_region(path)


def test_broken_metadata_and_shapes(tmp_path, region):
    path = save_region(region, tmp_path / "r.safetensors")
    with pytest.raises(RegionFileError, match="broken metadata"):
        load_region(_rewrite(path, tmp_path, settings="{not json"))
    wrong_steps = json.dumps({**SETTINGS.to_dict(), "steps": 9})
    with pytest.raises(RegionFileError, match=f"expected \\({len(QUANTITIES)}, 9\\) for 9 steps"):
        load_region(_rewrite(path, tmp_path, settings=wrong_steps))


def test_saving_an_invalid_region_writes_nothing(tmp_path, region):
    region.std[0, 0] = float("nan")
    with pytest.raises(RegionFileError, match="refusing"):
        save_region(region, tmp_path / "r.safetensors")
    assert list(tmp_path.iterdir()) == []
