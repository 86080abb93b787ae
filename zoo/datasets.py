"""Named datasets and user files, turned into train/test tensors plus metadata.

Every source ends as one :class:`Dataset`: ``train`` of shape ``(N_train, D)`` and ``test`` of
shape ``(N_test, D)``, rows are observations, images flattened row-major (``obs_shape`` says how
to fold them back), floating point, on the CPU (the trainer moves them once).

Sources (``load_dataset(name)``):

* bundled, never touching the network: ``old-faithful`` (R's ``datasets::faithful``, shipped in
  ``zoo/data/faithful.csv``), ``iris`` and ``digits`` (scikit-learn's bundled copies; digits keep
  their raw pixel counts 0..16, they are *not* scaled to [0, 1]);
* read from a data root: ``mnist`` and ``fashion-mnist`` (grayscale in [0, 1], the official
  60000/10000 split) and ``frey-face`` (1965 images of 28 x 20 in [0, 1]);
* ``synthetic-<model>``: draws from a registered model's prior, with the true parameters;
* a user's ``.csv``, ``.npy`` or ``.npz`` file.

Sources without an official split are split by a seeded random permutation, so the same seed
gives the same split. Images in [0, 1] can be binarized once (``binarize="static"``) or left
grayscale for the trainer to resample per minibatch (``binarize="dynamic"``, see
:func:`dynamic_binarize`).

Every bad input raises :class:`zoo.errors.InputError` with a message that names the input, the
bound it broke and the fix.
"""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import io
import math
import os
import pathlib
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from zoo.errors import InputError

__all__ = [
    "DATASETS",
    "Dataset",
    "default_data_root",
    "dynamic_binarize",
    "load_dataset",
]

SYNTHETIC_PREFIX = "synthetic-"
SYNTHETIC_NUM_DATA = 1000  # datapoints drawn for ``synthetic-<model>``
USER_FILE_SUFFIXES = (".csv", ".npy", ".npz")
BINARIZE_CHOICES = ("static", "dynamic")
DATA_ROOT_ENV = "LVM_ZOO_DATA"

# Keys an .npz file may use for its data array and (optionally) its labels, in order of preference.
_NPZ_DATA_KEYS = ("x", "data", "X")
_NPZ_LABEL_KEYS = ("y", "labels")


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == has no single truth value
class Dataset:
    """A train/test split of one data source, ready for any model in the zoo.

    Attributes:
        name: the name it was loaded by, e.g. ``"old-faithful"``, ``"mnist"``, ``"my.csv"``.
        train: ``(N_train, D)`` floating tensor; rows are observations, images flattened.
        test: ``(N_test, D)`` floating tensor; may have 0 rows.
        train_labels: ``(N_train,)`` int64 class labels, or None.
        test_labels: ``(N_test,)`` int64 class labels, or None.
        obs_shape: shape of one observation, e.g. ``(2,)`` or ``(28, 28)``; its product is D.
        is_image: whether an observation is an image of shape ``obs_shape``.
        source: where the data came from, for people: a path, "scikit-learn bundled copy", ...
        feature_names: one name per column, when the source has them.
        true_params: the parameters that generated synthetic data; None for real data.
        binarize: None, ``"static"`` (already sampled to {0, 1} once) or ``"dynamic"`` (grayscale
            here; the trainer calls :func:`dynamic_binarize` on every minibatch).
    """

    name: str
    train: torch.Tensor = field(repr=False)
    test: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor | None = field(repr=False)
    test_labels: torch.Tensor | None = field(repr=False)
    obs_shape: tuple[int, ...]
    is_image: bool
    source: str
    feature_names: tuple[str, ...] | None = None
    true_params: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    binarize: str | None = None

    @property
    def dim(self) -> int:
        """D, the number of values in one (flattened) observation."""
        return self.train.shape[1]

    def describe(self) -> str:
        """One line for people, e.g. ``mnist: 60000 train + 10000 test x 784 (28x28 images)...``."""
        shape = "x".join(str(size) for size in self.obs_shape)
        kind = f"{shape} images" if self.is_image else f"{self.dim} features"
        details = [kind]
        if self.train_labels is not None:
            details.append(f"{int(self.train_labels.max()) + 1} classes")
        if self.binarize is not None:
            details.append(f"{self.binarize} binarization")
        if self.true_params is not None:
            details.append("true parameters known")
        return (
            f"{self.name}: {self.train.shape[0]} train + {self.test.shape[0]} test x {self.dim} "
            f"({', '.join(details)}), {str(self.train.dtype).removeprefix('torch.')}, "
            f"from {self.source}"
        )


