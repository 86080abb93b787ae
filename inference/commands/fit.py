"""``lvm-zoo fit``: plan the fit (every flag, the data request and the run folder checked
before any work), run it, save it, print its record. Under ``torchrun`` every process fits
its share and rank 0 alone writes the run folder."""

from __future__ import annotations

import argparse
import math
import sys

from inference import distributed, fitting
from inference.commands import parser as flags
from inference.commands.output import print_rows, rounded
from inference.results import FitRecord


def main(args: argparse.Namespace) -> int:
    spec = args.spec
    request = flags.data_request(args, spec)
    # the process group first: the default folder's time-stamped name is rank 0's
    group = distributed.from_environment(request.device)
    writes = group is None or group.is_main
    settled = fitting.plan(
        spec, inference=args.inference, guide=args.guide, data=request, seed=args.seed,
        iwae_samples=args.iwae_samples, iwae_rows=args.iwae_rows, out=args.out, save=True,
        overwrite=args.overwrite,
        resume=args.resume, resume_anyway=args.resume_anyway, reference=args.reference,
        nuts_samples=args.nuts_samples, nuts_warmup=args.nuts_warmup,
        nuts_chains=args.nuts_chains,
        figures=not args.no_figures,
        progress=writes and not args.json and sys.stderr.isatty(),
        **flags.strategy_options(args), **flags.model_options(args, spec))
    _, record = fitting.execute(settled)
    if writes:
        print_rows([record.to_dict()], args.json, single=True)
        if not args.json:
            _posterior(record)
    return 0


def _posterior(record: FitRecord) -> None:
    """The global latents' posterior and the NUTS reference, when the fit has them."""
    if record.posterior_summary:
        print("posterior of the global latents (mean, sd, 94% HDI):")
        for row in record.posterior_summary:
            print(f"  {row['site']:<16} {row['mean']:>10.4f} {row['sd']:>9.4f}  "
                  f"[{row['hdi_3%']:.4f}, {row['hdi_97%']:.4f}]")
    nuts = record.nuts_reference
    if nuts:
        from inference.posterior_export import nuts_summary_line

        print(nuts_summary_line(nuts))
        for row in nuts.get("local_sites", ()):
            if row["max_mean_error_in_sd"] is not None:
                print(f"  {row['site']:<16} local, {row['rows_compared']} rows: the fit's means "
                      f"within {row['max_mean_error_in_sd']:.2f} NUTS sd, its sds within a "
                      f"factor {math.exp(row['max_abs_log_sd_ratio']):.2f}")
        for row in nuts["sites"]:
            print(f"  {row['site']:<16} NUTS mean {rounded(row['nuts_mean'])}, sd "
                  f"{rounded(row['nuts_sd'])}; the fit's mean {rounded(row['fit_mean'])}")
