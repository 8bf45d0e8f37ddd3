"""The committed testbed and its region, through the core alone: a memorized prompt is flagged in
its first steps, a novel one is not; the model file is what the docs say."""

import pytest
import torch

from memguard.core.guard import GuardConfig
from memguard.core.region_file import load_region
from memguard.core.sampling import guarded_sample
from memguard.core.schedule import start_latent
from memguard.core.settings import RunSettings
from memguard.core.testbed import WEIGHTS, load_testbed
from memguard.core.testbed.dataset import special_items

MEMORIZED = next(it.caption for it in special_items() if it.kind == "memorized")
NOVEL = "a green circle on a blue background"


@pytest.fixture(scope="module")
def testbed():
    return load_testbed()


def test_the_weights_fit_the_budget(testbed):
    assert WEIGHTS.stat().st_size <= 20 * 1024 * 1024
    assert testbed.training["threads"] == 1 and testbed.training["seed"] == 1
    assert testbed.training["seconds"] <= 30 * 60   # as the training script recorded it


def test_memorized_prompt_is_flagged_in_the_first_steps_and_novel_is_not(testbed):
    sigmas = testbed.schedule.sigmas_for(50, "normal")
    region = load_region(WEIGHTS.parent / "testbed_region.safetensors")
    settings = RunSettings(testbed.identity, "euler", "normal", 50, 7.5, testbed.latent_shape, 1.0)
    x = start_latent(testbed.noise([1, 2, 1, 2]), sigmas, testbed.schedule.sigma_max)
    pair = testbed.pair([MEMORIZED, MEMORIZED, NOVEL, NOVEL])
    report = guarded_sample(pair, x, sigmas, settings, 7.5, region=region, config=GuardConfig(mode="detect")).report
    assert [it.flagged for it in report.items] == [True, True, False, False]
    assert all(it.first_flagged_step <= 2 for it in report.items[:2])


def test_the_stream_is_replayed_with_the_recipe_the_weights_record(testbed, monkeypatch):
    from memguard.core.testbed import dataset

    assert testbed.data == dataset.data_recipe()          # the committed weights: this module's stream
    older = {"memorized_rate": 0.03}                      # testbed v5's rate
    replayed = dataset.TrainingStream(1, 32, older).batch(3)
    monkeypatch.setattr(dataset, "MEMORIZED_RATE", 0.03)  # the module as it was when v5 was trained
    as_trained = dataset.TrainingStream(1, 32).batch(3)
    assert replayed[1] == as_trained[1] and torch.equal(replayed[0], as_trained[0])
    monkeypatch.undo()
    assert dataset.TrainingStream(1, 32).batch(3)[1] != replayed[1]
