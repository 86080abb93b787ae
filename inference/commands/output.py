"""What the commands print: the one-row or many-row table of fit records, or JSON."""

from __future__ import annotations

import json

COLUMNS = (("inference", "{}"), ("guide", "{}"), ("seed", "{}"), ("train_log_likelihood", "{:.4f}"),
           ("train_log_likelihood_se", "{:.4f}"), ("test_log_likelihood", "{:.4f}"),
           ("test_log_likelihood_se", "{:.4f}"), ("elbo", "{:.4f}"), ("gap", "{:.4f}"),
           ("seconds", "{:.2f}"), ("yardstick_seconds", "{:.2f}"), ("steps", "{}"),
           ("converged", "{}"))


def print_rows(rows: list[dict], as_json: bool, *, single: bool) -> None:
    if as_json:
        print(json.dumps(rows[0] if single else rows, indent=2))
        return
    first = rows[0]
    print(f"{first['model']} on {first['data']}: {first['n_train']} train / {first['n_test']} "
          f"test rows; log-likelihood {first['log_likelihood_method']}, mean nats per datapoint"
          f"{_rows_judged(first)} (_se: its standard error over the rows)")
    table = [[name for name, _ in COLUMNS]]
    for row in rows:
        table.append([("-" if row.get(name) is None else form.format(row[name]))
                      for name, form in COLUMNS])
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    if single:
        print(f"run directory: {first['run_dir']}")


def _rows_judged(row: dict) -> str:
    """Where the yardstick judged a subsample of a split: ``" on 250 of 1572 train / ..."``."""
    shown = [f"{row.get(f'{split}_rows_evaluated')} of {row[f'n_{split}']} {split}"
             for split in ("train", "test")
             if row.get(f"{split}_rows_evaluated") not in (None, row.get(f"n_{split}"))]
    return f" on {' / '.join(shown)} rows" if shown else ""


def rounded(value) -> str:
    """A number or a nested list of numbers at four decimals."""
    if isinstance(value, list):
        return "[" + ", ".join(rounded(v) for v in value) + "]"
    return "-" if value is None else f"{value:.4f}"
