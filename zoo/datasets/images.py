"""Image datasets read from a data root: MNIST and Fashion-MNIST (IDX files, the official
60000/10000 split, optionally fetched by torchvision) and Frey Face (a MAT file).

Pixels are scaled to [0, 1] and each image is flattened row-major; ``obs_shape`` folds it back.
"""

from __future__ import annotations

import gzip
import math
import pathlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from zoo.datasets.base import DATA_ROOT_ENV, _Loaded, _Request, default_data_root
from zoo.errors import InputError

# --- MNIST and Fashion-MNIST -----------------------------------------------------------------

# The four IDX files of both datasets; the official split is train (60000) / t10k (10000).
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class _IdxDataset(NamedTuple):
    folder: str  # our layout: <root>/<folder>/
    torchvision_name: str  # torchvision's layout: <root>/<torchvision_name>/raw/


def _read_idx(path: pathlib.Path, *, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or not) into a uint8 array, vectorized.

    Format: 2 zero bytes, type code 0x08 (uint8), the number of dimensions, then one big-endian
    uint32 per dimension, then the values in row-major order.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise InputError(
            f"data file '{path}' cannot be read ({error}); download it again"
        ) from None
    header_size = 4 + 4 * ndim
    if len(raw) < header_size or raw[:4] != bytes((0, 0, 0x08, ndim)):
        raise InputError(
            f"data file '{path}' is not an IDX file of {ndim}-D unsigned bytes (its header is "
            f"{raw[:4].hex()}, expected 000008{ndim:02x}); download it again"
        )
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    values = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
    if values.size != math.prod(shape):
        raise InputError(
            f"data file '{path}' holds {values.size} values but its header promises shape {shape} "
            f"({math.prod(shape)} values); the file is truncated, download it again"
        )
    return values.reshape(shape)


def _find_idx_folder(spec: _IdxDataset, root: pathlib.Path) -> dict[str, pathlib.Path] | None:
    """The four files in the first complete layout under ``root``, or None if there is none."""
    for folder in (root / spec.folder, root / spec.torchvision_name / "raw"):
        found = {}
        for key, stem in _IDX_FILES.items():
            candidates = [folder / f"{stem}.gz", folder / stem]
            existing = [path for path in candidates if path.is_file()]
            if existing:
                found[key] = existing[0]
        if len(found) == len(_IDX_FILES):
            return found
    return None


def _download_idx(name: str, spec: _IdxDataset, root: pathlib.Path) -> None:
    """Let torchvision fetch the four files into ``<root>/<torchvision_name>/raw/``."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, spec.torchvision_name)
    try:
        for train in (True, False):
            dataset_class(str(root), train=train, download=True)
    except Exception as error:  # network errors come in many types; all end the same way here
        raise InputError(
            f"--download of {name} into '{root}' failed ({error}); check the network, or put the "
            f"files in '{root / spec.folder}' and leave --download out"
        ) from None


def _idx_loader(name: str, spec: _IdxDataset) -> Callable[[_Request], _Loaded]:
    def load(request: _Request) -> _Loaded:
        root = request.root if request.root is not None else default_data_root()
        files = _find_idx_folder(spec, root)
        if files is None and request.download:
            _download_idx(name, spec, root)
            files = _find_idx_folder(spec, root)
        if files is None:
            torchvision_folder = root / spec.torchvision_name / "raw"
            raise InputError(
                f"dataset {name} was not found: looked for {', '.join(_IDX_FILES.values())} "
                f"(.gz or not) in '{root / spec.folder}' and '{torchvision_folder}'"
                f"; pass --data-root DIR (root=...) or set {DATA_ROOT_ENV} to the folder that "
                f"holds '{spec.folder}/', or add --download"
            )
        parts = {}
        for part in ("train", "test"):
            images = _read_idx(files[f"{part}_images"], ndim=3)
            labels = _read_idx(files[f"{part}_labels"], ndim=1)
            if images.shape[0] != labels.shape[0]:
                raise InputError(
                    f"{name} {part} files disagree: {images.shape[0]} images in "
                    f"'{files[f'{part}_images']}' but {labels.shape[0]} labels in "
                    f"'{files[f'{part}_labels']}'; download them again"
                )
            numpy_dtype = np.float64 if request.dtype == torch.float64 else np.float32
            pixels = images.reshape(images.shape[0], -1).astype(numpy_dtype)
            pixels /= 255.0  # in place: one copy of 60000 x 784 values, not two
            parts[part] = (torch.from_numpy(pixels), torch.from_numpy(labels.astype(np.int64)))
        return _Loaded(
            x=parts["train"][0],
            labels=parts["train"][1],
            test_x=parts["test"][0],
            test_labels=parts["test"][1],
            obs_shape=(28, 28),
            is_image=True,
            source=str(files["train_images"].parent),
        )

    return load


# --- Frey face -------------------------------------------------------------------------------


def _load_frey_face(request: _Request) -> _Loaded:
    """1965 video frames of Brendan Frey's face, 28 x 20 grayscale pixels scaled to [0, 1]."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    root = request.root if request.root is not None else default_data_root()
    candidates = [root / "frey-face" / "frey_rawface.mat", root / "frey_rawface.mat"]
    existing = [path for path in candidates if path.is_file()]
    if not existing:
        raise InputError(
            f"dataset frey-face was not found: looked for '{candidates[0]}' and '{candidates[1]}'"
            f"; pass --data-root DIR (root=...) or set {DATA_ROOT_ENV} to the folder that holds "
            "'frey-face/frey_rawface.mat' (there is no --download for it: get frey_rawface.mat "
            "from Sam Roweis's data page, cs.nyu.edu/~roweis/data.html)"
        )
    path = existing[0]
    try:
        faces = loadmat(path)["ff"]  # (560, 1965) uint8: one image per column
    except (OSError, ValueError, KeyError, MatReadError) as error:
        raise InputError(
            f"data file '{path}' is not the Frey face MAT file with variable 'ff' ({error}); "
            "download it again"
        ) from None
    numpy_dtype = np.float64 if request.dtype == torch.float64 else np.float32
    # Row-major reshape of each column gives the upright 28 x 20 face.
    pixels = np.ascontiguousarray(faces.T).astype(numpy_dtype)
    pixels /= 255.0
    return _Loaded(
        x=torch.from_numpy(pixels),
        labels=None,
        obs_shape=(28, 20),
        is_image=True,
        source=str(path),
    )
