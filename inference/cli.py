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
import difflib
import errno
import json
import sys
import typing
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch

from inference import api, distributed, fitting, strategies
from inference.catalog import get_model
from inference.compare.harness import grid_option_names
from inference.compare.tables import format_table, summarize
from inference.data import DEVICES, DTYPES, DataRequest
from inference.fitting import default_run_dir, prepare
from inference.runs import (
    CHECKPOINT_FILE,
    RUN_FILE,
    check_writable,
    earlier_files,
    fresh_folder,
    load_checkpoint,
    locked,
    read_json,
    refuse_earlier,
    remove_earlier,
    removed_on_failure,
)
from inference.svi import TrainingDiverged
from zoo.errors import InputError
from zoo.registry import ModelSpec


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    spec = args = None
    try:
        spec = _model_in(argv)
        parser = build_parser(spec)
        args, extras = parser.parse_known_args(argv)
        if extras:
            _unknown(parser, args, extras)
        if args.command is None:
            build_parser(None).print_help()
            return 2
        return args.handler(args)
    except InputError as error:  # under torchrun the agent stops the other ranks
        print(f"lvm-zoo: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"lvm-zoo: training stopped: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a folder made read-only while writing
        print(f"lvm-zoo: error: {_os_error(error)}", file=sys.stderr)
        return 2
    except (FloatingPointError, torch.linalg.LinAlgError) as error:
        print(f"lvm-zoo: error: {_numerical_error(error, args, spec)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lvm-zoo: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.leave()


_OS_FIXES = {
    errno.ENOSPC: "the disk is full: free some space, or write elsewhere with --out",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere with --out",
    errno.EACCES: "check its permissions, or write to a folder of your own with --out",
    errno.EPERM: "check its permissions, or write to a folder of your own with --out",
    errno.EROFS: "the file system is read-only: write elsewhere with --out",
    errno.ENOENT: "check the path (was the folder removed meanwhile?)",
}


def _os_error(error: OSError) -> str:
    """``<file>: <strerror>; <fix>`` for an operating-system error."""
    where = error.filename if error.filename is not None else error.filename2
    what = error.strerror or str(error) or type(error).__name__
    fix = _OS_FIXES.get(error.errno, "check the file and the disk, then run again")
    return f"{where}: {what}; {fix}" if where is not None else f"{what}; {fix}"


def _numerical_error(error: Exception, args, spec: ModelSpec | None) -> str:
    """One line for a fit that failed in floating point: the data, what broke, the fixes."""
    data = getattr(args, "data", None) or (spec.default_data if spec is not None else None)
    kind = ("LinAlgError" if isinstance(error, torch.linalg.LinAlgError)
            else type(error).__name__)
    detail = (str(error).strip().splitlines() or [""])[0]
    fixes = []
    if not getattr(args, "standardize", False):
        fixes.append("rescale it with --standardize")
    if getattr(args, "dtype", "float32") != "float64":
        fixes.append("fit in --dtype float64")
    fixes = fixes or ["rescale the data yourself (its values are too large or too alike)"]
    return (f"the fit on {data or 'the data'} failed numerically ({kind}: {detail}); "
            + ", or ".join(fixes))


def _model_in(argv: list[str]) -> ModelSpec | None:
    """The model named after ``fit``/``compare``/``check`` (wherever it stands among the
    other flags), so that its own flags can be added."""
    if not argv or argv[0] not in ("fit", "compare", "check"):
        return None
    commands = next(a for a in build_parser(None)._actions
                    if isinstance(a, argparse._SubParsersAction))
    flags = commands.choices[argv[0]]._option_string_actions
    position = 1
    while position < len(argv):
        token = argv[position]
        if not token.startswith("-"):
            return get_model(token)
        action = flags.get(token)
        # a known flag without a value, or --flag=value, is one token; any other flag (the
        # model's own, unknown yet) is taken to have a value
        takes_value = "=" not in token and (action is None or action.nargs != 0)
        position += 2 if takes_value else 1
    return None


def _unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]):
    """One line for flags the command does not take, with the closest one it does."""
    command = getattr(args, "command", None)
    commands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                    None)
    known = list(commands.choices[command]._option_string_actions) if command else []
    flag = next((e for e in extras if e.startswith("-")), extras[0]).split("=")[0]
    close = difflib.get_close_matches(flag, known, n=1)
    where = f"lvm-zoo {command}" if command else "lvm-zoo"
    hint = f"; did you mean {close[0]}?" if close else ""
    raise InputError(f"{where} takes no {' '.join(extras)}{hint} (see `{where} --help`)")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's own error: one line naming the input and where the help is,
    exit status 2 through ``main``, no usage block (unknown flags: :func:`_unknown`)."""

    def error(self, message: str):
        raise InputError(f"{message}; see `{self.prog} --help`")


def build_parser(spec: ModelSpec | None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lvm-zoo", description="Latent-variable models in Pyro: fit, compare, evaluate.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    listing = commands.add_parser("list", help="models, guides, inference methods, datasets")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(handler=_list)

    names = tuple(strategies.strategies())
    fit = commands.add_parser("fit", help="fit one model with one strategy")
    fit.add_argument("model", help="a registered model (see `lvm-zoo list`) or FILE.py:NAME")
    fit.add_argument("--inference", choices=names, help="strategy (default: the model's first)")
    fit.add_argument("--guide", help="guide for strategies that take one (see `lvm-zoo list`)")
    _data_options(fit)
    _fit_options(fit)
    _model_options(fit, spec)
    fit.add_argument("--resume", action="store_true",
                     help="continue an SVI run from the checkpoint in --out")
    fit.add_argument("--reference", choices=("nuts",),
                     help="nuts: NUTS draws of the global latents (models with priors), beside "
                          "the fit's posterior, with R-hat and ESS; written as posterior-nuts.nc")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace the finished run in --out (otherwise it is refused)")
    fit.set_defaults(handler=_fit)

    compare = commands.add_parser("compare", help="every applicable strategy on one split")
    compare.add_argument("model", help="a registered model or FILE.py:NAME")
    compare.add_argument("--seeds", type=int, default=1, help="seeds per strategy (default 1)")
    compare.add_argument("--reference", choices=("nuts",),
                         help="nuts: NUTS draws of the chosen rows' latents at each fit's "
                              "parameters, the reference posterior each guide is measured "
                              "against (models with continuous latents)")
    compare.add_argument("--strategies",
                         type=lambda text: tuple(text.split(",")),
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
    grid = compare.add_argument_group("grid")
    for strategy in strategies.strategies().values():
        if strategy.GridOptions is not None:
            _dataclass_flags(grid, strategy.GridOptions, set())
    _data_options(compare)
    _fit_options(compare)
    _model_options(compare, spec)
    compare.set_defaults(handler=_compare)

    evaluate = commands.add_parser("evaluate", help="recompute a run's metrics from its files")
    evaluate.add_argument("run_dir", help="the --out folder of a `lvm-zoo fit` run")
    evaluate.add_argument("--model", help="FILE.py for a run of a model from a user file (a run "
                          "folder never names code to run)")
    evaluate.add_argument("--data", help="evaluate on another dataset of the same dimension")
    evaluate.add_argument("--data-root", help="folder with the dataset files")
    evaluate.add_argument("--device", default="auto", choices=DEVICES)
    evaluate.add_argument("--iwae-samples", type=int, default=None,
                          help="importance samples for models without an exact log p(x)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_evaluate)

    sample = commands.add_parser("sample", help="draw rows from a run's fitted model")
    sample.add_argument("run_dir", help="the --out folder of a `lvm-zoo fit` run")
    sample.add_argument("-n", "--num", type=int, default=64, help="rows to draw (default 64)")
    sample.add_argument("--out", default=None,
                        help="file to write (CSV, or a PNG grid for image data; default: "
                             "samples.csv / samples.png in the run folder)")
    sample.add_argument("--model", help="FILE.py for a run of a model from a user file")
    sample.add_argument("--seed", type=int, default=None, help="seed of the draws")
    sample.set_defaults(handler=_sample)

    predict = commands.add_parser("predict", help="labels, latent means and log p(x) per row "
                                  "of new data under a run's fitted model")
    predict.add_argument("run_dir", help="the --out folder of a `lvm-zoo fit` run")
    predict.add_argument("--data", required=True, help="a .csv/.npy/.npz file or dataset name")
    predict.add_argument("--out", default=None,
                         help="CSV to write (default: predictions.csv in the run folder)")
    predict.add_argument("--model", help="FILE.py for a run of a model from a user file")
    predict.set_defaults(handler=_predict)

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


DATA_FLAGS = ("data", "data_root", "download", "test_fraction", "binarize", "standardize",
              "dequantize", "dtype", "device", "chunk_rows")


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


def _request(args: argparse.Namespace) -> DataRequest:
    values = {k: getattr(args, k) for k in DATA_FLAGS}
    return DataRequest(name=values.pop("data"), root=values.pop("data_root"), seed=args.seed,
                       **values)


def _fit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fitting")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--iwae-samples", type=int, default=None,
                       help="importance samples K for models without an exact log p(x)")
    group.add_argument("--out", help="run directory (default: runs/<model>-<strategy>-...)")
    group.add_argument("--json", action="store_true", help="print JSON only (no progress bar)")
    seen: set[str] = set()
    for strategy in strategies.strategies().values():
        fields = [f for f in dataclasses.fields(strategy.Options) if f.name not in seen]
        if fields:
            _dataclass_flags(parser.add_argument_group(f"--inference {strategy.name}"),
                             strategy.Options, seen)


def _strategy_options(args: argparse.Namespace) -> dict:
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
        parse = (lambda text: tuple(text.split(","))) if kind is tuple else kind
        group.add_argument(strategies.flag(f.name), dest=f.name, type=parse, default=None,
                           choices=None if kind is tuple else f.metadata.get("choices"),
                           help=f.metadata.get("help"))


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
    print("\nInference methods (--inference)")
    for name, entry in catalogue["inference"].items():
        flags = ", ".join(strategies.flag(o) for o in entry["options"]) or "no options"
        print(f"  {name:<12} {entry['summary']}; {flags}")
    print("\nELBO estimators (--elbo): " + ", ".join(catalogue["elbo_estimators"]))
    print("\nDatasets: " + ", ".join(catalogue["datasets"])
          + ", synthetic-<model>, or a .csv/.npy/.npz file (rows are observations)")
    return 0


def _fit(args: argparse.Namespace) -> int:
    options = {**_strategy_options(args), **_model_kwargs(args, get_model(args.model))}
    spec, strategy, _, model_options = prepare(
        args.model, inference=args.inference, guide=args.guide,
        **options)  # every option checked before data or work
    if args.reference == "nuts":
        fitting.check_nuts_reference(spec)
    if args.resume and args.overwrite:
        raise InputError("--resume continues the run in --out and --overwrite replaces it; "
                         "give one of them")
    request = _request(args)
    guide = args.guide or ((spec.default_guide or next(iter(spec.guides), None))
                           if strategy.uses_guide else None)
    # under torchrun every process fits its share; rank 0 alone writes the run folder
    group = distributed.from_environment(request.device)
    main = group is None or group.is_main
    run_dir = Path(args.out) if args.out else fresh_folder(default_run_dir(
        spec.name, strategy.name, guide, request.name or spec.default_data, args.seed))
    if group is not None:
        run_dir = Path(_broadcast_text(str(run_dir), group))  # rank 0's time-stamped name
    with ExitStack() as stack:
        if main:
            # the folder is checked writable now, not after training, and locked until the run
            # is saved (one writer per folder); a fit that fails before writing leaves no folder
            stack.enter_context(removed_on_failure(run_dir))
            stack.enter_context(locked(check_writable(run_dir)))
        refuse_earlier(run_dir, comparison=False, resume=args.resume, overwrite=args.overwrite)
        if args.resume:
            _check_resume(run_dir, spec, strategy.name, guide, model_options, request,
                          args.seed)
        earlier = earlier_files(run_dir, comparison=False) if args.overwrite and main else {}
        fitted = api.fit(spec, inference=strategy.name, guide=args.guide, data=request,
                         seed=args.seed, iwae_samples=args.iwae_samples,
                         checkpoint=run_dir / CHECKPOINT_FILE, resume=args.resume,
                         progress=main and not args.json and sys.stderr.isatty(), **options)
        if args.reference == "nuts":
            fitting.nuts_check(fitted)
        if main:
            with distributed.alone():
                api.save(fitted, run_dir)
            remove_earlier(earlier)  # --overwrite: what the new run did not write anew
    if not main:
        return 0
    _print_rows([fitted.record], args.json, single=True)
    summary = fitted.record.get("posterior_summary")
    if summary and not args.json:
        print("posterior of the global latents (mean, sd, 94% HDI):")
        for row in summary:
            print(f"  {row['site']:<16} {row['mean']:>10.4f} {row['sd']:>9.4f}  "
                  f"[{row['hdi_3%']:.4f}, {row['hdi_97%']:.4f}]")
    nuts = fitted.record.get("nuts_reference")
    if nuts and not args.json:
        print(f"NUTS reference ({nuts['chains']} chains): R-hat at most {nuts['r_hat_max']:.4f}, "
              f"bulk ESS at least {nuts['ess_bulk_min']:.0f}, {nuts['divergences']} divergences")
        for row in nuts["sites"]:
            print(f"  {row['site']:<16} NUTS mean {_rounded(row['nuts_mean'])}, sd "
                  f"{_rounded(row['nuts_sd'])}; the fit's mean {_rounded(row['fit_mean'])}")
    return 0


def _broadcast_text(text: str, group) -> str:
    """Rank 0's ``text`` on every rank (as bytes in a tensor; nothing is pickled)."""
    values = {"text": torch.tensor(list(text.encode()), dtype=torch.uint8)}
    shared = group.broadcast(values if group.is_main else None)
    return bytes(shared["text"].tolist()).decode()


