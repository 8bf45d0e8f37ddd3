"""Memorization Guard's engine: plain PyTorch, no ComfyUI.

measures (per-step norms) -> region (stability bands, region_file on disk) -> detect (flags,
scores) -> mitigate (corrections) -> guard (one run's state and report) -> sampling (a guarded
sampler for any denoiser) / hooked (driving the guard from a host's hooks). heatmap and plot draw
what happened; testbed is the project's memorizing model.
"""
