"""Write the example workflows in workflows/ (UI format) from the API-format graphs below, with the
node definitions of a real ComfyUI plus this pack, so widget lists always match the schemas.

    .venv/bin/python scripts/build_workflows.py

Thumbnails (same-name .jpg) are schematic drawings of each graph; the demo's thumbnail is made
from its real output by scripts/demo.py when it exists (out/demo/thumbnail.jpg).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))

from workflow_format import api_to_ui  # noqa: E402

OUT = ROOT / "workflows"
SD15 = "v1-5-pruned-emaonly.safetensors"
MEMORIZED = "a orange cross on a purple background by zorvath"
GUARD = {"strategy": "repel", "exact": True, "tau_mild": 4.5, "tau_strong": 14.0, "gamma": 3.0,
         "active_fraction": 0.3, "off_scale": -0.5, "false_flag_rate": 0.001}
AUDIT_PROMPTS = "\n".join([
    "The No Limits Business Woman Podcast",
    "Living in the Light with Ann Graham Lotz",
    "Prince Reunites With Warner Brothers, Plans New Album",
    "A small kitchen with some quirky art decorations.",
    "A dog wearing a bandanna and sitting on the trunk of a car.",
])


def ksampler_inputs(model, positive, negative, latent, mode, calibration=None, seed=7, steps=50, cfg=7.5,
                    sampler="euler", scheduler="normal"):
    inputs = {"model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
              "scheduler": scheduler, "positive": positive, "negative": negative, "latent_image": latent,
              "denoise": 1.0, "mode": mode, **GUARD}
    if calibration is not None:
        inputs["calibration"] = calibration
    return inputs


def demo():
    g = {
        "1": {"class_type": "MemGuardTestbedLoader", "inputs": {}},
        "2": {"class_type": "MemGuardTestbedTextEncode", "inputs": {"testbed": ["1", 1], "text": MEMORIZED}},
        "3": {"class_type": "MemGuardTestbedTextEncode", "inputs": {"testbed": ["1", 1], "text": ""}},
        "4": {"class_type": "MemGuardTestbedEmptyLatent", "inputs": {"batch_size": 4}},
        "5": {"class_type": "MemGuardKSampler", "inputs": ksampler_inputs(["1", 0], ["2", 0], ["3", 0], ["4", 0], "detect", ["1", 2])},
        "6": {"class_type": "MemGuardKSampler", "inputs": ksampler_inputs(["1", 0], ["2", 0], ["3", 0], ["4", 0], "mitigate", ["1", 2])},
        "7": {"class_type": "MemGuardTestbedDecode", "inputs": {"samples": ["5", 0], "upscale": 8}},
        "8": {"class_type": "MemGuardTestbedDecode", "inputs": {"samples": ["6", 0], "upscale": 8}},
        "9": {"class_type": "MemGuardDetector", "inputs": {"report": ["5", 1], "image": ["7", 0], "score": "max", "overlay_alpha": 0.6}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "memguard_demo/1_as_sampled"}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["9", 3], "filename_prefix": "memguard_demo/2_heatmap"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["9", 4], "filename_prefix": "memguard_demo/3_stability"}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "memguard_demo/4_mitigated"}},
        "14": {"class_type": "MemGuardSaveReport", "inputs": {"report": ["5", 1], "filename_prefix": "memguard_demo/report_detect"}},
        "15": {"class_type": "MemGuardSaveReport", "inputs": {"report": ["6", 1], "filename_prefix": "memguard_demo/report_mitigate"}},
    }
    layout = {"1": (20, 300), "2": (380, 60), "3": (380, 260), "4": (380, 440), "5": (760, 40), "6": (760, 620),
              "7": (1160, 40), "8": (1160, 620), "9": (1160, 300), "10": (1520, 20), "11": (1520, 330),
              "12": (1880, 330), "13": (1520, 640), "14": (1880, 20), "15": (1880, 640)}
    titles = {"5": "Guarded KSampler (detect: exactly what the model makes)",
              "6": "Guarded KSampler (mitigate: steered away)", "2": "Memorized prompt"}
    return g, layout, titles


def sd15_txt2img():
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "The No Limits Business Woman Podcast"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 2}},
        "5": {"class_type": "MemGuardAutoCalibration", "inputs": {"clip": ["1", 1], "prompts": "", "prompt_count": 50,
                                                                  "seeds_per_prompt": 2, "negative_prompt": "", "seed": 0}},
        "6": {"class_type": "MemGuardKSampler", "inputs": ksampler_inputs(["1", 0], ["2", 0], ["3", 0], ["4", 0], "mitigate", ["5", 0])},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "MemGuardDetector", "inputs": {"report": ["6", 1], "image": ["7", 0], "score": "first", "overlay_alpha": 0.6}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "memguard/sd15"}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["8", 3]}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["8", 4]}},
    }
    layout = {"1": (20, 200), "2": (380, 20), "3": (380, 230), "4": (380, 420), "5": (380, 600), "6": (800, 120),
              "7": (1200, 60), "8": (1200, 260), "9": (1560, 20), "10": (1560, 360), "11": (1900, 360)}
    return g, layout, {"5": "Auto Calibration (first run calibrates, then cached)"}


def calibrate_model():
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": {"class_type": "MemGuardCalibrate", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "seed": 0, "steps": 50, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "latent_image": ["2", 0], "denoise": 1.0, "prompts": "", "prompt_count": 50,
            "seeds_per_prompt": 2, "negative_prompt": ""}},
        "4": {"class_type": "MemGuardSaveCalibration", "inputs": {"calibration": ["3", 0], "filename": "sd15_euler_normal_50_cfg7.5_512"}},
    }
    return g, {"1": (20, 100), "2": (20, 330), "3": (400, 80), "4": (820, 120)}, {}


def custom_sampler_patch():
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "Living in the Light with Ann Graham Lotz"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 2}},
        "5": {"class_type": "MemGuardLoadCalibration", "inputs": {"calibration_name": "sd15_euler_normal_50_cfg7.5_512.safetensors"}},
        "6": {"class_type": "MemGuardModelPatch", "inputs": {"model": ["1", 0], "calibration": ["5", 0], "mode": "mitigate", **GUARD}},
        "7": {"class_type": "CFGGuider", "inputs": {"model": ["6", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 7.5}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "9": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 50, "denoise": 1.0}},
        "10": {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["10", 0], "guider": ["7", 0], "sampler": ["8", 0],
                                                                 "sigmas": ["9", 0], "latent_image": ["4", 0]}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {"class_type": "MemGuardReport", "inputs": {"samples": ["11", 0]}},
        "14": {"class_type": "MemGuardDetector", "inputs": {"report": ["13", 0], "image": ["12", 0], "score": "first", "overlay_alpha": 0.6}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "memguard/custom"}},
        "16": {"class_type": "PreviewImage", "inputs": {"images": ["14", 3]}},
    }
    layout = {"1": (20, 300), "2": (380, 20), "3": (380, 230), "4": (380, 440), "5": (380, 620), "6": (760, 600),
              "7": (760, 260), "8": (760, 20), "9": (760, 440), "10": (760, 880), "11": (1150, 200), "12": (1520, 80),
              "13": (1520, 300), "14": (1880, 200), "15": (2240, 40), "16": (2240, 360)}
    return g, layout, {}


def batch_audit():
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "MemGuardPromptList", "inputs": {"prompts": AUDIT_PROMPTS}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 4}},
        "6": {"class_type": "MemGuardAutoCalibration", "inputs": {"clip": ["1", 1], "prompts": "", "prompt_count": 50,
                                                                  "seeds_per_prompt": 2, "negative_prompt": "", "seed": 0}},
        "7": {"class_type": "MemGuardKSampler", "inputs": ksampler_inputs(["1", 0], ["3", 0], ["4", 0], ["5", 0], "detect", ["6", 0])},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "MemGuardDetector", "inputs": {"report": ["7", 1], "image": ["8", 0], "score": "first", "overlay_alpha": 0.6}},
        "10": {"class_type": "MemGuardSaveReport", "inputs": {"report": ["7", 1], "filename_prefix": "memguard_audit/report"}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["9", 3], "filename_prefix": "memguard_audit/overlay"}},
    }
    layout = {"1": (20, 300), "2": (20, 40), "3": (400, 40), "4": (400, 260), "5": (400, 460), "6": (400, 640),
              "7": (800, 140), "8": (1200, 60), "9": (1200, 280), "10": (1560, 60), "11": (1560, 300)}
    return g, layout, {"2": "Prompts to audit (one per line)"}


WORKFLOWS = {
    "memguard_demo": (demo, "Memorization Guard demo: the testbed model (no downloads) copies a training image; "
                            "the guard flags it, shows where, and steers it away."),
    "sd15_guarded_txt2img": (sd15_txt2img, "SD 1.5 text-to-image with the Guarded KSampler, automatic calibration, "
                                           "the detector and its heatmap."),
    "calibrate_model": (calibrate_model, "Calibrate a stability region for a model and settings, and save it."),
    "custom_sampler_guard_patch": (custom_sampler_patch, "SamplerCustomAdvanced with the Memorization Guard model patch "
                                                         "and its report."),
    "batch_audit": (batch_audit, "Audit a list of prompts: every prompt is sampled and scored; reports are saved."),
}


def object_info(session) -> dict:
    import nodes

    out = {}
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if hasattr(cls, "GET_NODE_INFO_V1"):
            out[name] = cls.GET_NODE_INFO_V1()
        else:
            types = cls.INPUT_TYPES()
            out[name] = {"input": types, "input_order": {k: list(v) for k, v in types.items()},
                         "output": list(cls.RETURN_TYPES),
                         "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))}
    return out


# What the frontend adds to a node after a run, so the layout leaves room for it and nothing
# overlaps then (tests/browser checks it in the real frontend of each tested ComfyUI):
CHART_HEIGHT = 220        # web/js/memguard.js: the live stability chart under a guarded sampler's widgets
CHART_NODES = {"MemGuardKSampler", "KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}
IMAGE_HEIGHT = 300        # image previews in the node body (SaveImage, PreviewImage, the detector)
IMAGE_NODES = {"SaveImage", "PreviewImage", "MemGuardDetector"}
NODE_WIDTH, WIDE_NODE_WIDTH = 360, 440     # samplers and the detector are wider: their charts and previews
TITLE_HEIGHT = 30         # LiteGraph draws the title above node.pos
GAP_X, GAP_Y = 50, 40


def node_size(spec: dict, node_def: dict) -> tuple[int, int]:
    """A size the node keeps after a run in frontends 1.32 to 1.49: LiteGraph's own height for its
    sockets (20 px a row) and widgets (24 px, a control value is a widget too, a multiline text
    box 100 px), plus the live chart or the image previews the node will show."""
    from workflow_format import has_control, is_widget, ordered_inputs

    sockets = widgets = 0
    for name, kind, opts in ordered_inputs(node_def):
        if not is_widget(kind, opts):
            sockets += 1
        elif kind == "STRING" and opts.get("multiline"):
            widgets += 100 / 24
        else:
            widgets += 2 if has_control(name, kind, opts) else 1
        if is_widget(kind, opts) and isinstance(spec["inputs"].get(name), list):
            sockets += 1      # a widget fed by a link shows as a socket (and keeps its widget row)
    rows = max(sockets, len(node_def.get("output", [])))
    height = 20 * rows + 24 * widgets + 20
    kind = spec["class_type"]
    wide = kind in CHART_NODES or kind == "MemGuardDetector"
    height += CHART_HEIGHT if kind in CHART_NODES else IMAGE_HEIGHT if kind in IMAGE_NODES else 0
    return (WIDE_NODE_WIDTH if wide else NODE_WIDTH), int(round(height / 10.0) * 10)


def auto_layout(graph: dict, info: dict) -> tuple[dict, dict]:
    """Columns by depth in the graph, nodes stacked by their height after a run: no overlaps."""
    depth = {}

    def d(node_id):
        if node_id not in depth:
            srcs = [v[0] for v in graph[node_id]["inputs"].values() if isinstance(v, list) and len(v) == 2]
            depth[node_id] = 1 + max((d(s) for s in srcs), default=-1)
        return depth[node_id]

    sizes = {node_id: node_size(graph[node_id], info[graph[node_id]["class_type"]]) for node_id in graph}
    columns: dict[int, list[str]] = {}
    for node_id in graph:
        columns.setdefault(d(node_id), []).append(node_id)
    layout, x = {}, 20
    for col in sorted(columns):
        y = 20
        for node_id in columns[col]:
            layout[node_id] = (x, y)
            y += sizes[node_id][1] + TITLE_HEIGHT + GAP_Y
        x += max(sizes[n][0] for n in columns[col]) + GAP_X
    return layout, sizes


def add_note(workflow: dict, text: str) -> None:
    node_id = workflow["last_node_id"] + 1
    height = 100   # above the graph: its top row starts at y = 20 - TITLE_HEIGHT
    workflow["nodes"].append({"id": node_id, "type": "Note", "pos": [20, 20 - TITLE_HEIGHT - GAP_Y - height],
                              "size": [700, height], "flags": {},
                              "order": len(workflow["nodes"]), "mode": 0, "inputs": [], "outputs": [],
                              "properties": {}, "widgets_values": [text]})
    workflow["last_node_id"] = node_id


def schematic(workflow: dict, path: Path, title: str) -> None:
    """A small drawing of the graph: boxes where the nodes are, lines for the links."""
    from PIL import Image, ImageDraw

    nodes = [n for n in workflow["nodes"] if n["type"] != "Note"]
    xs = [n["pos"][0] for n in nodes] + [n["pos"][0] + n["size"][0] for n in nodes]
    ys = [n["pos"][1] for n in nodes] + [n["pos"][1] + n["size"][1] for n in nodes]
    w, h, pad = 640, 360, 20
    sx = (w - 2 * pad) / max(1, max(xs) - min(xs))
    sy = (h - 2 * pad - 30) / max(1, max(ys) - min(ys))
    s = min(sx, sy)

    def tr(x, y):
        return pad + (x - min(xs)) * s, 30 + pad + (y - min(ys)) * s

    im = Image.new("RGB", (w, h), (32, 34, 40))
    d = ImageDraw.Draw(im)
    d.text((pad, 10), title, fill=(235, 235, 235))
    boxes = {n["id"]: (tr(*n["pos"]), tr(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])) for n in nodes}
    for link in workflow["links"]:
        if link[1] in boxes and link[3] in boxes:
            (a0, a1), (b0, b1) = boxes[link[1]], boxes[link[3]]
            d.line([(a1[0], (a0[1] + a1[1]) / 2), (b0[0], (b0[1] + b1[1]) / 2)], fill=(150, 160, 180), width=2)
    for n in nodes:
        (x0, y0), (x1, y1) = boxes[n["id"]]
        ours = n["type"].startswith("MemGuard")
        d.rectangle([x0, y0, x1, y1], fill=(70, 52, 110) if ours else (60, 64, 72), outline=(200, 200, 210))
        d.text((x0 + 3, y0 + 3), n.get("title", n["type"])[:28], fill=(240, 240, 240))
    im.save(path, quality=90)


def main() -> None:
    from harness import ComfySession

    OUT.mkdir(exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="memguard-workflows-"))
    session = ComfySession.start(base)
    try:
        info = object_info(session)
        for name, (make, note) in WORKFLOWS.items():
            graph, _, titles = make()
            layout, sizes = auto_layout(graph, info)
            workflow = api_to_ui(graph, info, layout, titles, sizes)
            add_note(workflow, note)
            (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
            thumb = OUT / f"{name}.jpg"
            demo_thumb = ROOT / "out" / "demo" / "thumbnail.jpg"
            if name == "memguard_demo" and demo_thumb.exists():
                shutil.copyfile(demo_thumb, thumb)
            elif name == "memguard_demo" and thumb.exists():
                pass   # keep the thumbnail made from the demo's real output (no out/demo/ here)
            else:
                schematic(workflow, thumb, note.split(":")[0][:90])
            print(f"wrote {OUT / name}.json")
    finally:
        session.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
