// Memorization Guard: a live stability chart in the node that samples, and the detector's verdict
// as its colour. Fed by the events the guard sends while sampling ("memguard.step", one per step;
// "memguard.done" at the end); nothing here changes what is computed: close the page and the
// workflow runs the same.
// The frontend's own modules: through window.comfyAPI where the frontend offers it (1.x), else by
// path relative to this file (/extensions/<pack>/js/memguard.js -> /scripts/app.js).
const { app } = window.comfyAPI?.app ?? (await import("../../../scripts/app.js"));
const { api } = window.comfyAPI?.api ?? (await import("../../../scripts/api.js"));

// The chart takes the node's space under its widgets, at least CHART_HEIGHT (the shipped
// workflows reserve it: scripts/build_workflows.py, so the node does not grow into its neighbours).
const CHART_HEIGHT = 220;
const CHART_WIDTH = 400;
const ITEM_COLOURS = ["#f0f0f0", "#7fb2ff", "#ffd166", "#9be38f", "#f4a3ff", "#7ae7e7"];
const VERDICT_COLOURS = { flagged: "#7a2030", clean: "#1f5f3a", unavailable: "#4a4a4a" };

// per node id: {steps, update: [[per item]...], band: [[lo, hi]...], flags: [[...]...], summary}
const charts = new Map();
// counters a test (or a curious user in the console) can read: window.MemorizationGuard
const state = { stepEvents: 0, doneEvents: 0, charts };
window.MemorizationGuard = state;

function chartFor(nodeId, steps) {
  let chart = charts.get(nodeId);
  if (!chart || chart.steps !== steps || chart.finished) {
    chart = { steps, update: [], band: [], flags: [], summary: "", finished: false };
    charts.set(nodeId, chart);
  }
  return chart;
}

// The guard's events name a node by its execution id: "12" at the top level, "5:12" for node 12
// inside the subgraph node 5 (nested: "3:5:12").
function nodeById(executionId) {
  let graph = app.graph;
  let node = null;
  for (const part of String(executionId).split(":")) {
    node = graph?.getNodeById?.(Number(part)) ?? graph?.getNodeById?.(part) ?? null;
    graph = node?.subgraph;
  }
  if (node) node.__memguardChartKey = String(executionId);
  return node;
}

// Height of the node's own content (sockets and visible widgets), without the chart.
function contentHeight(node) {
  const size = node.computeSize?.();
  return size && size.length > 1 ? size[1] : node.size[1] - CHART_HEIGHT;
}

// Grow the node only if it has no room for the chart under its widgets yet.
function reserveSpace(node) {
  if (!node || node.__memguardSized) return;
  node.__memguardSized = true;
  const height = Math.max(node.size[1], contentHeight(node) + CHART_HEIGHT);
  const width = Math.max(node.size[0], CHART_WIDTH);
  if (height !== node.size[1] || width !== node.size[0]) node.setSize([width, height]);
}

