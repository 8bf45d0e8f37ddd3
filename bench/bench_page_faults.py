"""Where guarded sampling's extra wall time goes: plain and detect-mode loops in the turns harness
(as bench_core.py's timing), each side charged its wall time, thread CPU time (user, system) and
minor page faults while it holds its turn. The first 66 non-memorized generations of the test split.

    python bench/bench_page_faults.py [--repeats 2] [--against detect|plain] [--arena-per-thread]

`--against plain` puts the plain loop on both sides (what two identical sides read), and
`--arena-per-thread` leaves each side's thread its own glibc malloc arena, as the harness did before
it shared one: together they show the bias that sharing removed.

Linux only (getrusage per thread). A diagnostic: it prints measurements, it checks nothing."""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_core as bc  # noqa: E402  (puts the repo root on sys.path)
from turn_taking import Turns  # noqa: E402

from core.guard import GuardConfig  # noqa: E402
from core.sampling import guarded_sample, plain_sample  # noqa: E402
from core.schedule import start_latent  # noqa: E402
from core.settings import RunSettings  # noqa: E402
from core.testbed import load_testbed  # noqa: E402


class CountedTurns(Turns):
    """Turns that also add up each side's thread CPU time and minor page faults while it holds its turn."""

    def __init__(self, names, first, one_arena):
        super().__init__(names, first, one_arena)
        self.usage = {n: [0.0, 0.0, 0] for n in names}     # user s, system s, minor faults
        self._at = None

    def _take(self, me):
        super()._take(me)
        self._at = resource.getrusage(resource.RUSAGE_THREAD)

    def _give(self, me):
        now, u = resource.getrusage(resource.RUSAGE_THREAD), self.usage[me]
        u[0] += now.ru_utime - self._at.ru_utime
        u[1] += now.ru_stime - self._at.ru_stime
        u[2] += now.ru_minflt - self._at.ru_minflt
        super()._give(me)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="even: the side that starts swaps every repeat")
    ap.add_argument("--against", choices=("detect", "plain"), default="detect", help="the second side's loop")
    ap.add_argument("--arena-per-thread", action="store_true", help="do not share one malloc arena")
    args = ap.parse_args()
    if args.repeats < 2 or args.repeats % 2:
        ap.error("--repeats must be even and at least 2")
    torch.set_num_threads(1)
    tb = load_testbed()
    sigmas = tb.schedule.sigmas_for(bc.STEPS, bc.SCHEDULER)
    settings = RunSettings(tb.identity, bc.SAMPLER, bc.SCHEDULER, bc.STEPS, bc.CFG, tb.latent_shape)
    calib, _, novel, control = bc.prompt_sets(12, 10, 100, "test")

    def start(noise):
        return start_latent(noise, sigmas, tb.schedule.sigma_max)

    region = bc.calibrate_region(tb, calib, start, sigmas, settings, 66) if args.against == "detect" else None
    jobs = (novel + control)[:66]
    pair, noise = tb.pair([c for c, _ in jobs]), tb.noise([s for _, s in jobs])
    def plain(p, x):
        return plain_sample(p, start(x), sigmas, bc.CFG, bc.SAMPLER)

    def detect(p, x):
        return guarded_sample(p, start(x), sigmas, settings, bc.CFG, region=region, config=GuardConfig(mode="detect"))

    other = f"{args.against} again" if args.against == "plain" else args.against
    sides = {"plain": (plain, pair, noise), other: (detect if args.against == "detect" else plain, pair, noise)}
    arena = "a malloc arena per thread" if args.arena_per_thread else "one malloc arena"
    print(f"{len(jobs)} non-memorized generations, {args.repeats} repeats, turns harness, one thread, {arena}")
    total = {n: [0.0, 0.0, 0.0, 0] for n in sides}
    for r in range(args.repeats):
        turns = CountedTurns(tuple(sides), "plain" if r % 2 == 0 else other, not args.arena_per_thread)
        spent = turns.run(sides, 1)
        for n in sides:
            total[n] = [a + b for a, b in zip(total[n], [spent[n], *turns.usage[n]])]
        print(f"  repeat {r} ({'plain' if r % 2 == 0 else other} first): {other} / plain wall "
              f"{spent[other] / spent['plain']:.4f}", flush=True)
    for n, (wall, user, system, faults) in total.items():
        print(f"  {n:11s}: wall {wall:.2f}s, user {user:.2f}s, system {system:.2f}s, minor page faults {faults:,}")
    p, d = total["plain"], total[other]
    print(f"  {other} / plain: wall {d[0] / p[0]:.4f}, user {d[1] / p[1]:.4f}, system {d[2] / p[2]:.4f}, "
          f"faults {d[3] / p[3]:.4f}")


if __name__ == "__main__":
    main()
