"""The bench's outputs from its cells: a CSV, a summary per strategy, a text table, an HTML
report and the summary figure (one row per posterior, one column per strategy)."""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inference.bench.metrics import GOOD_MEAN_ERROR
from inference.diagnostics import EXPLAINED, THRESHOLD

CSV_FILE, HTML_FILE, FIGURE_FILE, SUMMARY_FILE = (
    "results.csv", "report.html", "summary.png", "summary.json")
COLUMNS = ("posterior", "strategy", "status", "mean_error_max", "mean_error_mean",
           "sd_ratio_min", "sd_ratio_median", "sd_ratio_max", "w1_marginal_sd", "w1_joint_sd",
           "w1_joint_floor_sd", "w1_joint_raw", "pareto_k", "gradient_evaluations", "seconds",
           "wall_seconds", "draws", "reaches", "nuts_agrees", "error")
METRICS_EXPLAINED = (
    "mean error: |mean_q − mean_ref| / sd_ref per parameter (max and mean over the "
    "parameters); sd ratio: sd_q / sd_ref; W1 marginal: mean over parameters of the 1-D "
    "1-Wasserstein distance in sd_ref units (scipy); W1 joint: the multivariate "
    "1-Wasserstein distance between 500 draws of each, Euclidean cost in sd_ref-standardized "
    "coordinates (exact, as an assignment problem), beside its floor (two halves of the "
    "reference's draws) and the raw-unit value; " + EXPLAINED + "; NUTS has no proposal "
    "density and no k̂; gradient evaluations: SVI steps × particles, NUTS potential "
    "evaluations (warm-up included); seconds: the fit's own time (wall: with the metrics).")


def _value(record: dict, name: str):
    if name == "nuts_agrees":
        agreement = record.get("agreement")
        return None if agreement is None else agreement["agrees"]
    return record.get(name)


