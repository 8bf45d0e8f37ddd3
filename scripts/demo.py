"""Run the demo workflow (workflows/memguard_demo.json) on the embedded testbed model inside a real
ComfyUI, headless, and write its images and reports to a folder.

    .venv/bin/python scripts/demo.py [--out out/demo] [--keep-server]

Starts ComfyUI's own main.py on a free local port (GPU if torch sees one, else --cpu), with this
pack loaded from a temporary custom_nodes folder, converts the workflow to API format with the
server's /object_info, queues it through /prompt like the browser does, waits for /history, and
puts together out/demo/summary.png (as sampled | where it broke | steered away).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from comfy_server import ComfyServer, http  # noqa: E402
from workflow_format import ui_to_api  # noqa: E402

WORKFLOW = ROOT / "workflows" / "memguard_demo.json"


def run_workflow(port: int) -> dict:
    info = http(f"http://127.0.0.1:{port}/object_info", timeout=60)
    prompt = ui_to_api(json.loads(WORKFLOW.read_text()), info)
    queued = http(f"http://127.0.0.1:{port}/prompt", {"prompt": prompt, "client_id": "memguard-demo"})
    if queued.get("node_errors"):
        raise RuntimeError(f"ComfyUI rejected the workflow: {json.dumps(queued['node_errors'], indent=1)}")
    prompt_id = queued["prompt_id"]
    deadline = time.time() + 1800
    while time.time() < deadline:
        history = http(f"http://127.0.0.1:{port}/history/{prompt_id}")
        if prompt_id in history:
            entry = history[prompt_id]
            status = entry.get("status", {})
            if status.get("status_str") == "error" or not status.get("completed", True):
                raise RuntimeError("the workflow failed: " + json.dumps(status.get("messages", []), indent=1)[:4000])
            return entry
        time.sleep(1.0)
    raise RuntimeError("the workflow did not finish within 30 minutes")


def summarize(out: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    folder = out / "memguard_demo"
    reports = {name: json.loads(sorted(folder.glob(f"{name}_*.json"))[-1].read_text())
               for name in ("report_detect", "report_mitigate")}
    columns = [("1_as_sampled", "as sampled"), ("2_heatmap", "where it broke"), ("4_mitigated", "steered away")]
    images = {key: sorted(folder.glob(f"{key}_*.png")) for key, _ in columns}
    rows = len(images["1_as_sampled"])
    tile = 256
    sheet = Image.new("RGB", (tile * len(columns), 24 + tile * rows), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)   # the bitmap default drops the spaces between words
    for c, (key, label) in enumerate(columns):
        draw.text((c * tile + 6, 3), label, fill=(0, 0, 0), font=font)
        for r, path in enumerate(images[key][:rows]):
            sheet.paste(Image.open(path).convert("RGB").resize((tile, tile), Image.NEAREST), (c * tile, 24 + r * tile))
    sheet.save(out / "summary.png")
    sheet.crop((0, 24, tile * len(columns), 24 + tile)).resize((3 * 170, 170)).save(out / "thumbnail.jpg", quality=90)
    detect, mitigate = reports["report_detect"], reports["report_mitigate"]
    print(f"\nprompt: a memorized caption of the testbed, {len(detect['items'])} seeds")
    for i, (a, b) in enumerate(zip(detect["items"], mitigate["items"])):
        score = a["scores"]["max"]
        print(f"  image {i}: {a['verdict']:<10} score {score:6.1f}  first flagged at step {a['first_flagged_step']}"
              f"  -> mitigate: steered at {len(b['steered_steps']) + len(b['corrected_steps'])} step(s)")
    print(f"\nwrote {out}/summary.png (as sampled | where it broke | steered away), "
          f"the images and both reports in {folder}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    args = ap.parse_args()
    out = args.out.resolve()
    if (out / "memguard_demo").exists():
        shutil.rmtree(out / "memguard_demo")
    out.mkdir(parents=True, exist_ok=True)
    server = ComfyServer(output_dir=out, log_path=out / "comfyui.log")
    print(f"starting ComfyUI ({server.comfy_root}) on 127.0.0.1:{server.port}; log: {server.log_path}")
    with server:
        print(f"running {WORKFLOW.relative_to(ROOT)} ...")
        t0 = time.time()
        run_workflow(server.port)
        print(f"done in {time.time() - t0:.1f}s")
    summarize(out)

if __name__ == "__main__":
    main()
