"""Re-prompting a flagged item: its prompt embedding moved until the prompt's pull is ordinary.

Wen et al. (ICLR 2024) observed that a memorized prompt pulls harder than any other: the
text-conditional noise ||eps_c - eps_u|| at the first step is far above that of ordinary
prompts. Their mitigation descends that magnitude with respect to the prompt embedding (all
token vectors) from the starting latent, then samples again with the new embedding. Here the
descent stops per item as soon as its pull is down to what the calibration's ordinary prompts
show (the region's mean guidance gap at the first step), so a prompt is moved no further than it
must be: the model's own calibration is the target, not a constant tuned for one model.

The caller gives a differentiable `denoise(x, sigma, context) -> clean prediction` of the
conditional branch and the unconditional prediction at the same latent; nothing here knows the
model, and nothing changes outside the rows given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .measures import item_norm

ITERATIONS = 20         # at most, per flagged item (Wen et al.: 10 at lr 0.05 on SD 1.4)
LEARNING_RATE = 0.1     # AdamW on the embedding, in units of its RMS (CLIP-like embeddings: RMS about 1)


@dataclass
class Reprompted:
    context: torch.Tensor     # [b, ...] the moved embeddings
    gap_before: torch.Tensor  # [b] ||eps_c - eps_u|| at the start, before and after
    gap_after: torch.Tensor
    iterations: torch.Tensor  # [b] descent steps each row took
    model_calls: int          # conditional evaluations, forward + backward counted as one each


def reprompt(denoise, x: torch.Tensor, sigma: float, context: torch.Tensor, uncond_prediction: torch.Tensor,
             target: float, iterations: int = ITERATIONS, lr: float = LEARNING_RATE) -> Reprompted:
    """Descend ||eps(x, context) - eps_u|| over `context` (rows independent) until each row is at
    or below `target`, for at most `iterations` steps. `uncond_prediction` is D_u(x) (x-space)."""
    s = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
    d_u = uncond_prediction.detach().float()
    # Adam moves every element by about lr per step: in the embedding's own scale, so that one
    # setting means the same on models whose embeddings are scaled differently
    scale = float(context.detach().float().pow(2).mean().sqrt().clamp(min=1e-6))
    c = context.detach().clone().float().requires_grad_(True)
    opt = torch.optim.AdamW([c], lr=lr * scale, weight_decay=0.0)
    # the step size decays linearly to zero, so the descent settles instead of circling the minimum
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1.0 - k / iterations))
    done = torch.zeros(x.shape[0], dtype=torch.bool)
    steps = torch.zeros(x.shape[0], dtype=torch.long)
    first, calls = None, 0
    for _ in range(iterations + 1):
        with torch.enable_grad():
            gap = item_norm(d_u - denoise(x, s, c.to(context.dtype)).float()) / float(sigma)
        calls += 1
        g = gap.detach().cpu()
        first = g.clone() if first is None else first
        done |= g <= target
        live = ~done & (steps < iterations)
        if not bool(live.any()):
            break
        rows = live.to(c.device)
        opt.zero_grad(set_to_none=True)
        gap[rows.to(gap.device)].sum().backward()
        calls += 1
        kept = c.detach()[~rows].clone()   # rows at the target keep their embedding (and AdamW's state moves nothing)
        opt.step()
        decay.step()
        with torch.no_grad():
            c[~rows] = kept
        steps[live] += 1
    return Reprompted(c.detach().to(context.dtype), first, g, steps, calls)


def restart_rows(guard) -> list[int]:
    """The items a restart strategy samples again: flagged, with finite values throughout."""
    return (guard.flagged() & (guard.non_finite < 0)).nonzero().flatten().tolist()


def target_gap(region) -> float:
    """Where the descent stops: the calibration's mean guidance gap at the first step."""
    return float(region.mean[region.row("gap"), 0])


def record(guard, rows: list[int], moved: Reprompted, target: float, flagged_again: list[bool],
           second_run_evals: int) -> None:
    """Put a restart into the first run's report: the rows count as steered at every step, the
    descent and the second run as extra model calls, and one note per item."""
    guard.steered_steps[:, rows] = True
    guard.note_extra_evals(moved.model_calls * len(rows) + second_run_evals)
    guard.notes += _notes(rows, moved, target, flagged_again)


def _notes(rows: list[int], moved: Reprompted, target: float, flagged_again: list[bool]) -> list[str]:
    return [f"item {i}: re-prompted (embedding moved in {int(moved.iterations[k])} steps, first-step guidance gap "
            f"{float(moved.gap_before[k]):.3g} -> {float(moved.gap_after[k]):.3g}, ordinary {target:.3g}) and sampled "
            f"again from the same noise; the second run was {'flagged again' if flagged_again[k] else 'not flagged'}"
            for k, i in enumerate(rows)]
