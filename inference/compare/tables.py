"""The comparison as tables: seeds summarized per strategy, text for the terminal, CSV files.

The command line and the HTML report draw the same table from :func:`table`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from inference.runs import atomic_write

# the numbers aggregated over seeds (mean and standard deviation), in table order
METRICS = ("train_log_likelihood", "test_log_likelihood", "elbo", "gap", "approximation_gap",
           "amortization_gap", "ari", "matched_param_error", "reference_distance", "pareto_k",
           "seconds", "steps")



def summarize(records: list[dict]) -> list[dict]:
    """One row per strategy (in grid order): for each metric ``<name>_mean`` and ``<name>_std``
    (sample standard deviation over seeds; ``None`` for one seed), ``seeds`` and
    ``converged`` (how many seeds converged)."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["strategy"], []).append(record)
    summary = []
    for label, group in groups.items():
        first = group[0]
        row = {"strategy": label, "inference": first["inference"], "guide": first["guide"],
               "elbo_estimator": first.get("elbo_estimator"),
               "log_likelihood_method": first["log_likelihood_method"],
               "elbo_method": first.get("elbo_method"), "gap_rows": first.get("gap_rows"),
               "gap_on_subset": first.get("gap_rows") is not None
               and first["gap_rows"] < first.get("n_train", 0),
               "seeds": len(group),
               "converged": sum(bool(r["converged"]) for r in group)}
        for metric in METRICS:
            values = [float(r[metric]) for r in group if r.get(metric) is not None]
            row[f"{metric}_mean"] = float(np.mean(values)) if values else None
            row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        summary.append(row)
    return summary


def format_mean_std(row: dict, metric: str, digits: int = 4) -> str:
    """``"-1.2345 ± 0.0012"``, ``"-1.2345"`` for one seed, ``"-"`` without a value."""
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
        return "-"
    text = f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


TABLE_COLUMNS = (("train log p(x)", "train_log_likelihood", 4),
                 ("test log p(x)", "test_log_likelihood", 4), ("ELBO", "elbo", 4),
                 ("gap", "gap", 4), ("approx. gap", "approximation_gap", 4),
                 ("amort. gap", "amortization_gap", 4), ("ARI", "ari", 3),
                 ("matched |Δθ|", "matched_param_error", 4),
                 ("dist. to NUTS", "reference_distance", 3), ("k̂", "pareto_k", 2),
                 ("seconds", "seconds", 2), ("steps", "steps", 0))


def table(summary: list[dict]) -> list[list[str]]:
    """The summary as text cells, header first; columns without any value are left out."""
    columns = [c for c in TABLE_COLUMNS
               if any(row.get(f"{c[1]}_mean") is not None for row in summary)]
    cells = [["strategy", *(c[0] for c in columns), "converged"]]
    for row in summary:
        marked = row.get("gap_on_subset")
        cells.append([row["strategy"], *(
            format_mean_std(row, key, digits) + ("*" if marked and key in SPLIT else "")
            for _, key, digits in columns), f"{row['converged']}/{row['seeds']}"])
    return cells


SPLIT = ("approximation_gap", "amortization_gap")


def footnote(summary: list[dict]) -> str:
    """The note the table's ``*`` refers to ("" when no split was made on a subset)."""
    rows = sorted({row["gap_rows"] for row in summary if row.get("gap_on_subset")})
    if not rows:
        return ""
    return (f"* on {', '.join(map(str, rows))} training rows, with q* fitted per datapoint; "
            "the two add up to the gap on those rows, not on all of them")


def format_table(summary: list[dict]) -> str:
    """The summary table as aligned text, with its footnote."""
    cells = table(summary)
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = []
    for n, line in enumerate(cells):
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    note = footnote(summary)
    return "\n".join(lines + ([note] if note else []))


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))

