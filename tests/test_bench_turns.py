"""bench/turn_taking.py's Turns: the harness behind the benchmark's wall-time ratios. Two sampling
loops must take strict turns, one model call each, and each must be charged only its own time."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from turn_taking import Turns  # noqa: E402


def loop(steps, pause, log, name):
    """A stand-in sampling loop: `steps` model calls, `pause` seconds of its own work after each."""
    def sample(pair, x):
        for j in range(steps):
            pair(x, j)
            log.append((name, j))
            time.sleep(pause)
    return sample


def test_the_loops_alternate_one_model_call_at_a_time_and_the_longer_one_finishes_alone():
    log = []
    turns = Turns(("plain", "guarded"), first="plain")
    turns.run({"plain": (loop(3, 0.0, log, "plain"), lambda x, j: None, 0),
               "guarded": (loop(5, 0.0, log, "guarded"), lambda x, j: None, 0)}, threads=1)
    assert log == [("plain", 0), ("guarded", 0), ("plain", 1), ("guarded", 1), ("plain", 2), ("guarded", 2),
                   ("guarded", 3), ("guarded", 4)]


def test_each_side_is_charged_its_own_work_only():
    log = []
    turns = Turns(("plain", "guarded"), first="guarded")
    spent = turns.run({"plain": (loop(4, 0.0, log, "plain"), lambda x, j: None, 0),
                       "guarded": (loop(4, 0.05, log, "guarded"), lambda x, j: None, 0)}, threads=1)
    assert spent["guarded"] >= 4 * 0.05
    assert spent["plain"] < 0.05             # it waited 0.2 s for its turns, none of it charged


def test_an_error_in_one_loop_reaches_the_caller_and_does_not_hang_the_other():
    def broken(pair, x):
        pair(x, 0)
        raise RuntimeError("model failed")

    turns = Turns(("plain", "guarded"), first="plain")
    with pytest.raises(RuntimeError, match="model failed"):
        turns.run({"plain": (loop(3, 0.0, [], "plain"), lambda x, j: None, 0),
                   "guarded": (broken, lambda x, j: None, 0)}, threads=1)