function drawChart(ctx, node, chart) {
  const x0 = 10;
  const w = node.size[0] - 20;
  const top = Math.min(contentHeight(node), node.size[1] - CHART_HEIGHT);   // where the widgets end
  const y0 = top + 24;   // room for the label above the plot
  const h = node.size[1] - y0 - 10;
  const values = chart.update.flat().filter((v) => v !== null && Number.isFinite(v));
  const bands = chart.band.flat().filter((v) => v !== null && Number.isFinite(v));
  const all = values.concat(bands);
  if (!all.length) return;
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  if (hi - lo < 1e-9) hi = lo + 1;
  const X = (s) => x0 + (w * s) / Math.max(1, chart.steps - 1);
  const Y = (v) => y0 + h - (h * (v - lo)) / (hi - lo);
  ctx.save();
  ctx.fillStyle = "#111318";
  ctx.fillRect(x0, y0, w, h);
  // the calibrated band
  if (chart.band.length) {
    ctx.fillStyle = "rgba(110, 150, 220, 0.35)";
    ctx.beginPath();
    chart.band.forEach((b, s) => (s === 0 ? ctx.moveTo(X(s), Y(b[1])) : ctx.lineTo(X(s), Y(b[1]))));
    for (let s = chart.band.length - 1; s >= 0; s--) ctx.lineTo(X(s), Y(chart.band[s][0]));
    ctx.closePath();
    ctx.fill();
  }
  // one curve per batch item, red dots where it left the band
  const items = chart.update[0]?.length ?? 0;
  for (let i = 0; i < items; i++) {
    ctx.strokeStyle = ITEM_COLOURS[i % ITEM_COLOURS.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    chart.update.forEach((row, s) => {
      const v = row[i];
      if (v === null || !Number.isFinite(v)) return;
      s === 0 ? ctx.moveTo(X(s), Y(v)) : ctx.lineTo(X(s), Y(v));
    });
    ctx.stroke();
    ctx.fillStyle = "#ff4040";
    chart.update.forEach((row, s) => {
      if (chart.flags[s]?.[i] > 0 && row[i] !== null) ctx.fillRect(X(s) - 2, Y(row[i]) - 2, 4, 4);
    });
  }
  ctx.fillStyle = "#cfd3da";
  ctx.font = "11px sans-serif";
  const done = chart.update.length;
  const label = chart.summary || `step ${done}/${chart.steps}: update norm vs calibrated band`;
  ctx.fillText(label, x0, y0 - 5);
  ctx.restore();
}

api.addEventListener("memguard.step", ({ detail }) => {
  state.stepEvents += 1;
  const chart = chartFor(String(detail.node), detail.steps);
  chart.update[detail.step] = detail.update;
  chart.band[detail.step] = detail.band ?? [null, null];
  chart.flags[detail.step] = detail.flags;
  const node = nodeById(detail.node);
  reserveSpace(node);
  node?.setDirtyCanvas?.(true, true);
});

api.addEventListener("memguard.done", ({ detail }) => {
  state.doneEvents += 1;
  const chart = charts.get(String(detail.node));
  if (chart) {
    chart.summary = detail.summary;
    chart.finished = true;
  }
  nodeById(detail.node)?.setDirtyCanvas?.(true, true);
});

function colourByVerdict(node, output) {
  const flags = output?.memguard_flags;
  if (!Array.isArray(flags)) return;
  const verdict = flags.some(Boolean) ? "flagged" : output.memguard_available?.[0] === false ? "unavailable" : "clean";
  node.bgcolor = VERDICT_COLOURS[verdict];
  node.setDirtyCanvas?.(true, true);
}

// Frontends that fold advanced inputs (1.49+) read `widget.advanced` on the canvas but only copy
// the input's `advanced` flag into `widget.options`: mark our own nodes' advanced widgets, so they
// fold there as they do in the node panel. Older frontends never see the flag (0.3.75 has none).
function foldAdvancedWidgets(node) {
  if (!String(node.comfyClass ?? node.type ?? "").startsWith("MemGuard")) return;
  for (const widget of node.widgets ?? []) {
    if (widget.options?.advanced && widget.advanced === undefined) widget.advanced = true;
  }
}

app.registerExtension({
  name: "MemorizationGuard.LiveChart",
  async nodeCreated(node) {
    foldAdvancedWidgets(node);
    const original = node.onDrawForeground;
    node.onDrawForeground = function (ctx) {
      const result = original?.apply(this, arguments);
      const chart = charts.get(this.__memguardChartKey ?? String(this.id));
      if (chart && !this.flags?.collapsed) drawChart(ctx, this, chart);
      return result;
    };
    if ((node.comfyClass ?? node.type) === "MemGuardDetector") {
      // the frontend finds the node an output belongs to (inside subgraphs too) and calls this
      const executed = node.onExecuted;
      node.onExecuted = function (output) {
        const result = executed?.apply(this, arguments);
        colourByVerdict(this, output);
        return result;
      };
    }
  },
});
