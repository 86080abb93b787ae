"""The life of one run folder: checked before any work, locked while written, resumed only
under the same fit, replaced only when asked, and never half-replaced.

:class:`RunFolder` is what every face (the command line, ``api.fit(..., out=...)``, the
comparison, the estimators) asks for a folder to fit into::

    folder = RunFolder(path, overwrite=..., resume=...)
    folder.validate(settings)         # at plan time: writable, no run to refuse, resumable
    with folder.open() as target:     # locked; rank 0 alone writes under torchrun
        ...                           # train (checkpoints go to target.checkpoint) and save
                                      # (into target.path); on success the files move into
                                      # place

A fresh folder is written in place (a killed fit leaves its checkpoint there for
``--resume``). ``overwrite`` of a folder holding an earlier run writes the new one beside it,
in ``.overwrite-<pid>/`` inside the folder, and moves each file into place only when the new
run is whole; the earlier run's other files go then. A failure before that (a full disk, an
interrupt) leaves the earlier run as it was.

``settings.json`` (written when the fit starts) holds what the optimization was asked for;
``--resume`` under other options that change it (learning rate, batch size, ELBO, particles)
is refused unless ``resume_anyway``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from inference import distributed, interrupt
from inference.runs import (
    CHECKPOINT_FILE,
    RUN_FILE,
    SETTINGS_FILE,
    check_svi_checkpoint,
    check_writable,
    earlier_files,
    load_checkpoint,
    locked,
    read_json,
    refuse_earlier,
    remove_earlier,
    removed_on_failure,
    write_json,
)
from zoo.errors import InputError

# the options whose change makes a resumed fit another optimization
OPTIMIZATION_OPTIONS = ("lr", "batch_size", "elbo", "num_particles")
# what must match between the run in a folder and a resumed fit (data keys of the request)
DATA_KEYS = ("name", "test_fraction", "binarize", "standardize", "dequantize", "dtype")


class EvaluationFailed(Exception):
    """The yardstick failed after training; the trained run is saved in ``run_dir``."""

    def __init__(self, run_dir: Path | None, cause: BaseException):
        super().__init__(str(cause))
        self.run_dir, self.cause = run_dir, cause


@dataclass(frozen=True)
class Target:
    """Where one fit writes: ``path`` (the folder, or the staging folder beside the earlier
    run), ``checkpoint`` there, and whether this process writes at all (rank 0)."""

    path: Path
    final: Path
    writes: bool

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE


class RunFolder:
    """One run folder's lock, resume check, overwrite and rank-0 writing (module docstring)."""

    def __init__(self, path: str | Path, *, overwrite: bool = False, resume: bool = False,
                 resume_anyway: bool = False):
        if resume and overwrite:
            raise InputError("--resume continues the run in --out and --overwrite replaces "
                             "it; give one of them")
        self.path = Path(path)
        self.overwrite, self.resume, self.resume_anyway = overwrite, resume, resume_anyway

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def writes(self) -> bool:
        """Whether this process writes the folder (always, except ranks other than 0)."""
        group = distributed.current()
        return group is None or group.is_main

    def validate(self, settings: dict, config_for=None) -> None:
        """Before any data or work: the folder can be written (a missing one is created and
        removed again), holds no run that would be replaced without ``overwrite``, and, on
        ``resume``, holds a readable checkpoint of a fit with these ``settings``
        (``config_for(dim)``: the config asked for now, as a dict, on data of ``dim``)."""
        if self.writes:
            with _left_as_found(self.path):
                check_writable(self.path)
        refuse_earlier(self.path, comparison=False, resume=self.resume,
                       overwrite=self.overwrite)
        if self.resume:
            self._check_resume(settings, config_for)

    @contextlib.contextmanager
    def open(self) -> Iterator[Target]:
        """Lock the folder and yield where to write; on success move the new run into place.
        Other ranks than 0 get a target that writes nothing. An :class:`EvaluationFailed`
        keeps the training written so far (it is moved into place too)."""
        if not self.writes:
            yield Target(self.path, self.path, writes=False)
            return
        with removed_on_failure(self.path), locked(check_writable(self.path)):
            refuse_earlier(self.path, comparison=False, resume=self.resume,
                           overwrite=self.overwrite)  # again, now that it is ours
            earlier = earlier_files(self.path, comparison=False) if self.overwrite else {}
            staging = self._staging() if any(p.is_file() for p in earlier) else self.path
            target = Target(staging, self.path, writes=True)
            try:
                yield target
            except EvaluationFailed:
                self._commit(staging, earlier)
                raise
            except OSError as error:  # name the file where it was to go, not the staging one
                _remove(staging)
                raise _renamed(error, staging, self.path) from None
            except interrupt.Interrupted as stop:  # a signal: the earlier run stays whole
                _remove(staging)
                stop.folder, stop.replacing = self.path, staging != self.path
                stop.resumable = (not stop.replacing
                                  and (self.path / CHECKPOINT_FILE).is_file())
                raise
            except BaseException:
                _remove(staging)
                raise
            self._commit(staging, earlier)

    def _staging(self) -> Path:
        staging = self.path / f".overwrite-{os.getpid()}"
        _remove(staging)
        staging.mkdir()
        return staging

    def _commit(self, staging: Path, earlier: dict) -> None:
        """Move the new files into place (each an atomic rename), then remove what the
        earlier run wrote and the new one did not."""
        if staging != self.path:
            _move_into_place(staging, self.path)
        remove_earlier(earlier)

    def _check_resume(self, settings: dict, config_for) -> None:
        """The checkpoint can be read, and the run in the folder (its settings.json or
        run.json) was fitted with the model, strategy, guide, config, data and seed asked for
        now, and, unless ``resume_anyway``, the same optimization options."""
        if (self.path / CHECKPOINT_FILE).is_file():
            path = self.path / CHECKPOINT_FILE  # truncated, foreign or damaged: now
            state = load_checkpoint(path)
            if "kind" not in state:  # EM's and online EM's (a "kind") are their loops' to check
                check_svi_checkpoint(path, state)
        for name in (SETTINGS_FILE, RUN_FILE):
            if (self.path / name).is_file():
                differences = _differences(read_json(self.path / name, dict), settings,
                                           config_for, optimization=not self.resume_anyway)
                break
        else:
            return
        if differences:
            hint = (" (or give --resume-anyway to continue under the new optimization "
                    "options)" if all(d.split()[0].lstrip("-").replace("-", "_")
                                      in OPTIMIZATION_OPTIONS for d in differences) else "")
            raise InputError(f"--resume: the run in {self.path} was fitted with "
                             f"{'; '.join(differences)}; resume with the same options, or fit "
                             f"into a new --out{hint}")


