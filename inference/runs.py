"""Run directories and checkpoints: written atomically, read back without executing code.

A run directory holds::

    run.json        what was fitted: model, config, data, inference, guide, seed, options
    metrics.json    the yardstick: log-likelihoods, ELBO, seconds, steps, ...
    params.pt       model and guide parameters (tensors only; torch.load(weights_only=True))
    history.json    per step / iteration curves
    *.png           figures

Every file is written to a temporary name in the same folder and renamed into place, so a
crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from inference.results import FitResult
from zoo.errors import InputError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process's umask, for files made by atomic_write
RUN_FILE, METRICS_FILE, PARAMS_FILE, HISTORY_FILE = (
    "run.json", "metrics.json", "params.pt", "history.json")


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide reports from other users
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Save a dict of tensors, numbers and nested dicts atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load what :func:`save_checkpoint` wrote; never unpickles arbitrary objects. A file that
    is truncated, unreadable or not a tensor file is an :class:`InputError`."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, Exception) as error:
        raise InputError(f"'{path}' cannot be read as a tensor file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); it is "
                         "truncated, unreadable or not written by lvm-zoo: fit again into a new "
                         "--out folder") from None
    if not isinstance(state, dict):
        raise InputError(f"'{path}' holds a {type(state).__name__}, not lvm-zoo's dict of "
                         "tensors; fit again into a new --out folder")
    return state


def check_writable(run_dir: str | Path) -> Path:
    """Make sure a run folder can be written (create it) before any work is done: not a file,
    not under a file, not read-only. Returns the path."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {run_dir} is an existing file, not a folder; choose a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-check-")
        probe.close()
    except OSError as error:
        raise InputError(f"--out {run_dir} cannot be written ({error.strerror or error}); "
                         "choose a folder you can write to") from None
    return run_dir


def save_run(run_dir: str | Path, record: dict, result: FitResult, metrics: dict) -> Path:
    """Write a run directory for ``result``; returns its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir / PARAMS_FILE, {
        "params": {k: v.detach().cpu() for k, v in result.params.items()},
        "guide_params": {k: v.detach().cpu() for k, v in result.guide_params.items()},
    })
    write_json(run_dir / HISTORY_FILE, result.history)
    write_json(run_dir / RUN_FILE, record)
    write_json(run_dir / METRICS_FILE, metrics)
    return run_dir


def load_run(run_dir: str | Path) -> tuple[dict, dict, dict, dict]:
    """``(record, params, guide_params, metrics)`` of a run directory (tensors on the CPU)."""
    run_dir = Path(run_dir)
    missing = [n for n in (RUN_FILE, PARAMS_FILE) if not (run_dir / n).is_file()]
    if missing:
        raise InputError(f"'{run_dir}' is not a run directory (no {', '.join(missing)}); give "
                         "the --out folder of a `lvm-zoo fit` run")
    record = read_json(run_dir / RUN_FILE, dict)
    missing = [k for k in ("model", "inference", "guide", "seed", "config", "data")
               if k not in record]
    if missing:
        raise InputError(f"{run_dir / RUN_FILE} lacks {', '.join(missing)}; it is partial or "
                         "not written by lvm-zoo: fit again")
    tensors = load_checkpoint(run_dir / PARAMS_FILE)
    for key in ("params", "guide_params"):
        values = tensors.get(key)
        if not isinstance(values, dict) or not all(isinstance(v, torch.Tensor)
                                                   for v in values.values()):
            raise InputError(f"{run_dir / PARAMS_FILE} has no dict of tensors '{key}'; fit again")
        bad = [n for n, v in values.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise InputError(f"{run_dir / PARAMS_FILE} holds NaN or infinite values in "
                             f"{', '.join(bad)}; the fit diverged or the file is damaged")
    metrics_path = run_dir / METRICS_FILE
    metrics = read_json(metrics_path, dict) if metrics_path.is_file() else {}
    return record, tensors["params"], tensors["guide_params"], metrics


def read_json(path: Path, kind: type = dict):
    """A JSON file's content, which must be a ``kind``; anything else is an InputError."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} cannot be read as JSON ({type(error).__name__}: {error}); it "
                         "is truncated, unreadable or not written by lvm-zoo") from None
    if not isinstance(value, kind):
        raise InputError(f"{path} holds a JSON {type(value).__name__}, not a {kind.__name__}")
    return value


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
