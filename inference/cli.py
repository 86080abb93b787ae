"""The ``lvm-zoo`` command line.

    lvm-zoo list
    lvm-zoo fit MODEL --data DATA [--guide G] [--inference svi|em|closed-form] ...
    lvm-zoo compare MODEL [--data DATA] [--seeds N] [--out DIR] [--json]
    lvm-zoo evaluate RUN_DIR [--data DATA] [--json]

Every subcommand is a thin layer over a Python function of the same name in :mod:`inference.api`
(``fit``, ``compare``, ``evaluate``), so anything typed here can be called from Python. A
model's own options (``--components``, ``--latent-dim``, ...) come from its config dataclass.
Bad input exits with status 2 and one line that names the input and the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from inference import api
from inference.svi import ELBOS, TrainingDiverged
from zoo.errors import InputError
from zoo.registry import ModelSpec, get_model


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        spec = _model_in(argv)
        args = build_parser(spec).parse_args(argv)
        if args.command is None:
            build_parser(None).print_help()
            return 2
        return args.handler(args)
    except InputError as error:
        print(f"lvm-zoo: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"lvm-zoo: training stopped: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lvm-zoo: interrupted", file=sys.stderr)
        return 130


def _model_in(argv: list[str]) -> ModelSpec | None:
    """The model named after ``fit``/``compare``, so that its own flags can be added."""
    if len(argv) >= 2 and argv[0] in ("fit", "compare", "check") and not argv[1].startswith("-"):
        return get_model(argv[1])
    return None


def build_parser(spec: ModelSpec | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvm-zoo", description="Latent-variable models in Pyro: fit, compare, evaluate.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    listing = commands.add_parser("list", help="models, guides, inference methods, datasets")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(handler=_list)

    fit = commands.add_parser("fit", help="fit one model with one strategy")
    fit.add_argument("model", help="a registered model (see `lvm-zoo list`) or FILE.py:NAME")
    fit.add_argument("--inference", choices=("closed-form", "em", "svi"),
                     help="strategy (default: the model's first)")
    fit.add_argument("--guide", help="guide for --inference svi (see `lvm-zoo list`)")
    _data_options(fit)
    _fit_options(fit)
    _model_options(fit, spec)
    fit.add_argument("--resume", action="store_true",
                     help="continue an SVI run from the checkpoint in --out")
    fit.set_defaults(handler=_fit)

    compare = commands.add_parser("compare", help="every applicable strategy on one split")
    compare.add_argument("model", help="a registered model or FILE.py:NAME")
    compare.add_argument("--seeds", type=int, default=1, help="seeds per strategy (default 1)")
    compare.add_argument("--reference", choices=("nuts",),
                         help="nuts: NUTS draws of the chosen rows' latents at each fit's "
                              "parameters, the reference posterior each guide is measured "
                              "against (models with continuous latents)")
    compare.add_argument("--elbos", type=lambda text: tuple(text.split(",")),
                         help="comma-separated ELBO estimators to run with every guide, beside "
                              "its default one, e.g. Trace_ELBO,TraceMeanField_ELBO")
    compare.add_argument("--strategies", type=lambda text: tuple(text.split(",")),
                         help="run only these cells of the grid, e.g. em,svi-exact (default: "
                              "all; the names are the run folders' prefixes)")
    compare.add_argument("--gap-rows", type=int, default=64,
                         help="training rows of the amortization-gap split where q* is "
                              "fitted per datapoint (0: skip it; a closed-form q* uses all)")
    compare.add_argument("--draws", type=int, default=200,
                         help="posterior draws per fit in the exported InferenceData")
    _data_options(compare)
    _fit_options(compare)
    _model_options(compare, spec)
    compare.set_defaults(handler=_compare)

    evaluate = commands.add_parser("evaluate", help="recompute a run's metrics from its files")
    evaluate.add_argument("run_dir", help="the --out folder of a `lvm-zoo fit` run")
    evaluate.add_argument("--data", help="evaluate on another dataset of the same dimension")
    evaluate.add_argument("--data-root", help="folder with the dataset files")
    evaluate.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    evaluate.add_argument("--iwae-samples", type=int, default=None,
                          help="importance samples for models without an exact log p(x)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_evaluate)

    check = commands.add_parser("check", help="run the model and each guide once under Pyro's "
                                "validation and name what would break a fit")
    check.add_argument("model", help="a registered model or FILE.py:NAME")
    check.add_argument("--guides", type=lambda text: tuple(text.split(",")),
                       help="comma-separated guides to check (default: all of the model's)")
    check.add_argument("--rows", type=int, default=64,
                       help="training rows to run on (default 64; the check also subsamples)")
    check.add_argument("--seed", type=int, default=0, help="seed of the split and the draws")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    _data_options(check)
    _model_options(check, spec)
    check.set_defaults(handler=_check)
    return parser


def _data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", help="dataset name or a .csv/.npy/.npz file "
                       "(default: the model's default dataset)")
    group.add_argument("--data-root", help="folder with mnist/, fashion-mnist/, frey-face/ "
                       "(default: $LVM_ZOO_DATA or ~/.cache/lvm-zoo)")
    group.add_argument("--download", action="store_true",
                       help="download MNIST / Fashion-MNIST through torchvision if missing")
    group.add_argument("--test-fraction", type=float, default=0.2,
                       help="held-out share for datasets without an official split, in [0, 1)")
    group.add_argument("--binarize", choices=("static", "dynamic"),
                       help="binarize images for Bernoulli likelihoods")
    group.add_argument("--standardize", action="store_true",
                       help="z-score every column with the training mean and deviation")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="auto picks CUDA when present")
    group.add_argument("--dtype", default="float32", choices=("float32", "float64"))


def _fit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fitting")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--steps", type=int, help="SVI steps")
    group.add_argument("--lr", type=float, help="SVI learning rate (Adam)")
    group.add_argument("--batch-size", type=int, help="SVI minibatch rows (default: all)")
    group.add_argument("--elbo", choices=tuple(ELBOS), help="ELBO estimator for SVI")
    group.add_argument("--num-particles", type=int, help="ELBO particles per step")
    group.add_argument("--restarts", type=int, default=1,
                       help="SVI restarts from data-based inits; the best ELBO is kept")
    group.add_argument("--n-init", type=int, help="EM restarts; the best likelihood is kept")
    group.add_argument("--max-iter", type=int, help="EM iterations at most")
    group.add_argument("--tol", type=float, help="EM tolerance, nats per datapoint")
    group.add_argument("--init", help="EM initialization (model-specific, e.g. kmeans++)")
    group.add_argument("--iwae-samples", type=int, default=None,
                       help="importance samples K for models without an exact log p(x)")
    group.add_argument("--out", help="run directory (default: runs/<model>-<strategy>-...)")
    group.add_argument("--json", action="store_true", help="print JSON only (no progress bar)")


def _model_options(parser: argparse.ArgumentParser, spec: ModelSpec | None) -> None:
    if spec is None:
        return
    group = parser.add_argument_group(f"{spec.name} options")
    for f in dataclasses.fields(spec.config_class):
        if not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f.metadata.get("help", "") + (f" (default: {default})" if default is not None
                                             else "")
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=text)
            continue
        kind = f.metadata.get("type") or (type(default) if default is not None else str)
        if kind is tuple:
            kind = _int_tuple
        group.add_argument(flag, dest=f.name, type=kind, default=None,
                           choices=f.metadata.get("choices"), help=text)


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers"
                                         ) from None


def _model_kwargs(args: argparse.Namespace, spec: ModelSpec) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(spec.config_class)
            if f.metadata.get("cli", True) and getattr(args, f.name, None) is not None}


def _common(args: argparse.Namespace) -> dict:
    keys = ("data", "data_root", "download", "test_fraction", "binarize", "standardize",
            "device", "dtype", "seed", "steps", "lr", "batch_size", "elbo", "num_particles",
            "restarts", "n_init", "max_iter", "tol", "init", "iwae_samples", "out")
    return {k: getattr(args, k) for k in keys}


def _list(args: argparse.Namespace) -> int:
    catalogue = api.catalogue()
    if args.json:
        print(json.dumps(catalogue, indent=2))
        return 0
    print("Models")
    for name, entry in catalogue["models"].items():
        print(f"  {name:<10} {entry['summary']}")
        print(f"  {'':<10} inference: {', '.join(entry['inference'])}; guides: "
              f"{', '.join(entry['guides']) or '-'}; default data: {entry['default_data']}")
        if entry["notes"]:
            print(f"  {'':<10} {entry['notes']}")
    print("\nInference methods")
    for name, text in catalogue["inference"].items():
        print(f"  {name:<12} {text}")
    print("\nELBO estimators (--elbo): " + ", ".join(catalogue["elbo_estimators"]))
    print("\nDatasets: " + ", ".join(catalogue["datasets"])
          + ", synthetic-<model>, or a .csv/.npy/.npz file (rows are observations)")
    return 0


def _fit(args: argparse.Namespace) -> int:
    spec = get_model(args.model)
    row = api.fit(spec, inference=args.inference, guide=args.guide, resume=args.resume,
                  progress=not args.json and sys.stderr.isatty(),
                  **_common(args), **_model_kwargs(args, spec))
    _print_rows([row], args.json, single=True)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from inference.compare import format_table, summarize

    spec = get_model(args.model)
    rows = api.compare(spec, seeds=args.seeds, progress=not args.json and sys.stderr.isatty(),
                       reference=args.reference, elbos=args.elbos,
                       strategies=args.strategies, gap_rows=args.gap_rows,
                       draws=args.draws, **_common(args), **_model_kwargs(args, spec))
    if args.json:
        _print_rows(rows, True, single=False)
        return 0
    first = rows[0]
    print(f"{first['model']} on {first['data']}: {first['n_train']} train / {first['n_test']} "
          f"test rows; log-likelihood {first['log_likelihood_method']}; mean nats per "
          f"datapoint, mean ± std over {args.seeds} seed(s)")
    print(format_table(summarize(rows)))
    print(f"\nwritten: {first['compare_dir']}/ (report.html, comparison.csv, comparison.json, "
          "summary.csv, summary.json, *.png, one run folder per fit with posterior.nc)")
    return 0


def _check(args: argparse.Namespace) -> int:
    """Exit status 2 and one line per problem (site, what, fix) when something would break a
    fit; 0 and one "ok" line otherwise."""
    from inference.check import check

    spec = get_model(args.model)
    report = check(spec, data=args.data, data_root=args.data_root, download=args.download,
                   test_fraction=args.test_fraction, binarize=args.binarize,
                   standardize=args.standardize, device=args.device, dtype=args.dtype,
                   seed=args.seed, rows=args.rows, guides=args.guides,
                   **_model_kwargs(args, spec))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            print(problem.line())
        print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 2


def _evaluate(args: argparse.Namespace) -> int:
    row = api.evaluate(args.run_dir, data=args.data, data_root=args.data_root,
                       device=args.device, iwae_samples=args.iwae_samples)
    _print_rows([row], args.json, single=True)
    return 0


COLUMNS = (("inference", "{}"), ("guide", "{}"), ("seed", "{}"), ("train_log_likelihood", "{:.4f}"),
           ("test_log_likelihood", "{:.4f}"), ("elbo", "{:.4f}"), ("gap", "{:.4f}"),
           ("seconds", "{:.2f}"), ("steps", "{}"), ("converged", "{}"))


def _print_rows(rows: list[dict], as_json: bool, *, single: bool) -> None:
    if as_json:
        print(json.dumps(rows[0] if single else rows, indent=2))
        return
    first = rows[0]
    print(f"{first['model']} on {first['data']}: {first['n_train']} train / {first['n_test']} "
          f"test rows; log-likelihood {first['log_likelihood_method']}, mean nats per datapoint")
    table = [[name for name, _ in COLUMNS]]
    for row in rows:
        table.append([("-" if row.get(name) is None else form.format(row[name]))
                      for name, form in COLUMNS])
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    if single:
        print(f"run directory: {first['run_dir']}")


if __name__ == "__main__":
    raise SystemExit(main())
