"""Run directories and checkpoints: written atomically, read back without executing code.

A run directory holds::

    run.json        what was fitted: model, config, data, inference, guide, seed, options
    metrics.json    the yardstick: log-likelihoods, ELBO, seconds, steps, ...
    params.pt       model and guide parameters (tensors only; torch.load(weights_only=True))
    history.json    per step / iteration curves
    *.png           figures

Every file is written to a temporary name in the same folder and renamed into place, so a
crash leaves either the old file or the new one, never half of one. One process at a time
writes into a folder (:func:`locked`); a folder holding a finished run or a comparison is
replaced only when asked (:func:`refuse_earlier`, :func:`earlier_files`,
:func:`remove_earlier`).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from inference.results import FitResult
from zoo.errors import InputError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process's umask, for files made by atomic_write
RUN_FILE, METRICS_FILE, PARAMS_FILE, HISTORY_FILE = (
    "run.json", "metrics.json", "params.pt", "history.json")
CHECKPOINT_FILE, COMPARISON_FILE, LOCK_FILE = "checkpoint.pt", "comparison.json", ".lock"
SETTINGS_FILE = "settings.json"  # what a fit was asked for, written when it starts (resume)
# what a run folder and a comparison folder hold besides their figures (*.png)
RUN_FILES = (RUN_FILE, METRICS_FILE, PARAMS_FILE, HISTORY_FILE, CHECKPOINT_FILE,
             SETTINGS_FILE, "posterior.nc", "nuts.nc", "posterior-nuts.nc")
COMPARISON_FILES = (COMPARISON_FILE, "comparison.csv", "summary.json", "summary.csv",
                    "report.html")


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
    except OSError as error:  # a full disk, a folder made read-only: name the file
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Save a dict of tensors, numbers and nested dicts atomically. The bytes are made in
    memory first: torch's zip writer reports a failed write (a full disk) as whatever
    RuntimeError its C++ side meets, a plain file write as the OSError it is."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load what :func:`save_checkpoint` wrote; never unpickles arbitrary objects. A file that
    is truncated, unreadable or not a tensor file is an :class:`InputError`."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, Exception) as error:
        detail = str(error).splitlines()[0] if str(error) else ""
        if "weights_only" in detail:  # torch's advice to unpickle it anyway is not ours
            detail = "it holds Python objects, not only tensors, and is not unpickled"
        raise InputError(f"'{path}' cannot be read as a tensor file ({type(error).__name__}: "
                         f"{detail}); it is truncated, unreadable or not written by lvm-zoo: "
                         "fit again into a new --out folder") from None
    if not isinstance(state, dict):
        raise InputError(f"'{path}' holds a {type(state).__name__}, not lvm-zoo's dict of "
                         "tensors; fit again into a new --out folder")
    return state


def check_svi_checkpoint(path: str | Path, state: dict) -> dict:
    """An SVI checkpoint's state checked as data (returned as is): ``step`` an integer of at
    least 0, ``history`` a float tensor of exactly ``step`` finite values (one per step),
    ``seconds`` finite and not negative, and the parameters (``params``, ``best_params``)
    dicts of finite floating-point tensors. A fault is an InputError naming the file, the
    key and what was expected."""
    def fault(key: str, found, expected: str) -> InputError:
        return InputError(f"checkpoint {path}: {key} is {found}, expected {expected}; it is "
                          "damaged or not written by lvm-zoo: fit again into a new --out "
                          "folder (or without --resume)")

    missing = [k for k in ("step", "history", "params") if k not in state]
    if missing:
        raise InputError(f"checkpoint {path} lacks {', '.join(missing)}; it is not an SVI "
                         "checkpoint of lvm-zoo: fit again into a new --out folder")
    step = state["step"]
    if isinstance(step, torch.Tensor) and step.numel() == 1 and not step.is_floating_point():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise fault("step", repr(step)[:40], "an integer of at least 0")
    history = state.get("history")
    if not isinstance(history, torch.Tensor) or history.dim() != 1:
        raise fault("history", type(history).__name__ if not isinstance(history, torch.Tensor)
                    else f"a tensor of shape {tuple(history.shape)}", "a 1-D tensor")
    if history.numel() != step:
        raise fault("history", f"{history.numel()} values long", f"{step} (one per step)")
    if not history.is_floating_point() or not bool(torch.isfinite(history).all()):
        raise fault("history", "not finite floats", "the finite ELBO of each step")
    seconds = state.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
            math.isfinite(seconds) and seconds >= 0):
        raise fault("seconds", repr(seconds)[:40], "a finite number of at least 0")
    for key in ("params", "best_params"):
        values = state.get(key)
        if values is None and key == "best_params":
            continue
        if not isinstance(values, dict) or not all(isinstance(v, torch.Tensor)
                                                   for v in values.values()):
            raise fault(key, type(values).__name__, "a dict of tensors")
        for name, value in values.items():
            if not value.is_floating_point():
                raise fault(f"{key} '{name}'", f"of dtype {value.dtype}",
                            "a floating-point tensor")
            if not bool(torch.isfinite(value).all()):
                raise fault(f"{key} '{name}'", "NaN or infinite", "finite values")
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


@contextlib.contextmanager
def removed_on_failure(run_dir: str | Path) -> Iterator[Path]:
    """The folders this block creates for ``run_dir`` are removed again if the block fails
    before anything was written into them: a typo in the data name must not leave an empty run
    folder behind. A folder holding anything (a checkpoint of a killed fit) is kept."""
    run_dir = Path(run_dir)
    missing = []
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            break
        missing.append(folder)
    try:
        yield run_dir
    except BaseException:
        for folder in missing:  # deepest first; rmdir refuses a folder that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise


_HELD: dict[Path, int] = {}  # folders this process holds the lock of -> depth


@contextlib.contextmanager
def locked(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir``'s lock while writing into it: a second lvm-zoo process that asks for
    the same folder meanwhile gets an :class:`InputError` naming the holder's pid.

    The lock is ``fcntl.flock`` on ``run_dir/.lock``; the kernel releases it when the holder
    ends, however it ends, so a lock file left by a killed process never blocks. The file is
    removed on release. Re-entrant within one process."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield run_dir
        finally:
            _HELD[key] -= 1
        return
    path = run_dir / LOCK_FILE
    while True:
        try:
            handle = open(path, "a+", encoding="utf-8")  # held across the yield
        except OSError as error:
            raise InputError(f"--out {run_dir} cannot be written ({error.strerror or error}); "
                             "choose a folder you can write to") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise InputError(f"--out {run_dir} is being written by another lvm-zoo process "
                             f"(pid {holder}); choose another --out, or wait for it to end"
                             ) from None
        try:  # the file may have been removed by the last holder between open and flock
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")  # for the message above; the lock is the flock
        handle.flush()
        _HELD[key] = 1
        yield run_dir
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            path.unlink()  # still under the lock: a waiting opener sees another inode
        handle.close()


def refuse_earlier(run_dir: str | Path, *, comparison: bool, resume: bool = False,
                   overwrite: bool = False) -> None:
    """An :class:`InputError` when ``run_dir`` already holds what would be replaced: a
    comparison (``comparison=True``, unless ``overwrite``) or a finished run (``fit``, unless
    ``resume`` or ``overwrite``). A ``fit`` never writes into a comparison's folder."""
    run_dir = Path(run_dir)
    has_comparison = (run_dir / COMPARISON_FILE).is_file()
    if comparison:
        if has_comparison and not overwrite:
            raise InputError(f"--out {run_dir} already holds a comparison ({COMPARISON_FILE});"
                             " choose another --out, or give --overwrite to replace it")
        if not has_comparison and (run_dir / METRICS_FILE).is_file():
            raise InputError(f"--out {run_dir} holds a fitted run ({METRICS_FILE}), not a "
                             "comparison; choose another --out for the comparison")
        return
    if has_comparison:
        raise InputError(f"--out {run_dir} holds a comparison ({COMPARISON_FILE}), not a run; "
                         "choose another --out for the fit")
    if (run_dir / METRICS_FILE).is_file() and not (resume or overwrite):
        raise InputError(f"--out {run_dir} already holds a finished run ({METRICS_FILE}); "
                         "choose another --out, continue it with --resume, or replace it "
                         "with --overwrite")