def write_csv(records: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for record in records:
            writer.writerow(["" if _value(record, c) is None else _value(record, c)
                             for c in COLUMNS])


def summary(records: Sequence[dict], strategies: Sequence[str]) -> dict:
    """Per strategy: cells run, failed, how many posteriors reach mean error < 0.1 sd, how
    many k̂ < 0.7, how many both, median seconds and gradient evaluations; and NUTS's
    agreement with the reference per posterior."""
    out = {"strategies": {}, "nuts_agreement": {}}
    for strategy in strategies:
        cells = [r for r in records if r["strategy"] == strategy]
        ok = [r for r in cells if r["status"] == "ok"]
        with_k = [r for r in ok if r.get("pareto_k") is not None]
        out["strategies"][strategy] = {
            "posteriors": len(cells), "failed": len(cells) - len(ok),
            "mean_error_below_0.1": sum(r["mean_error_max"] < GOOD_MEAN_ERROR for r in ok),
            "k_hat_below_0.7": (sum(r["pareto_k"] < THRESHOLD for r in with_k)
                                if strategy != "nuts" else None),
            "both": sum(bool(r.get("reaches")) for r in ok),
            "median_seconds": float(np.median([r["seconds"] for r in ok])) if ok else None,
            "median_gradient_evaluations": (float(np.median(
                [r["gradient_evaluations"] for r in ok])) if ok else None)}
    for record in records:
        if record["strategy"] == "nuts":
            agreement = record.get("agreement")
            out["nuts_agreement"][record["posterior"]] = (
                None if agreement is None else {k: agreement[k] for k in (
                    "agrees", "z_mean_max", "z_sd_max", "z_bound", "worst_parameter")})
    return out


def text_table(totals: dict) -> str:
    """One line per strategy: what the report's summary says."""
    lines = [f"{'strategy':<13} {'posteriors':>10} {'failed':>6} {'err<0.1sd':>9} "
             f"{'k̂<0.7':>7} {'both':>5} {'median s':>9} {'median grads':>12}"]
    for strategy, row in totals["strategies"].items():
        k = "-" if row["k_hat_below_0.7"] is None else str(row["k_hat_below_0.7"])
        seconds = "-" if row["median_seconds"] is None else f"{row['median_seconds']:.1f}"
        grads = ("-" if row["median_gradient_evaluations"] is None
                 else f"{row['median_gradient_evaluations']:.0f}")
        lines.append(f"{strategy:<13} {row['posteriors']:>10} {row['failed']:>6} "
                     f"{row['mean_error_below_0.1']:>9} {k:>7} {row['both']:>5} "
                     f"{seconds:>9} {grads:>12}")
    agreement = totals["nuts_agreement"]
    if agreement:
        agrees = [name for name, a in agreement.items() if a and a["agrees"]]
        lines.append(f"NUTS agrees with the reference within Monte Carlo error on "
                     f"{len(agrees)} of {len(agreement)} posteriors")
        for name, a in agreement.items():
            if not a or not a["agrees"]:
                lines.append(f"  not: {name}" + ("" if not a else
                             f" (worst {a['worst_parameter']}: |z| mean {a['z_mean_max']:.1f},"
                             f" sd {a['z_sd_max']:.1f}; bound {a['z_bound']:.2f})"))
    return "\n".join(lines)


def plot_summary(records: Sequence[dict], posteriors: Sequence[str],
                 strategies: Sequence[str], path: Path) -> None:
    """The heatmap: max mean error (reference sds, log colour scale, green below 0.1) per
    posterior and strategy; k̂ under it, a black frame where k̂ > 0.7; NUTS's agreement
    with the reference (✓ / ✗); grey for a failed fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm

    by_cell = {(r["posterior"], r["strategy"]): r for r in records}
    error = np.full((len(posteriors), len(strategies)), np.nan)
    for i, name in enumerate(posteriors):
        for j, strategy in enumerate(strategies):
            record = by_cell.get((name, strategy))
            if record is not None and record["status"] == "ok":
                error[i, j] = np.log10(np.clip(record["mean_error_max"], 1e-3, 1e3))
    colours = LinearSegmentedColormap.from_list(
        "bench", ["#1a9850", "#a6d96a", "#ffffbf", "#fdae61", "#d73027"]).with_extremes(
        bad="#bdbdbd")
    norm = TwoSlopeNorm(vmin=-2.0, vcenter=math.log10(GOOD_MEAN_ERROR), vmax=1.0)
    height = 2.6 + 0.42 * len(posteriors)
    width = 3.6 + 1.35 * len(strategies)
    figure, axis = plt.subplots(figsize=(width, height))
    image = axis.imshow(np.ma.masked_invalid(error), cmap=colours, norm=norm, aspect="auto")
    for i, name in enumerate(posteriors):
        for j, strategy in enumerate(strategies):
            _annotate_cell(axis, i, j, by_cell.get((name, strategy)))
    axis.set_xticks(range(len(strategies)), strategies, fontsize=9)
    axis.xaxis.tick_top()
    axis.set_yticks(range(len(posteriors)), posteriors, fontsize=8)
    bar = figure.colorbar(image, ax=axis, fraction=0.04, pad=0.02,
                          ticks=[-2, -1, 0, 1])
    bar.ax.set_yticklabels(["0.01", "0.1", "1", "10"], fontsize=8)
    bar.set_label("max mean error (reference sds)", fontsize=8)
    axis.set_title("Worst mean error per posterior (green: < 0.1 sd). Black frame: "
                   f"PSIS k̂ > {THRESHOLD} (the guide misses mass).\nref ✓/✗: NUTS agrees with "
                   "the posteriordb reference within Monte Carlo error; grey: failed",
                   fontsize=8.5, pad=24)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _annotate_cell(axis, i: int, j: int, record: dict | None) -> None:
    """The heatmap's cell of row ``i`` and column ``j``: "not run", "failed", or the max mean
    error with k̂ and NUTS's agreement under it, framed in black where k̂ > 0.7."""
    from matplotlib.patches import Rectangle

    if record is None:
        axis.text(j, i, "not run", ha="center", va="center", fontsize=8, color="0.2")
        return
    if record["status"] != "ok":
        axis.text(j, i, "failed", ha="center", va="center", fontsize=8, color="0.2")
        return
    line = f"{record['mean_error_max']:.2g}"
    k = record.get("pareto_k")
    if k is not None:
        line += f"\nk̂ {k:.2f}"
    agreement = record.get("agreement")
    if agreement is not None:
        line += "\nref ✓" if agreement["agrees"] else "\nref ✗"
    axis.text(j, i, line, ha="center", va="center", fontsize=7.5, linespacing=1.1)
    if k is not None and k > THRESHOLD:
        axis.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False,
                                 edgecolor="black", linewidth=2.0))


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def write_html(records: Sequence[dict], totals: dict, path: Path, *, figure: str | None,
               command: str, elapsed: float | None) -> None:
    """report.html: the summary per strategy, the figure, every cell's numbers, and what
    each number means."""
    head = ("strategy", "posteriors", "failed", "mean error < 0.1 sd", "k̂ < 0.7", "both",
            "median seconds", "median gradient evaluations")
    keys = ("posteriors", "failed", "mean_error_below_0.1", "k_hat_below_0.7", "both",
            "median_seconds", "median_gradient_evaluations")
    rows = "".join(
        "<tr><td>" + html.escape(s) + "</td>" + "".join(f"<td>{_cell(row[k])}</td>"
                                                        for k in keys) + "</tr>"
        for s, row in totals["strategies"].items())
    shown = ("mean_error_max", "mean_error_mean", "sd_ratio_min", "sd_ratio_max",
             "w1_marginal_sd", "w1_joint_sd", "w1_joint_floor_sd", "pareto_k",
             "gradient_evaluations", "seconds", "nuts_agrees", "error")
    cells = "".join(
        f"<tr class='{r['status']}'><td>{html.escape(r['posterior'])}</td>"
        f"<td>{html.escape(r['strategy'])}</td>"
        + "".join(f"<td>{_cell(_value(r, c))}</td>" for c in shown) + "</tr>"
        for r in records)
    agreement = totals["nuts_agreement"]
    agrees = sum(1 for a in agreement.values() if a and a["agrees"])
    timing = "" if elapsed is None else f"<p>This run took {elapsed:.0f} s.</p>"
    image = "" if figure is None else f"<p><img src='{html.escape(figure)}' alt='summary'></p>"
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>lvm-zoo bench</title><style>
body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:2px 6px}}
tr.failed td{{background:#f3d6d6}} img{{max-width:100%}}</style></head><body>
<h1>lvm-zoo bench: strategies against posteriordb reference posteriors</h1>
<p>Command: <code>{html.escape(command)}</code></p>{timing}
<h2>Which strategies reach the reference</h2>
<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{rows}</table>
<p>NUTS agrees with the reference within Monte Carlo error on {agrees} of {len(agreement)}
posteriors (the check that each model was written right).</p>{image}
<h2>Every cell</h2>
<table><tr><th>posterior</th><th>strategy</th>{''.join(f'<th>{c}</th>' for c in shown)}</tr>
{cells}</table>
<h2>What the numbers are</h2><p>{html.escape(METRICS_EXPLAINED)}</p>
</body></html>
"""
    Path(path).write_text(page)


def write_all(records: Sequence[dict], posteriors: Sequence[str], strategies: Sequence[str],
              out: Path, *, command: str, elapsed: float | None = None,
              figure: bool = True) -> dict:
    """results.csv, summary.json, summary.png and report.html in ``out``; the summary."""
    from inference.runs import write_json

    out = Path(out)
    totals = summary(records, strategies)
    write_csv(records, out / CSV_FILE)
    if figure:
        plot_summary(records, posteriors, strategies, out / FIGURE_FILE)
    write_json(out / SUMMARY_FILE, {**totals, "command": command, "seconds": elapsed,
                                    "explained": METRICS_EXPLAINED})
    write_html(records, totals, out / HTML_FILE, figure=FIGURE_FILE if figure else None,
               command=command, elapsed=elapsed)
    return totals