class _Request(NamedTuple):
    """What every loader may need to know about the call."""

    root: pathlib.Path | None  # the --data-root the user gave, else None
    download: bool
    seed: int
    dtype: torch.dtype


class _Loaded(NamedTuple):
    """A loader's result: tensors in the requested dtype, before split/binarize/standardize."""

    x: torch.Tensor  # (N, D); the train part when ``test_x`` is given
    labels: torch.Tensor | None  # (N,) int64
    obs_shape: tuple[int, ...]
    is_image: bool
    source: str
    test_x: torch.Tensor | None = None  # (N_test, D) when the source has an official split
    test_labels: torch.Tensor | None = None
    feature_names: tuple[str, ...] | None = None
    true_params: dict[str, torch.Tensor] | None = None


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def default_data_root() -> pathlib.Path:
    """Where downloadable datasets live: ``$LVM_ZOO_DATA`` if set, else ``~/.cache/lvm-zoo``.

    Nothing is created here; the folder may not exist.
    """
    from_env = os.environ.get(DATA_ROOT_ENV, "")
    if from_env:
        return pathlib.Path(from_env).expanduser()
    return pathlib.Path.home() / ".cache" / "lvm-zoo"


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli sample with success probabilities ``x`` (values in [0, 1]).

    Called by the trainer on every minibatch of a ``binarize="dynamic"`` dataset, so the model
    sees a new binary image each time it meets the same grayscale one; this regularizes better
    than one fixed binarization.

    Args:
        x: ``(..., D)`` probabilities in [0, 1], any floating dtype, any device.
        generator: optional generator on ``x``'s device, for reproducible draws.

    Returns:
        a tensor of 0s and 1s with the shape, dtype and device of ``x``.
    """
    return torch.bernoulli(x, generator=generator)


def load_dataset(
    name: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    binarize: str | None = None,
    download: bool = False,
    standardize: bool = False,
) -> Dataset:
    """Load a named dataset or a user's file as a :class:`Dataset`.

    Args:
        name: one of :data:`DATASETS`, ``synthetic-<model>`` (e.g. ``synthetic-gmm``), or a path
            (str or path-like) to a ``.csv``/``.npy``/``.npz`` file whose rows are observations.
        root: folder holding mnist, fashion-mnist and frey-face; default
            :func:`default_data_root`. Either ``<root>/mnist/train-images-idx3-ubyte.gz`` ... or
            torchvision's ``<root>/MNIST/raw/...`` layout is read.
        test_fraction: share of rows held out, in [0, 1), for sources without an official split
            (ignored for mnist and fashion-mnist, which keep their 60000/10000 split).
        seed: seeds the split, the synthetic draw and static binarization.
        dtype: ``torch.float32`` or ``torch.float64``.
        binarize: None, ``"static"`` (sample {0, 1} images once, now) or ``"dynamic"`` (keep
            grayscale; the trainer resamples per minibatch). Only for images in [0, 1].
        download: let torchvision fetch mnist/fashion-mnist into ``root`` when absent.
        standardize: z-score every column with the training set's mean and standard deviation.

    Returns:
        the :class:`Dataset`, on the CPU.

    Raises:
        InputError: for an unknown name, a missing or malformed file, or an argument out of range.
    """
    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    _check_arguments(test_fraction=test_fraction, dtype=dtype, binarize=binarize)
    if binarize is not None and standardize:
        raise InputError(
            f"--binarize={binarize} and --standardize cannot be combined: binarized pixels are "
            "Bernoulli probabilities or 0/1 values, z-scores are not; drop one of them"
        )
    request = _Request(
        root=None if root is None else pathlib.Path(root).expanduser(),
        download=download,
        seed=int(seed),
        dtype=dtype,
    )
    loaded = _dispatch(name, request)

    if loaded.test_x is None:
        train, test, train_labels, test_labels = _seeded_split(
            loaded.x, loaded.labels, test_fraction=test_fraction, seed=request.seed, name=name
        )
    else:
        train, test = loaded.x, loaded.test_x
        train_labels, test_labels = loaded.labels, loaded.test_labels

    if binarize is not None:
        _check_binarizable(name, binarize, train, test, is_image=loaded.is_image)
    if binarize == "static":
        # One generator for both parts, so the whole binarized dataset follows from the seed.
        generator = torch.Generator().manual_seed(request.seed)
        train = _bernoulli_sample(train, generator)
        test = _bernoulli_sample(test, generator)
    if standardize:
        train, test = _standardize(train, test)

    return Dataset(
        name=name,
        train=train,
        test=test,
        train_labels=train_labels,
        test_labels=test_labels,
        obs_shape=loaded.obs_shape,
        is_image=loaded.is_image,
        source=loaded.source,
        feature_names=loaded.feature_names,
        true_params=loaded.true_params,
        binarize=binarize,
    )


# ---------------------------------------------------------------------------------------------
# Validation and post-processing shared by every source
# ---------------------------------------------------------------------------------------------


def _check_arguments(*, test_fraction: float, dtype: torch.dtype, binarize: str | None) -> None:
    # `not (a <= f < b)` is also true for NaN, which must be refused too.
    if not (0.0 <= test_fraction < 1.0):
        raise InputError(
            f"--test-fraction={test_fraction} is outside [0, 1); use e.g. 0.2, or 0 for no test set"
        )
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype={dtype} is not supported; use torch.float32 or torch.float64")
    if binarize is not None and binarize not in BINARIZE_CHOICES:
        raise InputError(
            f"--binarize={binarize!r} is not one of {', '.join(BINARIZE_CHOICES)}; "
            "leave it out to keep grayscale values"
        )


def _seeded_split(
    x: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    test_fraction: float,
    seed: int,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Split ``x : (N, D)`` (and labels) into train/test by a permutation seeded by ``seed``.

    The test part has ``ceil(test_fraction * N)`` rows (as scikit-learn's ``train_test_split``),
    so any positive fraction holds out at least one row. Within each part rows keep their order
    in the source, which makes the parts easy to compare with the file; minibatching shuffles.
    """
    num_rows = x.shape[0]
    num_test = math.ceil(test_fraction * num_rows)
    if num_rows - num_test < 1:
        raise InputError(
            f"--test-fraction={test_fraction} leaves no training rows out of the {num_rows} rows "
            f"of {name!r}; use a smaller fraction, e.g. 0"
        )
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_rows, generator=generator)
    test_index = permutation[:num_test].sort().values
    train_index = permutation[num_test:].sort().values

    def pick(values: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
        return None if values is None else values[index]

    return x[train_index], x[test_index], pick(labels, train_index), pick(labels, test_index)


def _check_binarizable(
    name: str, binarize: str, train: torch.Tensor, test: torch.Tensor, *, is_image: bool
) -> None:
    """Binarization treats values as Bernoulli probabilities: only images in [0, 1] qualify."""
    if not is_image:
        raise InputError(
            f"--binarize={binarize} needs image data, but {name!r} is tabular; "
            "leave --binarize out for this dataset"
        )
    # Per part, not on a concatenation: that would copy all of MNIST once more.
    low = min(part.min().item() for part in (train, test) if part.numel())
    high = max(part.max().item() for part in (train, test) if part.numel())
    if low < 0.0 or high > 1.0:
        raise InputError(
            f"--binarize={binarize} needs pixel values in [0, 1], but {name!r} has values in "
            f"[{low:g}, {high:g}]; leave --binarize out, or scale the images to [0, 1] first"
        )


def _bernoulli_sample(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(N, D)`` probabilities -> one ``(N, D)`` draw of 0s and 1s in the same dtype."""
    return (torch.rand(x.shape, generator=generator, dtype=x.dtype) < x).to(x.dtype)


def _standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-score both parts with the *training* mean and standard deviation (no test leakage)."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, correction=0)
    # A constant column (e.g. an always-black MNIST corner) is only centred, not divided by 0.
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def _to_observations(
    array: np.ndarray, *, what: str, dtype: torch.dtype
) -> tuple[torch.Tensor, tuple[int, ...], bool]:
    """Check a user array and flatten it to ``(N, D)``.

    ``(N, D)`` is tabular; ``(N, H, W, ...)`` is read as N images of shape ``(H, W, ...)``.

    Returns:
        ``(x, obs_shape, is_image)`` with ``x : (N, D)`` in ``dtype``.
    """
    if array.dtype.kind not in "biuf":  # bool, signed, unsigned, floating
        raise InputError(
            f"{what} holds values of type {array.dtype}; it needs numbers (int or float)"
        )
    if array.ndim < 2:
        raise InputError(
            f"{what} needs a 2-D array (rows are observations); got shape {array.shape}; "
            f"reshape to ({array.shape[0] if array.ndim else 1}, 1)"
        )
    if array.size == 0:
        raise InputError(
            f"{what} is empty (shape {array.shape}); it needs at least one row and one column"
        )
    values = array.reshape(array.shape[0], -1).astype(
        np.float64 if dtype == torch.float64 else np.float32
    )
    not_finite = ~np.isfinite(values)
    if not_finite.any():
        first_row = int(np.argmax(not_finite.any(axis=1)))
        raise InputError(
            f"{what} holds {int(not_finite.sum())} NaN or infinite values (the first in row "
            f"{first_row}, counting from 0); remove or impute them"
        )
    obs_shape = tuple(int(size) for size in array.shape[1:])
    return torch.from_numpy(values), obs_shape, array.ndim > 2


# ---------------------------------------------------------------------------------------------
# Dispatch: the named datasets, synthetic data and user files
# ---------------------------------------------------------------------------------------------


def _dispatch(name: str, request: _Request) -> _Loaded:
    if not isinstance(name, str) or not name:
        raise InputError(f"dataset name {name!r} is empty; {_choices_hint()}")
    loader = _NAMED_LOADERS.get(name)
    if loader is not None:
        return loader(request)
    if name.startswith(SYNTHETIC_PREFIX):
        return _load_synthetic(name.removeprefix(SYNTHETIC_PREFIX), name, request)
    path = pathlib.Path(name).expanduser()
    suffix = path.suffix.lower()
    if suffix in USER_FILE_SUFFIXES:
        return _load_user_file(path, suffix, request)
    if suffix or os.sep in name or "/" in name or path.exists():
        raise InputError(
            f"data file {name!r} has an unsupported type; give a "
            f"{'/'.join(USER_FILE_SUFFIXES)} file (rows are observations) or a named dataset: "
            f"{', '.join(DATASETS)}"
        )
    raise InputError(f"unknown dataset {name!r}; {_choices_hint()}")


def _choices_hint() -> str:
    return (
        f"choose one of: {', '.join(DATASETS)}, {SYNTHETIC_PREFIX}<model> (e.g. "
        f"{SYNTHETIC_PREFIX}gmm), or give a {'/'.join(USER_FILE_SUFFIXES)} file"
    )


def _load_old_faithful(request: _Request) -> _Loaded:
    """272 eruptions of the Old Faithful geyser: duration and waiting time, both in minutes."""
    resource = importlib.resources.files("zoo") / "data" / "faithful.csv"
    # Header `rownames,eruptions,waiting`; the row-name column is only R's row counter.
    table = np.loadtxt(
        io.StringIO(resource.read_text(encoding="utf-8")),
        delimiter=",",
        skiprows=1,
        usecols=(1, 2),
        dtype=np.float64,
    )
    return _Loaded(
        x=torch.from_numpy(table).to(request.dtype),
        labels=None,
        obs_shape=(2,),
        is_image=False,
        source="lvm-zoo bundled copy of R's datasets::faithful (zoo/data/faithful.csv)",
        feature_names=("eruptions", "waiting"),
    )


def _load_iris(request: _Request) -> _Loaded:
    """150 irises, 4 measurements in cm, 3 species labelled 0..2."""
    from sklearn.datasets import load_iris

    bunch = load_iris()
    return _Loaded(
        x=torch.from_numpy(bunch.data).to(request.dtype),
        labels=torch.from_numpy(bunch.target).to(torch.int64),
        obs_shape=(4,),
        is_image=False,
        source="scikit-learn bundled copy (sklearn.datasets.load_iris)",
        feature_names=tuple(bunch.feature_names),
    )


def _load_digits(request: _Request) -> _Loaded:
    """1797 handwritten digits of 8 x 8 pixels, labels 0..9.

    Pixels keep scikit-learn's raw counts 0..16 (each is the number of dark pixels in a 4 x 4
    block of the original 32 x 32 bitmap); they are not scaled, so Gaussian models see the data
    as published. Divide by 16 for a Bernoulli likelihood; binarization refuses values above 1.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _Loaded(
        x=torch.from_numpy(bunch.data).to(request.dtype),
        labels=torch.from_numpy(bunch.target).to(torch.int64),
        obs_shape=(8, 8),
        is_image=True,
        source="scikit-learn bundled copy (sklearn.datasets.load_digits), pixel values 0..16",
    )


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


# --- synthetic-<model> -----------------------------------------------------------------------


def _load_synthetic(model_name: str, name: str, request: _Request) -> _Loaded:
    """``SYNTHETIC_NUM_DATA`` draws from the prior of a registered model, with true parameters."""
    try:
        from zoo.registry import get_model  # lazy: the registry imports every model module
    except ImportError as error:
        raise InputError(
            f"dataset {name!r} needs the model registry zoo.registry, which cannot be imported "
            f"({error}); use a named dataset or a data file instead"
        ) from None
    try:
        spec = get_model(model_name)
    except InputError as error:
        raise InputError(f"dataset {name!r}: {error}") from None
    except (LookupError, ValueError) as error:
        raise InputError(
            f"dataset {name!r} names no registered model {model_name!r} ({error}); "
            "see `lvm-zoo list` for the models"
        ) from None
    if not callable(getattr(spec, "synthetic", None)):
        raise InputError(
            f"model {model_name!r} cannot draw synthetic data; use a named dataset or a data file"
        )
    generator = torch.Generator().manual_seed(request.seed)
    x, labels, true_params = spec.synthetic(SYNTHETIC_NUM_DATA, generator, request.dtype)
    x = torch.as_tensor(x).detach().cpu()
    values, obs_shape, is_image = _to_observations(
        x.numpy(), what=f"synthetic data of {model_name!r}", dtype=request.dtype
    )
    return _Loaded(
        x=values,
        labels=None if labels is None else torch.as_tensor(labels).detach().cpu().to(torch.int64),
        obs_shape=obs_shape,
        is_image=is_image,
        source=(
            f"drawn from the prior of {model_name} ({SYNTHETIC_NUM_DATA} points, "
            f"seed {request.seed})"
        ),
        true_params={key: torch.as_tensor(value) for key, value in dict(true_params).items()},
    )


# --- user files ------------------------------------------------------------------------------


def _load_user_file(path: pathlib.Path, suffix: str, request: _Request) -> _Loaded:
    if not path.is_file():
        where = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"data file '{path}' {where}; check the path")
    labels = None
    feature_names = None
    if suffix == ".csv":
        array, feature_names = _read_csv(path)
    else:
        array, labels = _read_numpy(path, suffix)
    x, obs_shape, is_image = _to_observations(
        array, what=f"data file '{path}'", dtype=request.dtype
    )
    if feature_names is not None and len(feature_names) != x.shape[1]:
        raise InputError(
            f"data file '{path}' has {len(feature_names)} header names but {x.shape[1]} columns; "
            "give every column a name, or drop the header"
        )
    if labels is not None and labels.shape != (x.shape[0],):
        raise InputError(
            f"data file '{path}' has labels of shape {labels.shape} for {x.shape[0]} rows; "
            f"save one integer label per row, shape ({x.shape[0]},)"
        )
    return _Loaded(
        x=x,
        labels=labels,
        obs_shape=obs_shape,
        is_image=is_image,
        source=str(path.resolve()),
        feature_names=feature_names,
    )


