"""The shipped example workflows: UI format, only core + pack nodes, widgets matching the schemas,
thumbnails beside them, and the demo executes (converted to API format) in a real ComfyUI."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from build_workflows import CHART_HEIGHT, object_info  # noqa: E402
from workflow_format import VIRTUAL_NODES, api_to_ui, ui_to_api, widget_names  # noqa: E402

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def info(comfy_session):
    return object_info(comfy_session)


def test_workflows_exist_with_thumbnails_and_one_folder_name():
    assert len(WORKFLOWS) >= 5
    for path in WORKFLOWS:
        assert path.with_suffix(".jpg").is_file(), f"{path.name} has no same-name .jpg thumbnail"
    assert not (ROOT / "example_workflows").exists(), "ship workflows/ or example_workflows/, never both"
    assert not list((ROOT / "workflows").glob("*/*.json")), "the Templates browser lists top-level files only"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_nodes_and_widgets_match_the_schemas(path, info):
    workflow = json.loads(path.read_text())
    assert {"nodes", "links", "version"} <= set(workflow)   # UI format, not API format
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        assert node["type"] in info, f"{path.name}: node type {node['type']} is neither core nor this pack's"
        expected = sum(2 if control else 1 for _, control in widget_names(info[node["type"]]))
        assert len(node.get("widgets_values", [])) == expected, f"{path.name}: node {node['id']} ({node['type']})"
    prompt = ui_to_api(workflow, info)
    # the conversion is faithful: back to UI and again to API gives the same prompt
    assert ui_to_api(api_to_ui(prompt, info), info) == prompt


def test_demo_workflow_executes(comfy_session, info):
    workflow = json.loads((ROOT / "workflows" / "memguard_demo.json").read_text())
    prompt = ui_to_api(workflow, info)
    result = comfy_session.run_prompt(prompt)
    detect = result.node_output("5")[1].report
    mitigate = result.node_output("6")[1].report
    assert all(it.flagged for it in detect.items)
    assert all(it.steered_steps or it.corrected_steps for it in mitigate.items)
    saved = sorted(p.name for p in (comfy_session.output_dir / "memguard_demo").iterdir())
    assert any(n.startswith("report_detect") and n.endswith(".json") for n in saved)
    assert sum(n.endswith(".png") for n in saved) == 4 * 4   # 4 images x (sampled, heatmap, curves, mitigated)


def test_the_layout_reserves_the_charts_height_the_web_extension_draws():
    js = (ROOT / "web" / "js" / "memguard.js").read_text()
    assert re.search(r"const CHART_HEIGHT = (\d+);", js).group(1) == str(CHART_HEIGHT)
