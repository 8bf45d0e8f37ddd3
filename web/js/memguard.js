// Memorization Guard: a live stability chart in the node that samples, and the detector's verdict
// as its colour. Fed by the events the guard sends while sampling ("memguard.step", one per step;
// "memguard.done" at the end); nothing here changes what is computed: close the page and the
// workflow runs the same.
// The frontend's own modules: through window.comfyAPI where the frontend offers it (1.x), else by
// path relative to this file (/extensions/<pack>/js/memguard.js -> /scripts/app.js).
const { app } = window.comfyAPI?.app ?? (await import("../../../scripts/app.js"));
const { api } = window.comfyAPI?.api ?? (await import("../../../scripts/api.js"));

const CHART_HEIGHT = 130;
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

function reserveSpace(node) {
  if (!node || node.__memguardSized) return;
  node.__memguardSized = true;
  node.setSize([Math.max(node.size[0], 300), node.size[1] + CHART_HEIGHT]);
}

function drawChart(ctx, node, chart) {
  const w = node.size[0] - 20;
  const h = CHART_HEIGHT - 30;
  const x0 = 10;
  const y0 = node.size[1] - CHART_HEIGHT + 20;
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

app.registerExtension({
  name: "MemorizationGuard.LiveChart",
  async nodeCreated(node) {
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