def _parses_as_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(path: pathlib.Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """A comma-separated table of numbers with an optional header row.

    The first row is a header when one of its cells is not a number; its cells become the
    feature names. Blank lines and lines starting with ``#`` are skipped.
    """
    lines = path.read_text(encoding="utf-8-sig").splitlines(keepends=True)  # -sig: Excel's BOM
    # Only the lines before the first data line are visited in Python; numpy parses the rest.
    start = next(
        (i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")),
        None,
    )
    if start is None:
        raise InputError(f"data file '{path}' is empty; it needs at least one row of numbers")
    first_row = next(csv.reader([lines[start]]))
    has_header = not all(_parses_as_float(cell) for cell in first_row)
    feature_names = tuple(cell.strip() for cell in first_row) if has_header else None
    body = "".join(lines[start + int(has_header):])

    def parse(dtype: type) -> np.ndarray:
        with warnings.catch_warnings():
            # A header-only file is reported as empty by `_to_observations`, not as a warning.
            warnings.filterwarnings("ignore", message=".*input contained no data")
            return np.loadtxt(
                io.StringIO(body), dtype=dtype, delimiter=",", ndmin=2, quotechar='"'
            )

    try:
        return parse(np.float64), feature_names
    except ValueError:
        pass  # find the offending cell below; this slow path runs only for a bad file
    try:
        cells = parse(str)
    except ValueError as error:
        reason = str(error).split(";")[0]  # numpy's advice after ';' is about its own API
        raise InputError(
            f"data file '{path}' is not a rectangular table ({reason}); every row needs the "
            "same number of comma-separated values"
        ) from None
    numeric = np.frompyfunc(_parses_as_float, 1, 1)(cells).astype(bool)
    row, column = (int(index) for index in np.argwhere(~numeric)[0])
    column_name = f" ({feature_names[column]!r})" if feature_names else ""
    cell = str(cells[row, column])
    raise InputError(
        f"data file '{path}': data row {row + 1}{' after the header' if has_header else ''}, "
        f"column {column + 1}{column_name} holds {cell!r}, which is not a number; "
        "every cell must be numeric (only the first row may be a header)"
    )


def _read_numpy(path: pathlib.Path, suffix: str) -> tuple[np.ndarray, torch.Tensor | None]:
    """The data array of an ``.npy`` file, or of an ``.npz`` file plus its optional labels.

    An ``.npz`` file may hold one array, or name its data ``x``/``data``/``X`` and optionally
    its labels ``y``/``labels``. Pickled objects are refused: loading them could run code.
    """
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            data_keys = [key for key in _NPZ_DATA_KEYS if key in keys]
            label_keys = [key for key in _NPZ_LABEL_KEYS if key in keys]
            if len(keys) == 1:
                return archive[keys[0]], None
            if len(data_keys) != 1 or len(label_keys) > 1:
                raise InputError(
                    f"data file '{path}' holds the arrays {', '.join(map(repr, keys))} and it is "
                    f"not clear which are the data; save the data as 'x' (and optionally the "
                    f"labels as 'y'), e.g. numpy.savez(path, x=data, y=labels)"
                )
            data = archive[data_keys[0]]
            if not label_keys:
                return data, None
            labels = archive[label_keys[0]]
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(
            f"data file '{path}' cannot be read as a numeric {suffix} array ({error}); save it "
            f"with numpy.{'save' if suffix == '.npy' else 'savez'} from a numeric array"
        ) from None
    if labels.dtype.kind not in "iu":
        raise InputError(
            f"data file '{path}' has labels {label_keys[0]!r} of type {labels.dtype}; "
            "labels must be integers 0..K-1"
        )
    return data, torch.from_numpy(labels.astype(np.int64))


# The named datasets, in the order `lvm-zoo list` shows them.
_NAMED_LOADERS: dict[str, Callable[[_Request], _Loaded]] = {
    "old-faithful": _load_old_faithful,
    "iris": _load_iris,
    "digits": _load_digits,
    "mnist": _idx_loader("mnist", _IdxDataset("mnist", "MNIST")),
    "fashion-mnist": _idx_loader("fashion-mnist", _IdxDataset("fashion-mnist", "FashionMNIST")),
    "frey-face": _load_frey_face,
}

DATASETS: tuple[str, ...] = tuple(_NAMED_LOADERS)
