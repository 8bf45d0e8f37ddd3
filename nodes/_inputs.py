"""Inputs shared by every node that runs the guard, and the GuardConfig they make."""

from __future__ import annotations

from comfy_api.latest import io

from ..core.detect import DetectionConfig
from ..core.guard import MODES, STRATEGIES, GuardConfig
from ._compat import advanced

CALIBRATION = io.Custom("MEMGUARD_CALIBRATION")
REPORT = io.Custom("MEMGUARD_REPORT")
TESTBED = io.Custom("MEMGUARD_TESTBED")

_D = DetectionConfig()
_G = GuardConfig()


def calibration_input() -> io.Input:
    return CALIBRATION.Input(
        "calibration", optional=True,
        tooltip="The stability region for these settings (Load Calibration, Calibrate, or Auto Calibration; "
                "Auto Calibration samples only in the Guarded KSampler, elsewhere it uses what it has cached). "
                "Without one, a matching file in models/memguard_calibration is used if there is one.")


def guard_inputs() -> list[io.Input]:
    """mode, then the thresholds and strategy (advanced). Append only: saved workflows store widgets by position."""
    return [
        io.Combo.Input("mode", options=list(MODES), default=_G.mode,
                       tooltip="detect: watch and report, the image is exactly what the sampler makes. "
                               "mitigate: also steer flagged items away from the memorized image."),
        io.Combo.Input("strategy", options=list(STRATEGIES), default=_G.strategy, **advanced(io.Combo),
                       tooltip="How mitigate steers a flagged image. repel (default): keeps guiding, but takes out "
                               "of every later prediction the pattern the conditional prediction showed at the "
                               "flagged step (the copy taking shape); colours stay, and guidance goes off if the image "
                               "leaves the band again (keeps more of the prompt; grainy, the grain being the copy's own "
                               "fine texture, and a faint copy can stay where the flag comes late). unconditional: its guidance goes off from the flagged step "
                               "(no copy, but the prompt stops steering it: colour blobs). orthogonal: keeps guiding "
                               "minus the direction that pulled toward the copy (keeps more of the prompt, removes "
                               "fewer copies). delayed_guidance: guidance off until the trajectory leaves the "
                               "memorized basin (Jain et al.). stability: the paper's rescale-and-clamp correction. "
                               "reprompt: after the run, the flagged image's prompt embedding is moved until its "
                               "pull is that of ordinary prompts (Wen et al.) and the image is sampled again from "
                               "the same noise (Guarded KSampler and model patch only; costs about a second run)."),
        io.Boolean.Input("exact", default=_G.exact, **advanced(io.Boolean),
                         tooltip="Redo the flagged step with the new guidance (or re-evaluate the model where a "
                                 "correction moved the latent): one extra model call at that step, only when an "
                                 "image is flagged."),
        io.Float.Input("tau_mild", default=_D.tau_mild, min=0.5, max=100.0, step=0.1, **advanced(io.Float),
                       tooltip="z-score above which a step leaves the band (update and clean-prediction norms)."),
        io.Float.Input("tau_strong", default=_D.tau_strong, min=0.5, max=1000.0, step=0.5, **advanced(io.Float),
                       tooltip="clean-prediction z-score that makes a flag strong (acted on at any step)."),
        io.Float.Input("gamma", default=_D.gamma, min=0.5, max=100.0, step=0.1, **advanced(io.Float),
                       tooltip="Band half-width in calibrated spreads, used by the stability strategy's clamps."),
        io.Float.Input("active_fraction", default=_D.active_fraction, min=0.01, max=1.0, step=0.01, **advanced(io.Float),
                       tooltip="The verdict looks for a flag in this first share of the steps (the signal lives early: "
                               "30 % was chosen on the testbeds' validation splits)."),
        io.Float.Input("off_scale", default=_G.off_scale, min=-5.0, max=1.0, step=0.05, **advanced(io.Float),
                       tooltip="Guidance scale a flagged image gets while its guidance is off (unconditional, "
                               "delayed_guidance). 0 is the unconditional model, which can draw a memorized image "
                               "itself; below 0 also pushes away from where the prompt pulls."),
        io.Float.Input("false_flag_rate", default=_D.false_flag_rate, min=0.00001, max=0.2, step=0.0001,
                       round=0.00001, **advanced(io.Float),
                       tooltip="The share of ordinary images the verdict may flag, by a fit to the calibration runs "
                               "(0.001: 1 in 1,000 nominally; on the project's testbeds about 1 % of ordinary images "
                               "were flagged). Higher catches more copies and flags more ordinary images (testbeds, "
                               "0.01: 82-95 % of copies, 2-4 % of ordinary images; README, 'What the rate buys'). "
                               "Needs a calibration made by this version (older ones fall back to tau_mild)."),
    ]


def guard_config(mode: str, strategy: str = _G.strategy, exact: bool = _G.exact, tau_mild: float = _D.tau_mild,
                 tau_strong: float = _D.tau_strong, gamma: float = _D.gamma,
                 active_fraction: float = _D.active_fraction, off_scale: float = _G.off_scale,
                 false_flag_rate: float = _D.false_flag_rate) -> GuardConfig:
    detection = DetectionConfig(gamma=gamma, tau_mild=tau_mild, tau_strong=max(tau_strong, tau_mild),
                                active_fraction=active_fraction, false_flag_rate=false_flag_rate)
    return GuardConfig(mode=mode, strategy=strategy, exact=exact, off_scale=off_scale, detection=detection)
