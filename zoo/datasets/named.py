"""The named datasets and ``synthetic-<model>``.

Bundled, never touching the network: ``old-faithful`` (R's ``datasets::faithful``, shipped as
package data in ``zoo/data/faithful.csv``), ``iris`` and ``digits`` (scikit-learn's bundled
copies). Read from a data root (see :mod:`zoo.datasets.images`): ``mnist``, ``fashion-mnist``,
``frey-face``. ``synthetic-<model>`` draws from a registered model's prior.
"""

from __future__ import annotations

import importlib.resources
import io
from collections.abc import Callable

import numpy as np
import torch

from zoo.datasets.base import SYNTHETIC_NUM_DATA, _Loaded, _Request, _to_observations
from zoo.datasets.images import _idx_loader, _IdxDataset, _load_frey_face
from zoo.errors import InputError

# --- bundled ---------------------------------------------------------------------------------


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
