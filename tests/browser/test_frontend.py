"""The web extension in headless Chromium against a real ComfyUI serving the real frontend.

Every shipped workflow loads with no missing nodes, no errors from our extension and no two nodes
overlapping; the demo runs, the live chart receives the guard's events, the detector is coloured
by its verdict, and after the run (charts and image previews drawn) still no two nodes overlap.

The page is what a user sees once the first-run dialogs are gone: the Templates dialog is closed
by the `Comfy.TutorialCompleted` setting, the "Nodes 2.0" banner by its dismissal, the minimap by
its setting. The screenshot of the demo after its run, fitted to the window, is kept in
out/test-artifacts/browser.png and browser-comfyui-<version>.png (the README's pictures are these).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_server import ComfyServer, http  # noqa: E402

ARTIFACTS = ROOT / "out" / "test-artifacts"
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1600, "height": 1000}
# the screenshot's window: large enough that the fitted graph is drawn above the frontend's
# low-detail zoom (below about 0.6 it leaves out all text)
SCREENSHOT_VIEWPORT = {"width": 2400, "height": 1400}
FLAGGED = "#7a2030"
START_TIMEOUT = 900   # seconds: about 20 on 2 idle cores, far more on a machine busy with other work
RUN_TIMEOUT = 1_800_000   # ms for a demo run: about a minute on 2 idle cores, 20+ on a busy machine
# what a user has dismissed after the first start (server-side settings of the default user)
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
DISMISSED = "localStorage.setItem('vueNodesBannerDismissed', 'true');"   # frontend 1.3x+: a local flag

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh installs it as root)")

# Each node's box as drawn: its title bar above pos, and no smaller than what its content needs
# (computeSize: widgets, image previews), in case the frontend has not grown it yet.
BOXES_JS = """() => {
    const title = (window.LiteGraph && window.LiteGraph.NODE_TITLE_HEIGHT) || 30;
    return window.app.graph._nodes.map(n => {
        const need = n.computeSize ? n.computeSize() : n.size;
        const w = Math.max(n.size[0], need[0]), h = Math.max(n.size[1], need[1]);
        return {id: n.id, type: n.type, box: [n.pos[0], n.pos[1] - title, w, h + title]};
    });
}"""

# Fit the whole graph into the part of the window the menus leave free, as "fit view" does.
FIT_VIEW_JS = """() => {
    const canvas = window.app.canvas, ds = canvas.ds, title = (window.LiteGraph && window.LiteGraph.NODE_TITLE_HEIGHT) || 30;
    const nodes = window.app.graph._nodes;
    const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - title));
    const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    const rect = canvas.canvas.getBoundingClientRect();
    const left = 70, top = 110, right = 20, bottom = 20;   // side bar, tabs and run button
    const W = rect.width - left - right, H = rect.height - top - bottom;
    const scale = Math.min(W / (x1 - x0), H / (y1 - y0));
    ds.scale = scale;
    ds.offset[0] = (left + (W - (x1 - x0) * scale) / 2) / scale - x0;
    ds.offset[1] = (top + (H - (y1 - y0) * scale) / 2) / scale - y0;
    canvas.setDirty(true, true);
    return scale;
}"""


def overlaps(boxes: list[dict]) -> list[str]:
    found = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["box"], b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append(f"node {a['id']} ({a['type']}) {[round(v) for v in a['box']]} overlaps "
                             f"node {b['id']} ({b['type']}) {[round(v) for v in b['box']]}")
    return found


def post_setting(url: str, key: str, value) -> None:
    req = urllib.request.Request(f"{url}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ComfyUI's own server; its log ends up in out/test-artifacts/browser-comfyui-<version>.log
    (written in the session's temporary folder first: two sessions may run at once)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = tmp_path_factory.mktemp("browser-output")
    log = tmp_path_factory.mktemp("browser-log") / "comfyui.log"
    s = ComfyServer(output_dir=out, log_path=log)
    s.comfyui_version = "unknown"
    try:
        s.start(timeout=START_TIMEOUT)
        for key, value in SETTINGS.items():
            post_setting(s.url, key, value)
        s.comfyui_version = http(f"{s.url}/system_stats")["system"].get("comfyui_version", "unknown")
        yield s
    finally:
        s.stop()
        if log.exists():
            shutil.copyfile(log, ARTIFACTS / f"browser-comfyui-{s.comfyui_version}.log")


@contextlib.contextmanager
def frontend(server, viewport=VIEWPORT):
    """`with frontend(server) as (page, problems)`: the frontend loaded, our script served, console
    errors and page errors collected in `problems`."""
    from playwright.sync_api import sync_playwright

    problems, our_script = [], {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            page.add_init_script(DISMISSED)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("response", lambda r: our_script.setdefault("status", r.status) if "memguard.js" in r.url else None)
            page.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.MemorizationGuard", timeout=120_000)
            assert our_script.get("status") == 200, "the extension script was not served"
            yield page, problems
        finally:
            browser.close()


def load(page, workflow: dict) -> list[str]:
    """Load a UI-format workflow; the node types the frontend does not know."""
    return page.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        const known = (window.LiteGraph && window.LiteGraph.registered_node_types) || {};
        return window.app.graph._nodes.map(n => n.type).filter(t => !(t in known));
    }""", workflow)


