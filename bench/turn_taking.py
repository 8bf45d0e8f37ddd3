"""Two loops that take turns, one model call each, with the wall time each holds its turn added up:
the harness behind bench_core.py's wall-time ratios. Imports nothing of the pack."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

import torch

M_ARENA_MAX = -8          # glibc's mallopt parameter number


def share_one_malloc_arena() -> bool:
    """Make every thread allocate from one glibc malloc arena, as a single sampling thread does.

    glibc gives each new thread an arena of its own, and the two sides of a Turns run are two
    threads; with their own arenas the plain loop against itself read 1.055 on one batch of 66 (the
    second side slower in each of 6 repeats, with 4 times the page faults), and 0.994 in one arena
    (`python bench/bench_page_faults.py --against plain [--arena-per-thread]`). Call it before the threads
    start. False where the C library is not glibc: the ratios then carry that bias."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False


class Turns:
    """Two sampling loops run in turns, one model call at a time: each runs in its own thread and
    hands a baton to the other before each model call, and the wall time each holds the baton is
    added up. Whatever slows this shared VM for more than a step (about half a second) slows both
    sides alike, which alternating whole runs cannot promise. Both threads allocate from one malloc
    arena (share_one_malloc_arena), as one sampling thread would, unless `one_arena` is False (only
    to show the bias that fixes)."""

    def __init__(self, names, first, one_arena: bool = True):
        self.cv = threading.Condition()
        self.one_arena = one_arena
        self.turn, self.live = first, set(names)
        self.spent, self.since = dict.fromkeys(names, 0.0), 0.0

    def _take(self, me):                            # with cv held
        self.cv.wait_for(lambda: self.turn == me)
        self.since = time.perf_counter()

    def _give(self, me):                            # with cv held
        self.spent[me] += time.perf_counter() - self.since
        others = [n for n in self.live if n != me]
        self.turn = others[0] if others else None
        self.cv.notify_all()

    def switch(self, me):
        with self.cv:
            self._give(me)
            if self.turn is None:                   # the other side is done: keep going
                self.turn = me
            self._take(me)

    def wrap(self, me, pair):
        def turned(*args):
            self.switch(me)
            return pair(*args)
        return turned

    def run(self, sides: dict, threads: int) -> dict:
        """sides: name -> (sample(pair, x), pair, x); runs them in turns, returns name -> seconds held."""
        errors = []
        if self.one_arena:
            share_one_malloc_arena()

        def body(me, sample, pair, x):
            torch.set_num_threads(threads)          # per thread, as the main thread has it
            with self.cv:
                self._take(me)
            try:
                sample(self.wrap(me, pair), x)
            except BaseException as e:              # noqa: BLE001 - re-raised in the main thread
                errors.append(e)
            finally:
                with self.cv:
                    self.live.discard(me)
                    self._give(me)

        workers = [threading.Thread(target=body, args=(n, *side)) for n, side in sides.items()]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        return self.spent