def earlier_files(run_dir: str | Path, *, comparison: bool) -> dict[Path, int]:
    """What an earlier run (or comparison) in ``run_dir`` wrote, path -> inode: its files,
    its figures and, for a comparison, the run subfolders its ``comparison.json`` lists (only
    children of ``run_dir``) with everything in them. Read before any work; removed by
    :func:`remove_earlier` once the new files are written."""
    run_dir = Path(run_dir)
    names = COMPARISON_FILES if comparison else RUN_FILES
    paths = [run_dir / n for n in names] + sorted(run_dir.glob("*.png"))
    if not comparison:  # the other restarts' checkpoints (inference/strategies/svi.py)
        paths += sorted(run_dir.glob("checkpoint-restart*.pt"))
    if comparison and (run_dir / COMPARISON_FILE).is_file():
        for record in read_json(run_dir / COMPARISON_FILE, list):
            folder = record.get("run_dir") if isinstance(record, dict) else None
            name = Path(folder).name if isinstance(folder, str) else ""
            child = run_dir / name
            if name in ("", ".", "..") or not child.is_dir():
                continue
            paths.append(child)
            if not child.is_symlink():
                paths += sorted(child.rglob("*"))
    return {path: path.lstat().st_ino for path in paths if path.is_symlink() or path.exists()}