def ours(problems: list[str]) -> list[str]:
    return [m for m in problems if "memguard" in m.lower() or "memorization" in m.lower()]


def test_every_shipped_workflow_loads_with_no_missing_nodes_and_nothing_overlapping(server):
    with frontend(server) as (page, problems):
        for path in WORKFLOWS:
            missing = load(page, json.loads(path.read_text()))
            assert missing == [], f"{path.name}: nodes missing in the frontend: {missing}"
            page.wait_for_timeout(300)
            assert overlaps(page.evaluate(BOXES_JS)) == [], path.name
    assert not ours(problems), "\n".join(ours(problems))


def test_extension_chart_and_verdict_in_the_real_frontend(server):
    with frontend(server, SCREENSHOT_VIEWPORT) as (page, problems):
        assert load(page, json.loads((ROOT / "workflows" / "memguard_demo.json").read_text())) == []
        page.evaluate("() => window.app.queuePrompt(0, 1)")
        page.wait_for_function("() => window.MemorizationGuard.doneEvents >= 2", timeout=RUN_TIMEOUT)
        state = page.evaluate("() => ({steps: window.MemorizationGuard.stepEvents, charts: window.MemorizationGuard.charts.size})")
        assert state["steps"] >= 2 * 50 and state["charts"] == 2
        page.wait_for_function(f"() => window.app.graph.getNodeById(9).bgcolor === '{FLAGGED}'", timeout=60_000)
        # the frontend loads a node's image previews when it draws the node: show the whole graph
        page.evaluate(FIT_VIEW_JS)
        page.wait_for_function("""() => [9, 10, 11, 12, 13].every(id => {
            const n = window.app.graph.getNodeById(id);
            return n.imgs && n.imgs.length && n.imgs.every(img => img.complete);
        })""", timeout=120_000)
        page.wait_for_timeout(1000)
        after = overlaps(page.evaluate(BOXES_JS))
        page.evaluate(FIT_VIEW_JS)   # again: previews may have grown nodes
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "browser.png"))
        shutil.copyfile(ARTIFACTS / "browser.png", ARTIFACTS / f"browser-comfyui-{server.comfyui_version}.png")
    assert after == [], "after the demo ran:\n" + "\n".join(after)
    assert not ours(problems), "\n".join(ours(problems))


def test_chart_and_verdict_reach_nodes_inside_a_subgraph(server):
    """Inside a subgraph a node's execution id is "<subgraph node>:<node>": the chart and the
    verdict colour must still find the node."""
    workflow = json.loads((ROOT / "workflows" / "memguard_demo.json").read_text())
    with frontend(server) as (page, _):
        load(page, workflow)
        converted = page.evaluate("""() => {
            const graph = window.app.graph;
            if (typeof graph.convertToSubgraph !== "function") return null;
            for (const id of [5, 6]) {   // new seeds: the server would serve the first test's run from its cache
                graph.getNodeById(id).widgets.find(w => w.name === "seed").value = 8;
            }
            const picked = [5, 9].map(id => graph.getNodeById(id));   // detect sampler, detector
            if (picked.some(n => !n)) return "missing";
            return graph.convertToSubgraph(new Set(picked)) ? true : false;
        }""")
        if converted is None:
            pytest.skip("this frontend has no subgraphs")
        assert converted is True
        page.evaluate("() => window.app.queuePrompt(0, 1)")
        page.wait_for_function("() => window.MemorizationGuard.doneEvents >= 2", timeout=RUN_TIMEOUT)
        found = page.wait_for_function(f"""() => {{
            const outer = window.app.graph._nodes.find(n => n.subgraph);
            const inner = outer && outer.subgraph._nodes;
            const detector = inner && inner.find(n => n.type === "MemGuardDetector");
            const sampler = inner && inner.find(n => n.type === "MemGuardKSampler");
            const key = [...window.MemorizationGuard.charts.keys()].find(k => k.includes(":"));
            if (!detector || detector.bgcolor !== "{FLAGGED}" || !key || sampler.__memguardChartKey !== key) return null;
            return {{key, outer: outer.id, sampler: sampler.id}};
        }}""", timeout=60_000).json_value()
        assert found["key"] == f"{found['outer']}:{found['sampler']}"


def test_templates_browser_lists_the_workflows(server):
    listed = http(f"{server.url}/workflow_templates")
    assert sorted(listed.get("memorization-guard", [])) == sorted(p.stem for p in WORKFLOWS)
