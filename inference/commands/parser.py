"""The ``lvm-zoo`` argument parser, built once: one sub-command per module of
:mod:`inference.commands`, the strategies' options as flags, and, once the command line names
a model, that model's own flags (``--components``, ``--latent-dim``) from its config."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing

from inference import strategies
from inference.data import DEVICES, DTYPES, DataRequest
from inference.fitting import default_test_fraction, grid_option_names
from zoo.errors import InputError
from zoo.registry import ModelSpec

# the commands that take a model, and so its flags
MODEL_COMMANDS = ("fit", "compare", "check", "calibrate")
DATA_FLAGS = ("data", "data_root", "download", "test_fraction", "binarize", "standardize",
              "dequantize", "dtype", "device", "chunk_rows")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's own error: one line naming the input and where the help is,
    exit status 2 through ``main``, no usage block (unknown flags: :func:`unknown`)."""

    def error(self, message: str):
        raise InputError(f"{message}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    """Every command and its flags; a model's own flags come later (:func:`add_model`)."""
    parser = _Parser(
        prog="lvm-zoo", description="Latent-variable models in Pyro: fit, compare, evaluate.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    listing = commands.add_parser("list", help="models, guides, inference methods, datasets")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    _fit_command(commands)
    _compare_command(commands)
    _run_commands(commands)
    _check_command(commands)
    _calibrate_command(commands)
    return parser


def _fit_command(commands) -> None:
    fit = commands.add_parser("fit", help="fit one model with one strategy")
    fit.add_argument("model", help="a registered model (see `lvm-zoo list`) or FILE.py:NAME")
    fit.add_argument("--inference", choices=tuple(strategies.strategies()),
                     help="strategy (default: the model's first)")
    fit.add_argument("--guide", help="guide for strategies that take one (see `lvm-zoo list`)")
    _data_options(fit)
    _fit_options(fit)
    fit.add_argument("--resume", action="store_true",
                     help="continue an SVI run from the checkpoint in --out")
    fit.add_argument("--resume-anyway", action="store_true",
                     help="with --resume: continue even though the learning rate, batch size, "
                          "ELBO or particles differ from the interrupted run's")
    fit.add_argument("--reference", choices=("nuts",),
                     help="nuts: NUTS draws of every continuous latent given every training "
                          "row (each row's local latents too), beside the fit's posterior, with "
                          "R-hat and ESS against their targets; written as posterior-nuts.nc")
    _nuts_options(fit)
    fit.add_argument("--overwrite", action="store_true",
                     help="replace the finished run in --out (otherwise it is refused); the "
                          "earlier run stays until the new one is written whole")
    fit.add_argument("--no-figures", action="store_true",
                     help="write no figures (.png); the run folder's other files are the same")


def _nuts_options(command) -> None:
    """--nuts-samples, --nuts-warmup, --nuts-chains (with --reference nuts)."""
    from inference.sampling import NUTS_CHAINS as chains
    from inference.sampling import NUTS_SAMPLES as samples
    from inference.sampling import NUTS_WARMUP as warmup

    command.add_argument("--nuts-samples", type=int,
                         help=f"NUTS draws per chain (default {samples})")
    command.add_argument("--nuts-warmup", type=int,
                         help=f"NUTS warm-up steps per chain (default {warmup})")
    command.add_argument("--nuts-chains", type=int,
                         help=f"NUTS chains, run one after another (default {chains}); "
                              "R-hat needs at least 2")


def _compare_command(commands) -> None:
    compare = commands.add_parser("compare", help="every applicable strategy on one split")
    compare.add_argument("model", help="a registered model or FILE.py:NAME")
    compare.add_argument("--seeds", type=int, default=1, help="seeds per strategy (default 1)")
    compare.add_argument("--reference", choices=("nuts",),
                         help="nuts: NUTS draws of the chosen rows' latents at each fit's "
                              "parameters, the reference posterior each guide is measured "
                              "against (models with continuous latents)")
    _nuts_options(compare)
    compare.add_argument("--strategies", type=_names,
                         help="run only these cells of the grid, e.g. em,svi-exact (default: "
                              "all; the names are the run folders' prefixes)")
    compare.add_argument("--gap-rows", type=int, default=64,
                         help="training rows of the amortization-gap split where q* is "
                              "fitted per datapoint (0: skip it; a closed-form q* uses all)")
    compare.add_argument("--draws", type=int, default=200,
                         help="posterior draws per fit in the exported InferenceData")
    compare.add_argument("--overwrite", action="store_true",
                         help="replace the comparison already in --out: its files and run "
                              "folders (otherwise it is refused)")
    compare.add_argument("--resume", action="store_true",
                         help="continue the comparison stopped part way in --out: fit only the "
                              "cells that did not finish (under the same options)")
    grid = compare.add_argument_group("grid")
    for strategy in strategies.strategies().values():
        if strategy.GridOptions is not None:
            _dataclass_flags(grid, strategy.GridOptions, set())
    _data_options(compare)
    _fit_options(compare)


def _run_commands(commands) -> None:
    """``evaluate``, ``sample`` and ``predict``: commands on a run folder."""
    evaluate = commands.add_parser("evaluate", help="recompute a run's metrics from its files")
    evaluate.add_argument("run_dir", help="the --out folder of a `lvm-zoo fit` run")
    evaluate.add_argument("--model", help="FILE.py for a run of a model from a user file (a run "
                          "folder never names code to run)")
    evaluate.add_argument("--data", help="evaluate on another dataset of the same dimension")
    evaluate.add_argument("--data-root", help="folder with the dataset files")
    evaluate.add_argument("--device", default="auto", choices=DEVICES)
    evaluate.add_argument("--iwae-samples", type=int, default=None,
                          help="importance samples for models without an exact log p(x)")
    evaluate.add_argument("--iwae-rows", default=None,
                          help="rows per split judged by importance sampling (default: the "
                          "run's; 'all': every row)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    sample = commands.add_parser("sample", help="draw rows from a run's fitted model")
    sample.add_argument("run_dir", help="the --out folder of a `lvm-zoo fit` run")
    sample.add_argument("-n", "--num", type=int, default=64, help="rows to draw (default 64)")
    sample.add_argument("--out", default=None,
                        help="file to write (CSV, or a PNG grid for image data; default: a new "
                             "samples.csv / samples.png in the current folder, numbered "
                             "samples-2.csv, ... when taken; never a file of the run)")
    sample.add_argument("--overwrite", action="store_true",
                        help="replace --out if it exists (otherwise it is refused)")
    sample.add_argument("--model", help="FILE.py for a run of a model from a user file")
    sample.add_argument("--seed", type=int, default=None, help="seed of the draws")

    predict = commands.add_parser("predict", help="labels, latent means and log p(x) per row "
                                  "of new data under a run's fitted model")
    predict.add_argument("run_dir", help="the --out folder of a `lvm-zoo fit` run")
    predict.add_argument("--data", required=True, help="a .csv/.npy/.npz file or dataset name")
    predict.add_argument("--out", default=None,
                         help="CSV to write (default: a new predictions.csv in the current "
                              "folder, numbered predictions-2.csv, ... when taken); its rows "
                              "are split=new")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace --out if it exists (otherwise it is refused)")
    predict.add_argument("--model", help="FILE.py for a run of a model from a user file")


def _check_command(commands) -> None:
    check = commands.add_parser("check", help="run the model and each guide once under Pyro's "
                                "validation and name what would break a fit")
    check.add_argument("model", help="a registered model or FILE.py:NAME")
    check.add_argument("--guides", type=_names,
                       help="comma-separated guides to check (default: all of the model's)")
    check.add_argument("--rows", type=int, default=64,
                       help="training rows to run on (default 64; the check also subsamples)")
    check.add_argument("--seed", type=int, default=0, help="seed of the split and the draws")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    _data_options(check)


def _calibrate_command(commands) -> None:
    sbc = commands.add_parser("calibrate", help="simulation-based calibration of a guide on a "
                              "model with global latents: rank histograms and a uniformity test")
    sbc.add_argument("model", help="a registered model or FILE.py:NAME with global_sites")
    sbc.add_argument("--guide", help="the guide to calibrate (default: the model's)")
    sbc.add_argument("--replicates", type=int, default=100,
                     help="M: prior draw, data, fit, rank; this many times (default 100)")
    sbc.add_argument("--rows", type=int, default=20, help="N: rows drawn per replicate "
                     "(default 20)")
    sbc.add_argument("--draws", type=int, default=99,
                     help="L: posterior draws θ is ranked among (default 99: ranks 0..99)")
    sbc.add_argument("--bins", type=int, default=10, help="B: histogram bins and chi-square "
                     "cells (default 10; keep M / B >= 5)")
    sbc.add_argument("--alpha", type=float, default=0.01,
                     help="a parameter's ranks are called non-uniform below this p (default "
                          "0.01)")
    sbc.add_argument("--jobs", type=int, default=1,
                     help="processes, one thread each (default 1); the ranks do not depend "
                          "on it")
    sbc.add_argument("--seed", type=int, default=0)
    sbc.add_argument("--out", help="folder: one file per replicate (a rerun reuses them), "
                     "calibration.json, ranks.png (default: runs/calibrate-<model>-...)")
    sbc.add_argument("--overwrite", action="store_true",
                     help="start again in an --out that holds another calibration")
    sbc.add_argument("--json", action="store_true", help="print one JSON object")
    seen: set[str] = set()
    for strategy in strategies.strategies().values():
        if strategy.uses_guide:
            _dataclass_flags(sbc.add_argument_group(f"--inference {strategy.name}"),
                             strategy.Options, seen)


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def model_named(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The model named after ``fit``/``compare``/``check`` (wherever it stands among the
    other flags), so that its own flags can be added before parsing."""
    if not argv or argv[0] not in MODEL_COMMANDS:
        return None
    flags = subcommand(parser, argv[0])._option_string_actions
    position = 1
    while position < len(argv):
        token = argv[position]
        if not token.startswith("-"):
            return token
        action = flags.get(token)
        # a known flag without a value, or --flag=value, is one token; any other flag (the
        # model's own, unknown yet) is taken to have a value
        takes_value = "=" not in token and (action is None or action.nargs != 0)
        position += 2 if takes_value else 1
    return None


def unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]):
    """One line for flags the command does not take, with the closest one it does."""
    command = getattr(args, "command", None)
    known = list(subcommand(parser, command)._option_string_actions) if command else []
    flag = next((e for e in extras if e.startswith("-")), extras[0]).split("=")[0]
    close = difflib.get_close_matches(flag, known, n=1)
    where = f"lvm-zoo {command}" if command else "lvm-zoo"
    hint = f"; did you mean {close[0]}?" if close else ""
    raise InputError(f"{where} takes no {' '.join(extras)}{hint} (see `{where} --help`)")


def _data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", help="dataset name or a .csv/.npy/.npz file "
                       "(default: the model's default dataset)")
    group.add_argument("--data-root", help="folder with mnist/, fashion-mnist/, frey-face/ "
                       "(default: $LVM_ZOO_DATA or ~/.cache/lvm-zoo)")
    group.add_argument("--download", action="store_true",
                       help="download MNIST / Fashion-MNIST through torchvision if missing")
    group.add_argument("--test-fraction", type=float, default=None,
                       help="held-out share for datasets without an official split, in [0, 1) "
                            "(default 0.2; 0 for a model with global latents, whose posterior "
                            "then sees every row)")
    group.add_argument("--binarize", choices=("static", "dynamic"),
                       help="binarize images for Bernoulli likelihoods")
    group.add_argument("--standardize", action="store_true",
                       help="z-score every column with the training mean and deviation")
    group.add_argument("--dequantize", action="store_true",
                       help="8-bit images (mnist, fashion-mnist, frey-face): spread pixel k/255 "
                            "over its bin, (k + u)/256 with u ~ U[0, 1) seeded by --seed, for "
                            "a bounded density; the record adds bits per dimension")
    group.add_argument("--device", default="auto", choices=DEVICES,
                       help="auto picks CUDA when present")
    group.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    group.add_argument("--chunk-rows", type=_positive_int, default=None,
                       help="stream a .npy memory-mapped, this many rows at a time (EM and "
                            "K-means pass over it chunk by chunk; SVI draws minibatches from "
                            "it); default: in memory, unless the file is larger than half the "
                            "memory available (then chunks of 64 MiB)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def held_out_share(args: argparse.Namespace, spec: ModelSpec) -> float:
    """``--test-fraction``, else the model's default (0 for global latents)."""
    given = getattr(args, "test_fraction", None)
    return default_test_fraction(spec) if given is None else given


def data_request(args: argparse.Namespace, spec: ModelSpec) -> DataRequest:
    values = {k: getattr(args, k) for k in DATA_FLAGS}
    values["test_fraction"] = held_out_share(args, spec)
    return DataRequest(name=values.pop("data"), root=values.pop("data_root"), seed=args.seed,
                       **values)


def _fit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fitting")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--iwae-samples", type=int, default=None,
                       help="importance samples K for models without an exact log p(x)")
    group.add_argument("--iwae-rows", default=None,
                       help="rows per split judged by importance sampling (default: "
                       "250000 / K, at least 100, drawn by --seed; 'all': every row)")
    group.add_argument("--out", help="run directory (default: runs/<model>-<strategy>-...)")
    group.add_argument("--json", action="store_true", help="print JSON only (no progress bar)")
    seen: set[str] = set()
    for strategy in strategies.strategies().values():
        fields = [f for f in dataclasses.fields(strategy.Options) if f.name not in seen]
        if fields:
            _dataclass_flags(parser.add_argument_group(f"--inference {strategy.name}"),
                             strategy.Options, seen)


def strategy_options(args: argparse.Namespace) -> dict:
    names = set(strategies.option_owners()) | grid_option_names()
    return {k: getattr(args, k) for k in names
            if getattr(args, k, None) is not None}


def _dataclass_flags(group, options_class: type, seen: set[str]) -> None:
    """One flag per field of a strategy's options dataclass (``None`` defaults)."""
    hints = typing.get_type_hints(options_class)
    for f in dataclasses.fields(options_class):
        if f.name in seen or not f.metadata.get("cli", True):
            continue
        seen.add(f.name)
        kinds = [k for k in typing.get_args(hints[f.name]) or (hints[f.name],)
                 if k is not type(None)]
        kind = typing.get_origin(kinds[0]) or kinds[0]
        if kind is bool:
            group.add_argument(strategies.flag(f.name), dest=f.name, default=None,
                               action=argparse.BooleanOptionalAction,
                               help=f.metadata.get("help"))
            continue
        parse = _names if kind is tuple else kind
        group.add_argument(strategies.flag(f.name), dest=f.name, type=parse, default=None,
                           choices=None if kind is tuple else f.metadata.get("choices"),
                           help=f.metadata.get("help"))


def add_model(parser: argparse.ArgumentParser, spec: ModelSpec) -> None:
    """The flags of ``spec``'s config fields (``latent_dim`` -> ``--latent-dim``)."""
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


def model_options(args: argparse.Namespace, spec: ModelSpec) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(spec.config_class)
            if f.metadata.get("cli", True) and getattr(args, f.name, None) is not None}
