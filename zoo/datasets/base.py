"""What every loader shares: the constants, :class:`Dataset`, the loaders' request and result
types, the default data root, and the check that turns an array into ``(N, D)`` observations.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from zoo.errors import InputError

SYNTHETIC_PREFIX = "synthetic-"
SYNTHETIC_NUM_DATA = 1000  # datapoints drawn for ``synthetic-<model>``
USER_FILE_SUFFIXES = (".csv", ".npy", ".npz")
BINARIZE_CHOICES = ("static", "dynamic")
DATA_ROOT_ENV = "LVM_ZOO_DATA"


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
        bin_width: the width of one quantization bin, in data units, when the values were
            dequantized (``1/256``: 8-bit pixel k became (k + u) / 256, u ~ U[0, 1)); a density
            p of them then gives bits per dimension −(log p + D log bin_width) / (D log 2).
            None otherwise.
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
    bin_width: float | None = None

    @property
    def label(self) -> str:
        """The name for titles: a file's name without its folders (``eight_schools.csv``)."""
        return pathlib.PurePath(self.name).name if os.sep in self.name else self.name

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
        if self.bin_width is not None:
            details.append(f"dequantized, bins of {self.bin_width:g}")
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


def default_data_root() -> pathlib.Path:
    """Where downloadable datasets live: ``$LVM_ZOO_DATA`` if set, else ``~/.cache/lvm-zoo``.

    Nothing is created here; the folder may not exist.
    """
    from_env = os.environ.get(DATA_ROOT_ENV, "")
    if from_env:
        return pathlib.Path(from_env).expanduser()
    return pathlib.Path.home() / ".cache" / "lvm-zoo"


def _numpy_dtype(dtype: torch.dtype) -> type:
    return np.float64 if dtype == torch.float64 else np.float32


def _to_observations(
    array: np.ndarray, *, what: str, dtype: torch.dtype, borrow: bool = False
) -> tuple[torch.Tensor, tuple[int, ...], bool]:
    """Check a user array and flatten it to ``(N, D)``.

    An array already of ``dtype`` is used as it is, not copied, where it is writeable or
    ``borrow`` says the caller only reads the tensor (a memory-mapped file, which the split
    then copies); else it is converted into a new array.

    ``(N, D)`` is tabular; ``(N, H, W, ...)`` is read as N images of shape ``(H, W, ...)``,
    flattened row-major; ``obs_shape`` keeps ``(H, W, ...)`` so they can be folded back.

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
    rows = array.reshape(array.shape[0], -1)
    target = _numpy_dtype(dtype)
    if rows.dtype.kind == "f":
        # Checked before the cast, so an overflow in the cast is told apart from bad values.
        # Two reductions without a temporary decide it (a NaN makes both NaN, an infinity
        # one of them infinite); the rows are searched for the first bad one only when
        # there is one (the full mask took 0.4 s of loading 10^7 x 16 float32 values).
        low, high = rows.min(), rows.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            not_finite = ~np.isfinite(rows)
            first_row = int(np.argmax(not_finite.any(axis=1)))
            raise InputError(
                f"{what} holds {int(not_finite.sum())} NaN or infinite values (the first in row "
                f"{first_row}, counting from 0); remove or impute them"
            )
        if max(abs(float(low)), abs(float(high))) > float(np.finfo(target).max):
            _check_in_range(rows, target, what=what)
    # (a copy of 10^7 x 16 values took 1.4 s)
    values = rows.astype(target, copy=not (rows.flags.writeable or borrow))
    obs_shape = tuple(int(size) for size in array.shape[1:])
    with warnings.catch_warnings():  # a borrowed read-only array: only read (see above)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(values)
    return tensor, obs_shape, array.ndim > 2


def _check_in_range(rows: np.ndarray, target: type, *, what: str) -> None:
    """Refuse finite floats whose magnitude the cast to ``target`` would turn into infinity."""
    limit = np.finfo(target).max
    if np.finfo(rows.dtype).max <= limit:
        return  # every finite value of the source type fits
    too_big = np.abs(rows) > limit
    if not too_big.any():
        return
    first_row = int(np.argmax(too_big.any(axis=1)))
    largest = float(np.abs(rows).max())
    name = np.dtype(target).name
    raise InputError(
        f"{what} holds {int(too_big.sum())} values whose magnitude exceeds {name}'s range "
        f"(±{float(limit):.4g}; the largest is {largest:.4g}, the first in row {first_row}, "
        f"counting from 0); load it with --dtype float64 (dtype=torch.float64), or rescale it"
    )
