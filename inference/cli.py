"""The ``lvm-zoo`` command line.

    lvm-zoo list
    lvm-zoo fit MODEL --data DATA [--guide G] [--inference svi|em|closed-form] ...
    lvm-zoo compare MODEL [--data DATA] [--seeds N] [--out DIR] [--json]
    lvm-zoo evaluate RUN_DIR [--data DATA] [--json]
    lvm-zoo sample RUN_DIR | predict RUN_DIR --data DATA | check MODEL

Every command is a module of :mod:`inference.commands` with a ``main(args, spec)``, imported
only when it runs, so a command loads what it uses and no more (``fit`` does not load the
comparison, ArviZ or matplotlib until it writes a figure). Each is a thin layer over a Python
function of :mod:`inference.api` or :mod:`inference.fitting`. A model's own options
(``--components``, ``--latent-dim``, ...) come from its config dataclass. Bad input exits with
status 2 and one line that names the input and the fix.
"""

from __future__ import annotations

import atexit
import errno
import importlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

import torch

from inference import distributed, interrupt
from inference.commands import bench as bench_command
from inference.commands import parser as flags
from inference.run_folder import EvaluationFailed
from inference.svi import TrainingDiverged
from zoo.errors import InputError

# command -> the module of inference.commands that runs it
COMMANDS = {"list": "listing", "fit": "fit", "compare": "compare", "evaluate": "runs",
            "sample": "runs", "predict": "runs", "check": "check",
            "calibrate": "calibrate", "bench": "bench"}


def import_command(argv: Sequence[str]):
    """The module of :mod:`inference.commands` that runs ``argv``'s command (``None`` when
    ``argv`` names none), imported."""
    words = [word for word in argv if not word.startswith("-")]
    name = COMMANDS.get(words[0]) if words else None
    return importlib.import_module(f"inference.commands.{name}") if name else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = _parsed(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        module = importlib.import_module(f"inference.commands.{COMMANDS[args.command]}")
        with interrupt.handled():  # SIGINT / SIGTERM: saved at a step boundary, one line
            return module.main(args)
    except interrupt.Interrupted as stop:
        print(stop.line(argv), file=sys.stderr, flush=True)
        return stop.status
    except EvaluationFailed as failure:  # the training is saved; the yardstick failed
        print(f"lvm-zoo: error: {_line(failure.cause, args)}; the trained fit is saved in "
              f"{failure.run_dir} (the evaluation failed: `lvm-zoo evaluate "
              f"{failure.run_dir}` tries it again)", file=sys.stderr)
        return 2
    except distributed.WorkerLost as error:  # torchrun: another worker's failure
        print(f"lvm-zoo: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"lvm-zoo: training stopped: {error}", file=sys.stderr)
        return 1
    except (InputError, OSError, FloatingPointError, torch.linalg.LinAlgError) as error:
        print(f"lvm-zoo: error: {_line(error, args)}", file=sys.stderr)  # under torchrun the
        return 2  # agent stops the other ranks
    except KeyboardInterrupt:
        print("lvm-zoo: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.leave()


def run() -> NoReturn:
    """The ``lvm-zoo`` command and ``python -m inference``: :func:`main`, then the process
    ends without Python's teardown of every module.

    Why: tearing down torch's thousands of modules and objects took 0.35-0.45 s of every
    command (measured: ``import torch, inference.cli`` then exit, 0.36-0.39 s past the import
    against 0.03-0.05 s this way), longer than most fits on small data. What a normal exit
    does that matters still happens, in the same order: the streams are flushed and the
    ``atexit`` functions run (logging's shutdown, temporary folders, anything a plugin
    registered). Where another thread that is not a daemon is still running, or this Python
    has no ``atexit._run_exitfuncs``, the exit is Python's own. An exception that escapes
    :func:`main` (a bug: bad input is a status-2 line) is left to Python too, traceback and
    all."""
    try:
        code = main()
    except SystemExit as stop:
        code = stop.code
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    others = [thread for thread in threading.enumerate()
              if thread is not threading.main_thread() and not thread.daemon
              and not thread.name.startswith("lvm-zoo-e-step")]  # our idle worker pool
    if run_exit_functions is None or others:
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``| head``) or stream: nothing to keep
            pass
    run_exit_functions()
    os._exit(status)


def _parsed(argv: list[str]):
    """The command line parsed by one parser, with the named model's flags added to it and
    the model, joined to its guides once, in ``args.spec``."""
    parser = build_parser()
    name = flags.model_named(parser, argv)
    spec = None
    if name is not None:
        from inference.catalog import get_model

        spec = get_model(name)
        flags.add_model(flags.subcommand(parser, argv[0]), spec)
    args, extras = parser.parse_known_args(argv)
    if extras:
        flags.unknown(parser, args, extras)
    args.spec = spec
    return args


_OS_FIXES = {
    errno.ENOSPC: "the disk is full: free some space, or write elsewhere with --out",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere with --out",
    errno.EACCES: "check its permissions, or write to a folder of your own with --out",
    errno.EPERM: "check its permissions, or write to a folder of your own with --out",
    errno.EROFS: "the file system is read-only: write elsewhere with --out",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f) or the file "
                 "system allows: raise the limit, free some space, or write elsewhere with "
                 "--out",
    errno.ENOENT: "check the path (was the folder removed meanwhile?)",
}


def _line(error: BaseException, args) -> str:
    """One line for an error: the input's own message, the file and the fix for the
    operating system's, the data and the fixes for a numerical failure."""
    if isinstance(error, OSError):
        return _os_error(error)
    if isinstance(error, FloatingPointError | torch.linalg.LinAlgError):
        return _numerical_error(error, args)
    if isinstance(error, InputError):  # its first line: Pyro appends the trace's shapes
        return (str(error).strip().splitlines() or [type(error).__name__])[0]
    detail = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {detail}"


def _os_error(error: OSError) -> str:
    """``<file>: <strerror>; <fix>`` for an operating-system error."""
    where = error.filename if error.filename is not None else error.filename2
    what = error.strerror or str(error) or type(error).__name__
    fix = _OS_FIXES.get(error.errno, "check the file and the disk, then run again")
    return f"{where}: {what}; {fix}" if where is not None else f"{what}; {fix}"


def _numerical_error(error: Exception, args) -> str:
    """One line for a fit that failed in floating point: the data, what broke, the fixes."""
    spec = getattr(args, "spec", None)
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


def build_parser(spec=None):
    """The parser (with ``spec``'s flags on its model commands when given)."""
    parser = flags.build_parser()
    bench_command.add_command(parser)  # its flags live beside it (a light module)
    if spec is not None:
        for name in flags.MODEL_COMMANDS:
            flags.add_model(flags.subcommand(parser, name), spec)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
