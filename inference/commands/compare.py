"""``lvm-zoo compare``: every applicable strategy on one split, one table."""

from __future__ import annotations

import argparse
import sys

from inference.commands import parser as flags
from inference.commands.output import print_rows
from inference.commands.runs import single_process


def main(args: argparse.Namespace) -> int:
    single_process("compare")
    from inference.compare import compare
    from inference.compare.tables import format_table

    spec = args.spec
    rows = compare(spec, seeds=args.seeds, progress=not args.json and sys.stderr.isatty(),
                   reference=args.reference, strategies=args.strategies,
                   gap_rows=args.gap_rows, draws=args.draws,
                   data=flags.data_request(args, spec), seed=args.seed, out=args.out,
                   iwae_samples=args.iwae_samples, iwae_rows=args.iwae_rows,
                   overwrite=args.overwrite,
                   resume=args.resume,
                   nuts_samples=args.nuts_samples, nuts_warmup=args.nuts_warmup,
                   nuts_chains=args.nuts_chains,
                   **flags.strategy_options(args), **flags.model_options(args, spec))
    if args.json:
        print_rows(rows, True, single=False)
        return 0
    first = rows[0]
    print(f"{first['model']} on {first['data']}: {first['n_train']} train / {first['n_test']} "
          f"test rows; log-likelihood {first['log_likelihood_method']}; mean nats per "
          f"datapoint, mean ± std over {args.seeds} seed(s)")
    print(format_table(rows.summary))
    print(f"\nwritten: {first['compare_dir']}/ (report.html, comparison.csv, comparison.json, "
          "summary.csv, summary.json, *.png, one run folder per fit with posterior.nc)")
    return 0
