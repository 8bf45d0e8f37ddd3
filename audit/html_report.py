"""The audit's report: one self-contained HTML file (pictures inlined, no scripts, no network)
that ranks the captions by risk, with the flagged generations' images, heatmaps and stability
curves."""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .job import AuditJob

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
.meta{color:#555;margin-bottom:16px} .meta code{background:#eee;padding:1px 4px;border-radius:3px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border-bottom:1px solid #e4e4e4;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.risk{display:inline-block;padding:1px 7px;border-radius:9px;color:#fff;font-weight:600}
.high{background:#c62828}.some{background:#ef6c00}.none{background:#9e9e9e}
.gen{display:inline-block;margin:4px 8px 4px 0;font-size:12px;color:#444;text-align:center}
.gen img{display:block;height:96px;image-rendering:pixelated;border:1px solid #ccc}
.gen img.curve{image-rendering:auto}
.gens{display:flex;flex-wrap:wrap}
.pics{display:flex;gap:4px}
"""


def _data_uri(out: Path, rel: str | None) -> str | None:
    if not rel:
        return None
    path = out / rel
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _rarity(rate: float | None) -> str:
    if rate is None or not math.isfinite(rate):
        return "n/a"
    if rate <= 0:
        return "rarer than any calibration run"
    n = 1 / rate
    # beyond a million the rate is the null model's extrapolated tail: an order of magnitude says enough
    return f"1 in {n:,.0f}" if n < 1e6 else f"1 in 10^{math.floor(math.log10(n))}"


SUMMARY = ["caption_index", "caption", "seed", "flagged", "ordinary_rate", "score_first", "first_flagged_step",
           "image", "heatmap", "curves"]


def rank_captions(table) -> list[dict]:
    """Captions by risk: most seeds flagged first, then the rarest evidence, then the highest
    score. Aggregated in Arrow, so a table of millions of generations ranks in seconds."""
    finite = pc.if_else(pc.is_finite(table["score_first"]), table["score_first"], pa.scalar(None, pa.float64()))
    table = table.set_column(table.schema.get_field_index("score_first"), "score_first", finite)
    groups = table.group_by("caption_index").aggregate([
        ("seed", "count"), ("flagged", "sum"), ("ordinary_rate", "min"), ("score_first", "max")])
    ranked = [{"caption_index": g["caption_index"], "generations": g["seed_count"], "flagged": g["flagged_sum"] or 0,
               "min_rate": g["ordinary_rate_min"], "max_score": g["score_first_max"]} for g in groups.to_pylist()]
    ranked.sort(key=lambda c: (-c["flagged"], c["min_rate"] if c["min_rate"] is not None else 1.0,
                               -(c["max_score"] or 0.0), c["caption_index"]))
    return ranked


def write_report(out: Path, job: AuditJob, table_path: Path, source: str, top: int = 200,
                 complete: bool = True) -> Path:
    table = pq.read_table(table_path, columns=SUMMARY)
    ranked = rank_captions(table)
    shown = ranked[:top]
    rows = table.filter(pc.is_in(table["caption_index"], value_set=pa.array([c["caption_index"] for c in shown], type=pa.int64())))
    by_caption = defaultdict(list)
    for row in rows.to_pylist():
        by_caption[row["caption_index"]].append(row)
    total, flagged = table.num_rows, int(pc.sum(table["flagged"]).as_py() or 0)
    risky = sum(1 for c in ranked if c["flagged"])
    model = job.checkpoint + "".join(f" + LoRA {n} @ {s:g}" for n, s in job.loras)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Memorization audit: "
             f"{html.escape(model)}</title><style>{STYLE}</style></head><body>",
             f"<h1>Memorization audit: {html.escape(model)}</h1>",
             "<div class='meta'>"
             f"{job.sampler} / {job.scheduler}, {job.steps} steps, cfg {job.cfg:g}, "
             + ("32x32 (testbed)" if job.is_testbed else f"{job.width}x{job.height}")
             + f", seeds {', '.join(map(str, job.seeds))}; verdict at a false-flag rate of {job.false_flag_rate:g} "
             f"(about 1 in {1 / job.false_flag_rate:,.0f} ordinary generations is flagged); calibration: "
             f"{html.escape(source)}."
             + ("" if complete else " <b>Incomplete: the audit was interrupted; rerun the same command to finish it.</b>")
             + "</div>",
             "<div class='cards'>"
             f"<div class='card'><b>{len(job.captions):,}</b>captions ({len(ranked):,} done)</div>"
             f"<div class='card'><b>{total:,}</b>generations of {job.generations:,}</div>"
             f"<div class='card'><b>{flagged:,}</b>flagged ({flagged / max(total, 1):.1%})</div>"
             f"<div class='card'><b>{risky:,}</b>captions with a flagged generation</div></div>",
             f"<h2>Captions by risk (top {len(shown)} of {len(ranked)})</h2>",
             "<table><tr><th>#</th><th>caption</th><th>flagged</th><th>rarest evidence</th><th>top score</th>"
             "<th>flagged generations: image, where it broke, stability curves</th></tr>"]
    for rank, c in enumerate(shown, 1):
        gens = by_caption[c["caption_index"]]
        n, k = c["generations"], c["flagged"]
        level = "high" if k * 2 >= n and k else ("some" if k else "none")
        pics = []
        for g in (g for g in gens if g["flagged"]):
            tiles = [(kind, _data_uri(out, g[kind])) for kind in ("image", "heatmap", "curves")]
            imgs = "".join(f"<img class='{'curve' if kind == 'curves' else ''}' src='{uri}' alt='{kind}'>"
                           for kind, uri in tiles if uri)
            step = g["first_flagged_step"]
            pics.append(f"<div class='gen'><div class='pics'>{imgs}</div>seed {g['seed']}"
                        + (f", flagged at step {step}" if step is not None else "") + "</div>")
        score = "n/a" if c["max_score"] is None else f"{c['max_score']:.2f}"
        parts.append(f"<tr><td class='num'>{rank}</td><td>{html.escape(gens[0]['caption'])}</td>"
                     f"<td class='num'><span class='risk {level}'>{k}/{n}</span></td>"
                     f"<td class='num'>{_rarity(c['min_rate'])}</td><td class='num'>{score}</td>"
                     f"<td><div class='gens'>{''.join(pics)}</div></td></tr>")
    parts.append("</table><p class='meta'>Rarest evidence: the share of ordinary (calibration) generations whose "
                 "evidence is at least this caption's strongest; a flag means the trajectory was rarer than the "
                 "false-flag rate allows. Full per-generation data: results.parquet.</p></body></html>")
    path = out / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path

