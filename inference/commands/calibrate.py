"""``lvm-zoo calibrate``: simulation-based calibration of a guide on a model with global
latents (:func:`inference.calibrate.calibrate`); prints the per-parameter table (or one JSON
object with ``--json``), writes calibration.json and ranks.png into ``--out``. The exit status
is the verdict, as a test runner's is: 0 when every parameter's ranks pass the uniformity
test, 1 when one does not (the guide is miscalibrated), 2 for bad input."""

from __future__ import annotations

import argparse
import json
import sys

from inference import strategies
from inference.commands import parser as flags
from inference.commands.runs import single_process


def main(args: argparse.Namespace) -> int:
    single_process("calibrate")
    from inference import calibrate as sbc

    spec = args.spec
    options = {name: getattr(args, name) for name in strategies.option_owners()
               if getattr(args, name, None) is not None}
    out = args.out or f"runs/calibrate-{spec.name}-{args.guide or 'default'}-seed{args.seed}"
    tty = sys.stderr.isatty() and not args.json

    def progress(done: int, total: int) -> None:
        print(f"\rreplicates {done}/{total}", end="" if done < total else "\n",
              file=sys.stderr, flush=True)

    result = sbc.calibrate(
        spec, guide=args.guide, replicates=args.replicates, rows=args.rows, draws=args.draws,
        bins=args.bins, seed=args.seed, jobs=args.jobs, alpha=args.alpha, out=out,
        overwrite=args.overwrite, model_options=flags.model_options(args, spec),
        progress=progress if tty else None, **options)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"SBC of {result.fit.get('guide')} on {result.model}: {result.replicates} "
              f"replicates of {result.rows} rows, ranks among {result.draws} draws, "
              f"{result.bins} bins; {result.test} (alpha {result.alpha:g})")
        print(sbc.table(result))
        if result.failed:
            print(f"{len(result.failed)} fits failed and are not ranked (first: "
                  f"{result.failed[0]['reason']})")
        print(f"written: {result.out}/calibration.json, {result.figure}")
    if not result.uniform:
        failing = ", ".join(p.name for p in result.parameters if not p.uniform)
        print(f"lvm-zoo calibrate: ranks not uniform for {failing} (alpha {result.alpha:g}): "
              "the guide is miscalibrated there; exit status 1", file=sys.stderr)
    return 0 if result.uniform else 1
