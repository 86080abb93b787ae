"""What ``lvm-zoo sample RUN_DIR -n 64`` and ``lvm-zoo predict RUN_DIR --data FILE`` do.

Both read the run folder once through :func:`inference.run_loader.load` (validated as data,
weights only; a run of a model from a user's file needs ``model=FILE.py``), make its estimator,
and write one file of their own, atomically, returning its path. Without ``out`` it is a new
file in the current folder (``samples.csv``, ``samples-2.csv``, ...), never one in the run
folder; an existing file is refused unless ``overwrite=True`` (``--overwrite``). Sizes are
checked before anything is drawn (:mod:`zoo.resources`: the draws in memory, the CSV on the
disk), and a CSV is formatted and written in chunks of rows:

- :func:`sample_run`: ``n`` draws from the fitted model, as a CSV table (one row per draw; a
  mixture adds the ``component`` each came from) or, for a run on image data, a PNG grid of
  the draws on the data's pixel range. ``out`` ending in ``.csv`` or ``.png`` chooses; a folder
  (or a path without a suffix) gets ``samples.png`` for image data, else ``samples.csv``.
- :func:`predict_run`: one CSV row per row of ``data`` (a dataset name or a .csv/.npy/.npz
  file, read with the run's preprocessing and without a held-out split, so rows keep the file's
  order; a dataset with an official split gives its train rows, then its test rows), each
  ``split=new``, or with ``data=None`` per row of the run's own data, ``split`` ``train`` or
  ``test`` as the fit split them: ``split``, ``row`` (the position in its split), then the
  mixture's ``component`` and ``p_component_k``, the latent means ``z_j`` (the exact
  posterior mean, or the encoder's), and log p(x) per row (``log_px``, exact, or
  ``log_px_iwae<K>``, the IWAE bound). Standardization, if the run used it, is recomputed from
  the given data (the run keeps no column statistics).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib import pyplot as plt
from torchvision.utils import make_grid

from inference.data import DataRequest, LoadedData, choose_device
from inference.data import load as load_data
from inference.estimators_sklearn.loading import estimator_of
from inference.run_loader import SavedRun
from inference.run_loader import load as load_saved
from inference.runs import atomic_write
from zoo.errors import InputError
from zoo.resources import FLOAT_BYTES, check_disk, check_draws, check_fits

CHUNK_ROWS = 8192  # rows per call of the estimator in predict_run


def _dataset(saved: SavedRun, spec, device: str) -> LoadedData | None:
    """The run's data as it was loaded, or None when it cannot be read here any more."""
    try:
        return load_data(saved.data(device), spec)
    except InputError:
        return None


def _target(out: str | Path | None, default_name: str) -> Path:
    """``out`` (a file, or a folder that gets ``default_name``), or without one a new file
    in the current folder: ``default_name``, else ``samples-2.csv``, ``samples-3.csv``, ..."""
    if out is None:
        return fresh_file(Path(default_name))
    out = Path(out)
    if out.suffix:
        return out
    return out / default_name


def fresh_file(path: Path) -> Path:
    """``path``, or ``stem-2.suffix``, ``stem-3.suffix``, ... : the first that does not exist."""
    candidate, number = path, 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise InputError(f"--out {path} is a folder; give a file name (.csv or .png)")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise InputError(f"--out {path} already exists; choose another --out, or give "
                         "--overwrite to replace it")


def _write_new(path: Path, write, overwrite: bool) -> Path:
    """Write ``path`` atomically; without ``overwrite`` the file is linked into place, so
    one that appeared meanwhile is never replaced."""
    if overwrite:
        atomic_write(path, write)
        return path
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        atomic_write(staging, write)
        try:
            os.link(staging, path)
        except FileExistsError:
            raise InputError(f"--out {path} was created by someone else meanwhile; choose "
                             "another --out, or give --overwrite to replace it") from None
        except OSError:  # a file system without hard links: the check above must do
            os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def _formatted(column: np.ndarray) -> list[str]:
    column = np.asarray(column)
    if np.issubdtype(column.dtype, np.integer) or column.dtype == bool:
        return [str(int(v)) for v in column]
    if np.issubdtype(column.dtype, np.floating):
        return [repr(float(v)) for v in column]
    return [str(v) for v in column]