def _single_process(command: str) -> None:
    """Commands other than ``fit`` run in one process: say so under torchrun."""
    if distributed.launched():
        raise InputError(f"`lvm-zoo {command}` runs in one process; under torchrun only "
                         "`lvm-zoo fit` shares its work (run this one without torchrun)")


def _check_resume(run_dir: Path, spec: ModelSpec, inference: str, guide: str | None,
                  model_options: dict, request: DataRequest, seed: int) -> None:
    """Before any data are loaded: the checkpoint can be read, and the run in ``run_dir``
    (its run.json, when it has one) was fitted with the model, strategy, guide, config, data
    and seed asked for now, so that resuming continues the same fit."""
    if (run_dir / CHECKPOINT_FILE).is_file():
        load_checkpoint(run_dir / CHECKPOINT_FILE)  # truncated or foreign: an InputError now
    if not (run_dir / RUN_FILE).is_file():
        return
    record = read_json(run_dir / RUN_FILE, dict)
    differences = [f"--{key} {record[key]}, not {now}" for key, now in
                   (("model", spec.name), ("inference", inference), ("guide", guide),
                    ("seed", seed)) if key in record and record[key] != now]
    stored = record.get("config")
    if isinstance(stored, dict) and isinstance(stored.get("dim"), int) and not differences:
        wanted = dataclasses.asdict(spec.make_config(dim=stored["dim"], **model_options))
        differences += [f"{strategies.flag(key)} {_plain(stored[key])}, not {_plain(value)}"
                        for key, value in wanted.items()
                        if key in stored and _plain(stored[key]) != _plain(value)]
    data = record.get("data")
    if isinstance(data, dict):
        now = request.to_dict()
        differences += [f"{strategies.flag(key) if key != 'name' else '--data'} "
                        f"{data[key]}, not {now[key]}"
                        for key in ("name", "test_fraction", "binarize", "standardize",
                                    "dequantize", "dtype")
                        if key in data and data[key] != now[key]]
    if differences:
        raise InputError(f"--resume: the run in {run_dir} was fitted with "
                         f"{'; '.join(differences)}; resume with the same options, or fit "
                         "into a new --out")


