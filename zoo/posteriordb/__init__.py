"""Posteriors from posteriordb (Magnusson et al. 2024), written as declared Pyro models.

Each posterior of the bench suite is one module in this package: the Stan program read
carefully and written as a Pyro model with the zoo's declared-model signature
(``model(x=None, *, num_data=None, subsample_size=None, config)``, see :mod:`zoo.declare`),
its data as the rows ``x`` (one row per datapoint, columns named), and the reference
posterior's per-parameter means and sds, with a thinned set of reference draws where small
enough, read from a data file in ``zoo/posteriordb/data/`` (source and license stated in
``zoo/posteriordb/data/README.md``).

Parameter names follow posteriordb's (``theta[1]``, ``sigma``); :attr:`Posterior.reported`
turns a dict of the model's latent site values (each with a leading draw dimension) into
those named columns, so every strategy is judged on the same parameters as the reference;
:attr:`Posterior.latent_values` is its inverse (site values from named columns).

``suite()`` builds every posterior (about 0.3 s: the files are small), ``names()`` lists them,
``get(name)`` builds one; the modules in :data:`MODULES` each hold ``POSTERIORS`` (name ->
builder). Keys of :attr:`Posterior.extra`: ``"wide_priors"`` (site -> the scale of the wide
proper prior that replaces the Stan program's flat one on it) and ``"dense_mass"`` (True where
the posterior's correlations need NUTS with a dense mass matrix).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from zoo.errors import InputError

__all__ = ["MODULES", "Posterior", "Reference", "get", "names", "suite"]

# the modules that define the suite's posteriors, each with ``POSTERIORS``: name -> builder
MODULES = ("hierarchical", "regression", "time_series", "hmm", "mixture", "gaussian_process")


@dataclass(frozen=True)
class Reference:
    """posteriordb's reference posterior for the reported parameters."""

    names: tuple[str, ...]  # posteriordb's parameter names, in column order
    mean: np.ndarray  # (P,)
    sd: np.ndarray  # (P,)
    draws: np.ndarray | None = None  # (S, P), thinned reference draws, or None


@dataclass(frozen=True)
class Posterior:
    """One posterior of the suite: a declared-model-style Pyro model, its data and reference."""

    name: str  # posteriordb's posterior name, e.g. "eight_schools-eight_schools_noncentered"
    model: Callable[..., Any]  # model(x=None, *, num_data=None, subsample_size=None, config)
    config: type  # frozen dataclass, as for zoo.declare
    x: torch.Tensor  # (N, D) float64 rows
    columns: tuple[str, ...]  # names of x's columns
    local_sites: tuple[str, ...]  # latent sites inside pyro.plate("data")
    reported: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    reference: Reference
    notes: str = ""  # where the Pyro model departs from the Stan program, and why
    extra: dict[str, Any] = field(default_factory=dict)
    # the inverse of ``reported``: latent site values (leading draw dim) from reported columns
    # (each (S,)), e.g. to evaluate the model's log density at the reference mean
    latent_values: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


def _builders() -> dict[str, Callable[[], Posterior]]:
    builders: dict[str, Callable[[], Posterior]] = {}
    for module in MODULES:
        builders.update(importlib.import_module(f"{__name__}.{module}").POSTERIORS)
    return builders


def names() -> list[str]:
    """The suite's posterior names (posteriordb's), one module after another."""
    return list(_builders())


def get(name: str) -> Posterior:
    """One posterior of the suite, its data and reference read from the package's files."""
    builders = _builders()
    if name not in builders:
        raise InputError(f"no posterior {name!r} in the posteriordb suite; choose one of "
                         f"{', '.join(builders)}")
    return builders[name]()


def suite() -> dict[str, Posterior]:
    """Every posterior of the suite by name, data and references read when called."""
    return {name: build() for name, build in _builders().items()}
