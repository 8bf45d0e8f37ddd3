"""Memorization Detector: a run's report as scores, flags, heatmaps, overlays and curves."""

from __future__ import annotations

import os

import torch
from comfy_api.latest import io, ui

from ..core import heatmap
from ..core.detect import SCORES
from ..core.plot import stability_curves
from ._inputs import REPORT
from .guard_hooks import GuardRecord

CATEGORY = "Memorization Guard"


class MemorizationDetector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardDetector",
            display_name="Memorization Detector",
            category=CATEGORY,
            description="Per-image verdicts of a guarded run: scores, flags, a heatmap of where the sampling "
                        "blew up (the broken pixels), an overlay on the decoded image, stability curves and "
                        "the full report as JSON.",
            inputs=[
                REPORT.Input("report"),
                io.Image.Input("image", optional=True, tooltip="The decoded images, for the overlay and the burnt-pixel map."),
                io.Combo.Input("score", options=list(SCORES), default="first",
                               tooltip="The verdict's evidence (how little the prompt's prediction agrees with the "
                                       "unconditional one, accumulated over the steps from step 0 and from 6 % of them, in units of its spread on the "
                                       "calibration runs; update and guidance gap for calibrations made before the "
                                       "agreement was measured; 0.1's band measure for older ones). first: largest in the first 10 % of steps (where the signal "
                                       "lives); max: over all steps; mean: averaged over steps."),
                io.Float.Input("overlay_alpha", default=0.6, min=0.0, max=1.0, step=0.05,
                               tooltip="How strongly the heatmap is drawn over the image; the image fades to grey "
                                       "by as much, so the heat reads on any colours. 0: the image alone."),
            ],
            outputs=[
                io.Float.Output(display_name="scores", is_output_list=True),
                io.Boolean.Output(display_name="flags", is_output_list=True),
                io.Mask.Output(display_name="heatmap"),
                io.Image.Output(display_name="overlay"),
                io.Image.Output(display_name="curves"),
                io.String.Output(display_name="report_json"),
                io.Mask.Output(display_name="burnt"),
            ],
        )

    @classmethod
    def execute(cls, report: GuardRecord, score: str, overlay_alpha: float, image=None) -> io.NodeOutput:
        if not isinstance(report, GuardRecord):
            raise TypeError(f"report input got a {type(report).__name__}, expected a Memorization Guard report")
        items = report.report.items
        if image is not None and image.shape[0] != len(items):
            raise ValueError(f"The report covers {len(items)} image(s) but {image.shape[0]} were given: connect the "
                             "images decoded from the same sampler output.")
        if image is not None:
            height, width = int(image.shape[1]), int(image.shape[2])
        else:
            spatial = report.latent_shape[-2:]
            height, width = report.pixels_per_latent * int(spatial[0]), report.pixels_per_latent * int(spatial[1])
        heat = (heatmap.to_image_map(report.heat, height, width) if report.heat is not None
                else torch.zeros(len(items), height, width))
        base = image.float().cpu() if image is not None else torch.full((len(items), height, width, 3), 0.5)
        overlay = heatmap.overlay(base, heat, overlay_alpha)
        burnt = heatmap.burnt_map(base) if image is not None else torch.zeros(len(items), height, width)
        curves = stability_curves(report.report)
        scores = [float("nan") if it.scores.get(score) is None else float(it.scores[score]) for it in items]
        flags = [bool(it.flagged) for it in items]
        previews = ui.PreviewImage(overlay, cls=cls).as_dict()
        previews["images"] += ui.PreviewImage(curves, cls=cls).as_dict()["images"]
        previews["text"] = (report.report.summary(),)
        previews["memguard_flags"] = flags                      # the web extension colours the node by them
        previews["memguard_available"] = [not any(it.verdict.startswith(("unavailable", "invalid")) for it in items)]
        return io.NodeOutput(scores, flags, heat, overlay, curves, report.report.to_json(indent=1), burnt, ui=previews)


class SaveReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemGuardSaveReport",
            display_name="Save Memorization Report",
            category=CATEGORY,
            description="Write the run's full report (settings, per-step norms and z-scores, flags, scores) as "
                        "JSON into ComfyUI's output folder.",
            inputs=[REPORT.Input("report"), io.String.Input("filename_prefix", default="memguard/report")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, report: GuardRecord, filename_prefix: str) -> io.NodeOutput:
        import folder_paths

        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, folder_paths.get_output_directory())
        path = os.path.join(folder, f"{name}_{counter:05}_.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(report.report.to_json(indent=1))
        return io.NodeOutput(ui={"text": (f"{report.report.summary()}; saved {os.path.join(subfolder, os.path.basename(path))}",)})


NODES = [MemorizationDetector, SaveReport]