def _write_csv(path: Path, header: list[str], columns: list[np.ndarray], *,
               overwrite: bool = False) -> Path:
    """A CSV table, one column per array (integers as integers, floats exactly), formatted
    and written :data:`CHUNK_ROWS` rows at a time (the text never all in memory)."""
    rows = len(columns[0]) if columns else 0

    def write(file) -> None:
        file.write((",".join(header) + "\n").encode())
        for start in range(0, rows, CHUNK_ROWS):
            cells = [_formatted(c[start:start + CHUNK_ROWS]) for c in columns]
            file.write("".join(",".join(row) + "\n"
                               for row in zip(*cells, strict=True)).encode())

    return _write_new(path, write, overwrite)


def _write_grid(path: Path, images: np.ndarray, shape: tuple[int, ...],
                value_range: tuple[float, float], *, overwrite: bool = False) -> Path:
    low, high = value_range
    scaled = ((torch.as_tensor(images) - low) / max(high - low, 1e-12)).clamp(0, 1)
    nrow = max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(scaled.reshape(-1, 1, *shape).float(), nrow=nrow, padding=1,
                     pad_value=1.0)[0].numpy()
    zoom = max(1, 256 // max(grid.shape))  # small images (8 x 8 digits) still visible
    grid = np.kron(grid, np.ones((zoom, zoom)))
    buffer = io.BytesIO()
    plt.imsave(buffer, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return _write_new(path, lambda f: f.write(buffer.getvalue()), overwrite)


CSV_CHARACTERS = 24  # a float written exactly (repr) and its comma: at most ~24 characters
GRID_COPIES = 4  # a grid is held as the draws, the scaled images, the grid and its zoom


def sample_run(run_dir: str | Path, n: int, out: str | Path | None = None,
               model: str | None = None, *, seed: int | None = None, device: str = "cpu",
               overwrite: bool = False) -> Path:
    """Write ``n`` draws from the run's fitted model to ``out`` (see the module docstring);
    ``seed`` (default: the run's) seeds the draws. ``out=None`` is a new file in the current
    folder (``samples.csv`` / ``samples.png``, numbered when taken); an existing file is
    replaced only with ``overwrite``. Returns the file written."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"-n {n} must be a positive number of draws")
    choose_device(device)  # the command's own message for --device cuda without CUDA
    saved = load_saved(run_dir, model)
    width = saved.config.dim + 1 + int(getattr(saved.config, "latent_dim", 0) or 0)
    check_draws(n, width)  # before the data are read or anything drawn
    estimator = estimator_of(saved, device=device)
    loaded = _dataset(saved, estimator._spec(), "cpu")
    image = loaded is not None and loaded.dataset.is_image
    path = _target(out, "samples.png" if image else "samples.csv")
    suffix = path.suffix.lower()
    if suffix == ".png":
        if not image:
            why = ("its data cannot be read here" if loaded is None
                   else f"its data ({loaded.dataset.name}) are not images")
            raise InputError(f"--out {path}: a PNG grid needs a run on image data, and {why}; "
                             "write a .csv instead")
        check_fits(f"a PNG grid of -n {n:,} images", GRID_COPIES * n * saved.config.dim
                   * FLOAT_BYTES, "draw fewer, or write a .csv")
    elif suffix != ".csv":
        raise InputError(f"--out {path}: write a .csv table or a .png grid (image data)")
    else:
        check_disk(f"--out {path} ({n:,} rows of {width} columns)",
                   n * width * CSV_CHARACTERS, path.parent, "draw fewer, or write elsewhere")
    _refuse_existing(path, overwrite)
    if seed is not None:
        estimator.set_params(random_state=seed)
    drawn = estimator.sample(n)
    x, labels = drawn if isinstance(drawn, tuple) else (drawn, None)
    if suffix == ".png":
        train = loaded.train
        return _write_grid(path, x, loaded.dataset.obs_shape,
                           (float(train.min()), float(train.max())), overwrite=overwrite)
    names = (list(loaded.dataset.feature_names) if loaded is not None
             and loaded.dataset.feature_names and len(loaded.dataset.feature_names) == x.shape[1]
             else [f"x{j + 1}" for j in range(x.shape[1])])
    columns = [x[:, j] for j in range(x.shape[1])]
    if labels is not None:
        names.append("component")
        columns.append(labels)
    return _write_csv(path, names, columns, overwrite=overwrite)


def predict_run(run_dir: str | Path, data: str | DataRequest | None,
                out: str | Path | None = None, model: str | None = None, *,
                device: str = "cpu", overwrite: bool = False) -> Path:
    """Write the run's predictions for every row of ``data`` to the CSV ``out`` (see the
    module docstring): rows of ``data`` are ``split=new``; ``data=None`` is the run's own
    data, its own split (``train`` / ``test`` rows). ``out=None`` is a new file in the current
    folder (``predictions.csv``, numbered when taken); an existing file is replaced only with
    ``overwrite``. Returns the file written."""
    choose_device(device)  # the command's own message for --device cuda without CUDA
    saved = load_saved(run_dir, model)
    estimator = estimator_of(saved, device=device)
    stored = saved.data(device)
    if data is None:
        request = stored
    elif isinstance(data, DataRequest):
        request = data
    else:
        request = dataclasses.replace(stored, name=str(data), test_fraction=0.0)
    path = _target(out, "predictions.csv")
    if path.suffix.lower() != ".csv":
        raise InputError(f"--out {path}: predictions are written as a .csv table")
    _refuse_existing(path, overwrite)
    loaded = load_data(request, estimator._spec())
    if loaded.dataset.dim != estimator.n_features_in_:
        raise InputError(f"--data {loaded.dataset.name} has {loaded.dataset.dim} columns but the "
                         f"run was fitted on {estimator.n_features_in_}; give data of that "
                         "dimension")
    if data is None:  # the run's own rows, as the fit split them
        parts = [("train", loaded.train, 0), ("test", loaded.test, 0)]
    else:  # rows the fit never saw as such: new, numbered in the file's order
        parts = [("new", loaded.train, 0), ("new", loaded.test, int(loaded.train.shape[0]))]
    tables = [_predictions(estimator, split, rows, first) for split, rows, first in parts
              if rows.shape[0]]
    header = tables[0][0]
    columns = [np.concatenate([t[1][i] for t in tables]) for i in range(len(header))]
    return _write_csv(path, ["split", "row", *header[2:]], columns, overwrite=overwrite)


def _predictions(estimator, split: str, rows: torch.Tensor, first: int = 0):
    """(header, columns) of one split's rows (numbered from ``first``), in chunks of
    :data:`CHUNK_ROWS`."""
    spec = estimator._spec()
    exact = spec.log_marginal is not None
    samples = getattr(estimator, "iwae_samples", None)
    density = "log_px" if exact else f"log_px_iwae{samples}"
    chunks: list[dict[str, np.ndarray]] = []
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        x = rows[start:start + CHUNK_ROWS].detach().cpu().double().numpy()
        chunk: dict[str, np.ndarray] = {}
        if hasattr(estimator, "predict_proba"):
            probabilities = estimator.predict_proba(x)
            chunk["component"] = probabilities.argmax(1)
            for k in range(probabilities.shape[1]):
                chunk[f"p_component_{k}"] = probabilities[:, k]
        if hasattr(estimator, "transform"):
            try:
                latent = estimator.transform(x)
            except ValueError:  # a guide without an encoder: no latent means for new rows
                latent = None
            if latent is not None:
                for j in range(latent.shape[1]):
                    chunk[f"z_{j + 1}"] = latent[:, j]
        try:
            chunk[density] = estimator.score_samples(x)
        except ValueError:
            chunk[density] = np.full(x.shape[0], np.nan)
        chunks.append(chunk)
    names = list(chunks[0])
    columns = [np.full(rows.shape[0], split), np.arange(first, first + rows.shape[0])]
    columns += [np.concatenate([c[name] for c in chunks]) for name in names]
    return ["split", "row", *names], columns
