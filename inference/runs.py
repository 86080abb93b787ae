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
    """Load what :func:`save_checkpoint` wrote; never unpickles arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


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
    record = json.loads((run_dir / RUN_FILE).read_text())
    tensors = load_checkpoint(run_dir / PARAMS_FILE)
    metrics_path = run_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return record, tensors["params"], tensors["guide_params"], metrics


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