def remove_earlier(files: dict[Path, int]) -> None:
    """Remove what :func:`earlier_files` found, except what has been written anew since (an
    atomic write renames a new file into place: another inode); a folder goes when nothing
    new is left in it. Called after the new files are written, so a failure before leaves
    the earlier run whole."""
    folders = []
    for path, inode in files.items():
        try:
            status = path.lstat()
        except FileNotFoundError:
            continue
        if status.st_ino != inode:
            continue
        if stat.S_ISDIR(status.st_mode):
            folders.append(path)
        else:
            path.unlink()
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: the new run wrote into it
            folder.rmdir()


def fresh_folder(path: str | Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... when it already holds something: a default
    folder (named by the time to the second) never lands on an earlier one."""
    path = Path(path)
    candidate, number = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def save_run(run_dir: str | Path, record: dict, result: FitResult,
             metrics: dict | None) -> Path:
    """Write a run directory for ``result`` (``metrics=None``: the training alone, before
    the yardstick runs); returns its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir / PARAMS_FILE, {
        "params": {k: v.detach().cpu() for k, v in result.params.items()},
        "guide_params": {k: v.detach().cpu() for k, v in result.guide_params.items()},
    })
    write_json(run_dir / HISTORY_FILE, result.history)
    write_json(run_dir / RUN_FILE, record)
    if metrics is not None:
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
    wrong = _wrong_types(record)
    if wrong:
        raise InputError(f"{run_dir / RUN_FILE} holds {', '.join(wrong)}; it is damaged or not "
                         "written by lvm-zoo: fit again")
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


_RECORD_KINDS = {"model": (str,), "inference": (str,), "guide": (str, type(None)),
                 "seed": (int,), "config": (dict,), "data": (dict,), "model_ref": (str,),
                 "iwae_samples": (int,), "options": (dict,)}
_DATA_KINDS = {"name": (str, type(None)), "root": (str, type(None))}


def _wrong_types(record: dict) -> list[str]:
    """``"seed 'x' (not int)"`` for each field of a run record of the wrong JSON type."""
    wrong = []
    for fields, values in ((_RECORD_KINDS, record), (_DATA_KINDS, record.get("data"))):
        if not isinstance(values, dict):
            continue
        for key, kinds in fields.items():
            value = values.get(key)
            if key in values and (isinstance(value, bool) or not isinstance(value, kinds)):
                names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                wrong.append(f"{'data.' if fields is _DATA_KINDS else ''}{key} {value!r:.40} "
                             f"(not {names})")
    if isinstance(record.get("iwae_samples"), int) and record["iwae_samples"] < 1:
        wrong.append(f"iwae_samples {record['iwae_samples']} (not at least 1)")
    return wrong


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
