"""The commands on a saved run folder: ``evaluate``, ``sample``, ``predict``."""

from __future__ import annotations

import argparse
import sys

from inference import distributed
from inference.commands.output import print_rows
from inference.data import DataRequest
from zoo.errors import InputError


def single_process(command: str) -> None:
    """Commands other than ``fit`` run in one process: say so under torchrun."""
    if distributed.launched():
        raise InputError(f"`lvm-zoo {command}` runs in one process; under torchrun only "
                         "`lvm-zoo fit` shares its work (run this one without torchrun)")


def main(args: argparse.Namespace) -> int:
    return {"evaluate": _evaluate, "sample": _sample, "predict": _predict}[args.command](args)


def _evaluate(args: argparse.Namespace) -> int:
    single_process("evaluate")
    from inference.reevaluate import evaluate_run

    data = None if args.data is None and args.data_root is None else DataRequest(
        name=args.data, root=args.data_root)
    row = evaluate_run(args.run_dir, data=data, model=args.model, device=args.device,
                       iwae_samples=args.iwae_samples, iwae_rows=args.iwae_rows,
                       progress=not args.json and sys.stderr.isatty())
    print_rows([row], args.json, single=True)
    return 0


def _sample(args: argparse.Namespace) -> int:
    single_process("sample")
    from inference.estimators_sklearn.commands import sample_run

    if args.num < 1:
        raise InputError(f"-n {args.num} must be at least 1")
    path = sample_run(args.run_dir, args.num, args.out, args.model, seed=args.seed,
                      overwrite=args.overwrite)
    print(f"written: {path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    single_process("predict")
    from inference.estimators_sklearn.commands import predict_run

    path = predict_run(args.run_dir, args.data, args.out, args.model, overwrite=args.overwrite)
    print(f"written: {path}")
    return 0
