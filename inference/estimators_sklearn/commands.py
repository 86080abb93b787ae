"""What ``lvm-zoo sample RUN_DIR -n 64`` and ``lvm-zoo predict RUN_DIR --data FILE`` do.

Both load the run as an estimator (:func:`~inference.estimators_sklearn.loading.load`, weights
only; a run of a model from a user's file needs ``model=FILE.py``) and write one file
atomically, returning its path:

- :func:`sample_run`: ``n`` draws from the fitted model, as a CSV table (one row per draw; a
  mixture adds the ``component`` each came from) or, for a run on image data, a PNG grid of
  the draws on the data's pixel range. ``out`` ending in ``.csv`` or ``.png`` chooses; a folder
  (or a path without a suffix) gets ``samples.png`` for image data, else ``samples.csv``.
- :func:`predict_run`: one CSV row per row of ``data`` (a dataset name or a .csv/.npy/.npz
  file, read with the run's preprocessing and without a held-out split, so rows keep the file's
  order; a dataset with an official split gives its train rows, then its test rows): ``split``,
  ``row``, then the mixture's ``component`` and ``p_component_k``, the latent means ``z_j``
  (the exact posterior mean, or the encoder's), and log p(x) per row (``log_px``, exact, or
  ``log_px_iwae<K>``, the IWAE bound). Standardization, if the run used it, is recomputed from
  the given data (the run keeps no column statistics).
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib import pyplot as plt
from torchvision.utils import make_grid

from inference.data import DataRequest, LoadedData
from inference.data import load as load_data
from inference.estimators_sklearn.loading import load
from inference.runs import atomic_write, load_run
from zoo.errors import InputError

CHUNK_ROWS = 8192  # rows per call of the estimator in predict_run


def _request(run: dict, device: str) -> DataRequest:
    """The run's data request (its preprocessing) on ``device``."""
    source = run["data"]
    return DataRequest(**{k: source.get(k, f.default)
                          for k, f in DataRequest.__dataclass_fields__.items()
                          if k != "device"}, device=device)


def _dataset(run: dict, spec, device: str) -> LoadedData | None:
    """The run's data as it was loaded, or None when it cannot be read here any more."""
    try:
        return load_data(_request(run, device), spec)
    except InputError:
        return None


def _target(out: str | Path, default_name: str) -> Path:
    out = Path(out)
    if out.suffix:
        return out
    return out / default_name


def _formatted(column: np.ndarray) -> list[str]:
    column = np.asarray(column)
    if np.issubdtype(column.dtype, np.integer) or column.dtype == bool:
        return [str(int(v)) for v in column]
    if np.issubdtype(column.dtype, np.floating):
        return [repr(float(v)) for v in column]
    return [str(v) for v in column]


def _write_csv(path: Path, header: list[str], columns: list[np.ndarray]) -> Path:
    """A CSV table, one column per array (integers as integers, floats exactly)."""
    cells = [_formatted(c) for c in columns]
    lines = [",".join(header)] + [",".join(row) for row in zip(*cells, strict=True)]
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def _write_grid(path: Path, images: np.ndarray, shape: tuple[int, ...],
                value_range: tuple[float, float]) -> Path:
    low, high = value_range
    scaled = ((torch.as_tensor(images) - low) / max(high - low, 1e-12)).clamp(0, 1)
    nrow = max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(scaled.reshape(-1, 1, *shape).float(), nrow=nrow, padding=1,
                     pad_value=1.0)[0].numpy()
    zoom = max(1, 256 // max(grid.shape))  # small images (8 x 8 digits) still visible
    grid = np.kron(grid, np.ones((zoom, zoom)))
    buffer = io.BytesIO()
    plt.imsave(buffer, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


def sample_run(run_dir: str | Path, n: int, out: str | Path, model: str | None = None, *,
               seed: int | None = None, device: str = "cpu") -> Path:
    """Write ``n`` draws from the run's fitted model to ``out`` (see the module docstring);
    ``seed`` (default: the run's) seeds the draws. Returns the file written."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"-n {n} must be a positive number of draws")
    estimator = load(run_dir, model, device=device)
    if seed is not None:
        estimator.set_params(random_state=seed)
    drawn = estimator.sample(n)
    x, labels = drawn if isinstance(drawn, tuple) else (drawn, None)
    run = load_run(run_dir)[0]
    loaded = _dataset(run, estimator._spec(), "cpu")
    image = loaded is not None and loaded.dataset.is_image
    path = _target(out, "samples.png" if image else "samples.csv")
    suffix = path.suffix.lower()
    if suffix == ".png":
        if not image:
            why = ("its data cannot be read here" if loaded is None
                   else f"its data ({loaded.dataset.name}) are not images")
            raise InputError(f"--out {path}: a PNG grid needs a run on image data, and {why}; "
                             "write a .csv instead")
        train = loaded.train
        return _write_grid(path, x, loaded.dataset.obs_shape,
                           (float(train.min()), float(train.max())))
    if suffix != ".csv":
        raise InputError(f"--out {path}: write a .csv table or a .png grid (image data)")
    names = (list(loaded.dataset.feature_names) if loaded is not None
             and loaded.dataset.feature_names and len(loaded.dataset.feature_names) == x.shape[1]
             else [f"x{j + 1}" for j in range(x.shape[1])])
    columns = [x[:, j] for j in range(x.shape[1])]
    if labels is not None:
        names.append("component")
        columns.append(labels)
    return _write_csv(path, names, columns)


def predict_run(run_dir: str | Path, data: str | DataRequest | None, out: str | Path,
                model: str | None = None, *, device: str = "cpu") -> Path:
    """Write the run's predictions for every row of ``data`` (default: the run's own data) to
    the CSV ``out`` (see the module docstring). Returns the file written."""
    estimator = load(run_dir, model, device=device)
    run = load_run(run_dir)[0]
    stored = _request(run, device)
    if isinstance(data, DataRequest):
        request = data
    else:
        request = dataclasses.replace(stored, name=stored.name if data is None else str(data),
                                      test_fraction=0.0)
    loaded = load_data(request, estimator._spec())
    if loaded.dataset.dim != estimator.n_features_in_:
        raise InputError(f"--data {loaded.dataset.name} has {loaded.dataset.dim} columns but the "
                         f"run was fitted on {estimator.n_features_in_}; give data of that "
                         "dimension")
    path = _target(out, "predictions.csv")
    if path.suffix.lower() != ".csv":
        raise InputError(f"--out {path}: predictions are written as a .csv table")
    parts = [("train", loaded.train), ("test", loaded.test)]
    tables = [_predictions(estimator, split, rows) for split, rows in parts if rows.shape[0]]
    header = tables[0][0]
    columns = [np.concatenate([t[1][i] for t in tables]) for i in range(len(header))]
    return _write_csv(path, ["split", "row", *header[2:]], columns)


def _predictions(estimator, split: str, rows: torch.Tensor):
    """(header, columns) of one split's rows, in chunks of :data:`CHUNK_ROWS`."""
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
    columns = [np.full(rows.shape[0], split), np.arange(rows.shape[0])]
    columns += [np.concatenate([c[name] for c in chunks]) for name in names]
    return ["split", "row", *names], columns