def _plain(value):
    """Lists and tuples alike (run.json stores tuples as lists)."""
    return tuple(_plain(v) for v in value) if isinstance(value, list | tuple) else value


def _compare(args: argparse.Namespace) -> int:
    _single_process("compare")
    spec = get_model(args.model)
    rows = api.compare(spec, seeds=args.seeds, progress=not args.json and sys.stderr.isatty(),
                       reference=args.reference, strategies=args.strategies,
                       gap_rows=args.gap_rows, draws=args.draws, data=_request(args),
                       seed=args.seed, out=args.out, iwae_samples=args.iwae_samples,
                       overwrite=args.overwrite,
                       **_strategy_options(args), **_model_kwargs(args, spec))
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
    _single_process("check")
    """Exit status 2 and one line per problem (site, what, fix) when something would break a
    fit; 0 and one "ok" line otherwise."""
    from inference.check import check

    spec = get_model(args.model)
    report = check(spec, data=args.data, data_root=args.data_root, download=args.download,
                   test_fraction=args.test_fraction, binarize=args.binarize,
                   standardize=args.standardize, dequantize=args.dequantize,
                   device=args.device, dtype=args.dtype,
                   seed=args.seed, rows=args.rows, guides=args.guides,
                   **_model_kwargs(args, spec))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            print(problem.line())
        print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 2


def _rounded(value) -> str:
    """A number or a nested list of numbers at four decimals."""
    if isinstance(value, list):
        return "[" + ", ".join(_rounded(v) for v in value) + "]"
    return "-" if value is None else f"{value:.4f}"


def _sample(args: argparse.Namespace) -> int:
    _single_process("sample")
    from inference.estimators_sklearn.commands import sample_run

    if args.num < 1:
        raise InputError(f"-n {args.num} must be at least 1")
    out = args.out or Path(args.run_dir)  # samples.csv or samples.png there
    print(f"written: {sample_run(args.run_dir, args.num, out, args.model, seed=args.seed)}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    _single_process("predict")
    from inference.estimators_sklearn.commands import predict_run

    out = args.out or Path(args.run_dir) / "predictions.csv"
    print(f"written: {predict_run(args.run_dir, args.data, out, args.model)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _single_process("evaluate")
    data = None if args.data is None and args.data_root is None else DataRequest(
        name=args.data, root=args.data_root)
    row = api.evaluate(args.run_dir, data=data, model=args.model, device=args.device,
                       iwae_samples=args.iwae_samples)
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
