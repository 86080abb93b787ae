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
:func:`dynamic_binarize`). 8-bit images (values k/255) can be dequantized (``dequantize=True``):
k becomes (k + u) / 256 with seeded u ~ U[0, 1), so a density of them is bounded and gives bits
per dimension (``Dataset.bin_width``).

Every bad input raises :class:`zoo.errors.InputError` with a message that names the input, the
bound it broke and the fix.

Modules: :mod:`~zoo.datasets.base` (:class:`Dataset`, the shared types and array checks),
:mod:`~zoo.datasets.named` (the named and synthetic sources), :mod:`~zoo.datasets.images`
(MNIST, Fashion-MNIST, Frey Face), :mod:`~zoo.datasets.files` (users' files) and
:mod:`~zoo.datasets.split` (split, binarization, dequantization, standardization). Import from
here.
"""

from __future__ import annotations

import os
import pathlib

import torch

from zoo.datasets.base import (
    BINARIZE_CHOICES,
    DATA_ROOT_ENV,
    SYNTHETIC_NUM_DATA,
    SYNTHETIC_PREFIX,
    USER_FILE_SUFFIXES,
    Dataset,
    _Loaded,
    _Request,
    default_data_root,
)
from zoo.datasets.files import _load_user_file
from zoo.datasets.named import _NAMED_LOADERS, DATASETS, _load_synthetic
from zoo.datasets.split import (
    DEQUANTIZED_BIN_WIDTH,
    Gather,
    _bernoulli_sample,
    _check_binarizable,
    _dequantize,
    _pixel_levels,
    _seeded_split,
    _standardize,
    dynamic_binarize,
)
from zoo.errors import InputError

__all__ = [
    "BINARIZE_CHOICES",
    "DATASETS",
    "DATA_ROOT_ENV",
    "SYNTHETIC_NUM_DATA",
    "SYNTHETIC_PREFIX",
    "USER_FILE_SUFFIXES",
    "Dataset",
    "default_data_root",
    "dynamic_binarize",
    "load_dataset",
]


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
    dequantize: bool = False,
    gather: Gather | None = None,
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
        dequantize: spread each 8-bit pixel k/255 uniformly over its bin: (k + u) / 256 with
            u ~ U[0, 1) drawn by a generator seeded with ``seed`` (train, then test), so a
            density of the values is bounded; ``bin_width`` is then 1/256. Only for images with
            values k/255 (mnist, fashion-mnist, frey-face); not with ``binarize`` or
            ``standardize``.
        gather: how the split copies each part's rows, ``gather(x, index)`` for the training
            part, then the held-out part (default ``torch.index_select(x, 0, index)``);
            processes that share the rows pass their own (the ranks of one machine under
            torchrun: one copy in shared memory). Sources with an official split are not
            copied.

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
    if dequantize and (binarize is not None or standardize):
        other = f"--binarize={binarize}" if binarize is not None else "--standardize"
        raise InputError(
            f"--dequantize and {other} cannot be combined: dequantized pixels are 8-bit values "
            "spread over their bins, for a density in [0, 1]; drop one of them (--dequantize "
            "for a Gaussian density of the pixels, --binarize for a Bernoulli likelihood)"
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
            loaded.x, loaded.labels, test_fraction=test_fraction, seed=request.seed, name=name,
            gather=gather,
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
    if dequantize:
        # One generator, train then test, so the whole dequantized dataset follows from the seed.
        generator = torch.Generator().manual_seed(request.seed)
        train = _dequantize(_pixel_levels(name, train, is_image=loaded.is_image), generator)
        test = _dequantize(_pixel_levels(name, test, is_image=loaded.is_image), generator)

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
        bin_width=DEQUANTIZED_BIN_WIDTH if dequantize else None,
    )


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