def _differences(stored: dict, now: dict, config_for, *, optimization: bool) -> list[str]:
    """``"--lr 0.01, not 0.1"`` for each setting of ``stored`` that ``now`` changes."""
    out = [f"--{key} {stored[key]}, not {now[key]}" for key in
           ("model", "inference", "guide", "seed") if key in stored and stored[key] != now[key]]
    config = stored.get("config")
    if (isinstance(config, dict) and isinstance(config.get("dim"), int) and not out
            and config_for is not None):
        wanted = config_for(config["dim"])
        out += [f"{_flag(key)} {_plain(config[key])}, not {_plain(value)}"
                for key, value in wanted.items()
                if key in config and _plain(config[key]) != _plain(value)]
    data = stored.get("data")
    if isinstance(data, dict):
        out += [f"{_flag(key) if key != 'name' else '--data'} {data[key]}, not "
                f"{now['data'][key]}" for key in DATA_KEYS
                if key in data and data[key] != now["data"][key]]
    options = stored.get("options")
    if optimization and isinstance(options, dict):
        out += [f"{_flag(key)} {options.get(key, 'default')}, not "
                f"{now['options'].get(key, 'default')}" for key in OPTIMIZATION_OPTIONS
                if options.get(key) != now["options"].get(key)]
    return out


def write_settings(target: Target, settings: dict, config) -> None:
    """settings.json, when the fit starts: ``settings`` with the fit's whole ``config``."""
    if target.writes:
        write_json(target.path / SETTINGS_FILE,
                   {**settings, "config": dataclasses.asdict(config)})


@contextlib.contextmanager
def staged(folder: Path, earlier: dict) -> Iterator[Path]:
    """A staging folder inside ``folder`` to write a whole set of files into (a comparison:
    its tables, figures and run folders); when the block ends well each is moved into place
    and what the ``earlier`` set wrote and the new one did not is removed; when it fails (a
    full disk, a signal) the staging folder goes and ``folder`` is as it was."""
    staging = folder / f".overwrite-{os.getpid()}"
    _remove(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        _remove(staging)
        raise
    _move_into_place(staging, folder)
    remove_earlier(earlier)


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename each file and folder of ``staging`` into ``folder``: a file atomically over the
    earlier one; an earlier folder of the same name is renamed away first and removed after."""
    for item in sorted(staging.iterdir()):
        target = folder / item.name
        if item.is_dir() and target.is_dir() and not target.is_symlink():
            away = staging / f".replaced-{item.name}"
            os.replace(target, away)
            os.replace(item, target)
            shutil.rmtree(away, ignore_errors=True)
        else:
            os.replace(item, target)
    shutil.rmtree(staging, ignore_errors=True)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plain(value):
    """Lists and tuples alike (JSON stores tuples as lists)."""
    return tuple(_plain(v) for v in value) if isinstance(value, list | tuple) else value


def _remove(path: Path) -> None:
    if path.is_dir() and path.name.startswith(".overwrite-"):
        shutil.rmtree(path, ignore_errors=True)


def _renamed(error: OSError, staging: Path, final: Path) -> OSError:
    """``error`` naming the file in ``final`` where it names one in ``staging``."""
    name = error.filename
    if staging == final or not isinstance(name, str) or not name.startswith(str(staging)):
        return error
    return OSError(error.errno, error.strerror, str(final / Path(name).relative_to(staging)))


@contextlib.contextmanager
def _left_as_found(path: Path) -> Iterator[None]:
    """The folders the block creates for ``path`` are removed again afterwards."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    try:
        yield
    finally:
        for folder in missing:
            with contextlib.suppress(OSError):
                folder.rmdir()
