"""The web extension in headless Chromium against a real ComfyUI serving the real frontend.

The page loads with no errors from our extension, the demo workflow loads with no missing nodes,
the live chart receives the guard's events while the workflow runs, and the detector is coloured by
its verdict. A screenshot is kept in out/test-artifacts/browser.png.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_server import ComfyServer  # noqa: E402

ARTIFACTS = ROOT / "out" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh installs it as root)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = tmp_path_factory.mktemp("browser-output")
    with ComfyServer(output_dir=out, log_path=ARTIFACTS / "browser-comfyui.log") as s:
        yield s


def test_extension_chart_and_verdict_in_the_real_frontend(server):
    from playwright.sync_api import sync_playwright

    problems, our_script = [], {}
    workflow = json.loads((ROOT / "workflows" / "memguard_demo.json").read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("response", lambda r: our_script.setdefault("status", r.status) if "memguard.js" in r.url else None)
        page.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_function("() => window.app && window.app.graph && window.MemorizationGuard", timeout=120_000)
        assert our_script.get("status") == 200, "the extension script was not served"

        missing = page.evaluate("""async (wf) => {
            await window.app.loadGraphData(wf);
            const known = (window.LiteGraph && window.LiteGraph.registered_node_types) || {};
            return window.app.graph._nodes.map(n => n.type).filter(t => !(t in known));
        }""", workflow)
        assert missing == [], f"nodes missing in the frontend: {missing}"

        page.evaluate("() => window.app.queuePrompt(0, 1)")
        page.wait_for_function("() => window.MemorizationGuard.doneEvents >= 2", timeout=600_000)
        state = page.evaluate("() => ({steps: window.MemorizationGuard.stepEvents, charts: window.MemorizationGuard.charts.size})")
        assert state["steps"] >= 2 * 50 and state["charts"] == 2
        page.wait_for_function("() => window.app.graph.getNodeById(9).bgcolor === '#7a2030'", timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "browser.png"))
        browser.close()
    ours = [m for m in problems if "memguard" in m.lower() or "memorization" in m.lower()]
    assert not ours, "\n".join(ours)


def test_chart_and_verdict_reach_nodes_inside_a_subgraph(server):
    """Inside a subgraph a node's execution id is "<subgraph node>:<node>": the chart and the
    verdict colour must still find the node."""
    from playwright.sync_api import sync_playwright

    workflow = json.loads((ROOT / "workflows" / "memguard_demo.json").read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_function("() => window.app && window.app.graph && window.MemorizationGuard", timeout=120_000)
        converted = page.evaluate("""async (wf) => {
            await window.app.loadGraphData(wf);
            const graph = window.app.graph;
            if (typeof graph.convertToSubgraph !== "function") return null;
            for (const id of [5, 6]) {   // new seeds: the server would serve the first test's run from its cache
                graph.getNodeById(id).widgets.find(w => w.name === "seed").value = 8;
            }
            const picked = graph._nodes.filter(n => (n.id === 5 || n.id === 9));   // detect sampler, detector
            return graph.convertToSubgraph(new Set(picked)) ? true : false;
        }""", workflow)
        if converted is None:
            pytest.skip("this frontend has no subgraphs")
        assert converted
        page.evaluate("() => window.app.queuePrompt(0, 1)")
        page.wait_for_function("() => window.MemorizationGuard.doneEvents >= 2", timeout=600_000)
        found = page.wait_for_function("""() => {
            const outer = window.app.graph._nodes.find(n => n.subgraph);
            const inner = outer && outer.subgraph._nodes;
            const detector = inner && inner.find(n => n.type === "MemGuardDetector");
            const sampler = inner && inner.find(n => n.type === "MemGuardKSampler");
            const key = [...window.MemorizationGuard.charts.keys()].find(k => k.includes(":"));
            if (!detector || detector.bgcolor !== "#7a2030" || !key || sampler.__memguardChartKey !== key) return null;
            return {key, outer: outer.id, sampler: sampler.id};
        }""", timeout=60_000).json_value()
        assert found["key"] == f"{found['outer']}:{found['sampler']}"
        browser.close()


def test_templates_browser_lists_the_workflows(server):
    from comfy_server import http

    listed = http(f"{server.url}/workflow_templates")
    assert sorted(listed.get("memorization-guard", [])) == sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
