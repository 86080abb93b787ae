"""What every posterior of the suite shares: its data and reference files, its config, the
checks on its rows, the naming of reported columns, and the ordered-vector prior Stan writes
as ``ordered[K]`` / ``positive_ordered[K]`` with normal statements on the elements."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions import biject_to, transform_to
from torch.distributions.transforms import Transform

from zoo.errors import InputError
from zoo.posteriordb import Posterior, Reference

DATA = Path(__file__).resolve().parent / "data"
MAX_REJECTION_ROUNDS = 1000  # prior draws of an ordered vector: rounds of rejection sampling


@dataclass(frozen=True)
class SuiteConfig:
    """The config of a suite posterior: only the rows' width; subclasses add the constants of
    the Stan program's data block that are not rows (prior scales, lags)."""

    dim: int = field(default=1, metadata={"cli": False})  # D, filled in from the data

    def validate(self, num_data: int) -> None:
        if num_data < 1:
            raise InputError(f"the data have {num_data} rows; give at least one")


def config_class(name: str, base: type = SuiteConfig, **defaults: Any) -> type:
    """A frozen subclass of ``base`` named ``name`` whose fields default to ``defaults``."""
    fields = [(key, type(value), field(default=value, metadata={"cli": False}))
              for key, value in defaults.items()]
    return dataclasses.make_dataclass(name, fields, bases=(base,), frozen=True)


@cache
def _data_file(data_name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{data_name}.json").read_text())


def load_data(data_name: str) -> dict[str, np.ndarray]:
    """posteriordb's data set ``data_name`` (the fields the suite's programs read) as float64
    arrays (scalars as 0-d arrays)."""
    return {key: np.asarray(value, dtype=np.float64)
            for key, value in _data_file(data_name).items()}


@cache
def _reference_file(reference_name: str) -> tuple[dict, np.ndarray | None]:
    summary = json.loads((DATA / f"{reference_name}.json").read_text())
    path = DATA / f"{reference_name}.draws.csv"
    draws = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2) if path.exists() else None
    return summary, draws


def load_reference(reference_name: str) -> Reference:
    """posteriordb's reference posterior: means and sds over all its draws, thinned draws."""
    summary, draws = _reference_file(reference_name)
    return Reference(names=tuple(summary["names"]), mean=np.asarray(summary["mean"]),
                     sd=np.asarray(summary["sd"]),
                     draws=None if draws is None else draws.copy())


def rows(columns: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Named equal-length columns as ``(N, D)`` float64 rows and their names."""
    names = tuple(columns)
    stacked = np.stack([np.asarray(columns[name], dtype=np.float64) for name in names], axis=1)
    return torch.from_numpy(stacked), names


def need_rows(x: torch.Tensor | None, name: str, columns: tuple[str, ...],
              subsample_size: int | None = None, *, exchangeable: bool = True) -> torch.Tensor:
    """``x`` checked against the posterior's columns; rows that are not exchangeable (a time
    series, a Gaussian process) cannot be subsampled."""
    if x is None:
        raise InputError(f"the posterior {name} conditions on its data: pass its rows x "
                         f"(columns {', '.join(columns)}), e.g. zoo.posteriordb.get({name!r}).x")
    if x.dim() != 2 or x.shape[1] != len(columns):
        raise InputError(f"x of shape {tuple(x.shape)} for {name}: give (N, {len(columns)}) rows "
                         f"with the columns {', '.join(columns)}")
    if not exchangeable and subsample_size not in (None, x.shape[0]):
        raise InputError(f"subsample_size={subsample_size} for {name}: its {x.shape[0]} rows "
                         "are jointly dependent; fit it on all of them (subsample_size=None)")
    return x


def per_draw(value: torch.Tensor) -> torch.Tensor:
    """A site's draws with the leading draw dimension kept and the rest flattened: ``(S, K)``."""
    return value.reshape(value.shape[0], -1)


def named(prefix: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """Columns ``prefix[1]``, ``prefix[2]``, ... (Stan's 1-based names) of ``(S, K)`` draws."""
    flat = per_draw(value)
    return {f"{prefix}[{k + 1}]": flat[:, k] for k in range(flat.shape[1])}


def scalar(value: torch.Tensor) -> torch.Tensor:
    """A scalar site's draws as ``(S,)``."""
    return per_draw(value)[:, 0]


def gather(columns: Mapping[str, torch.Tensor], *names: str) -> torch.Tensor:
    """Reported ``(S,)`` columns stacked into a site's ``(S, K)`` value."""
    return torch.stack([columns[name] for name in names], -1)


def vector(columns: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """The ``(S, K)`` value of the vector site reported as ``prefix[1]``, ``prefix[2]``, ..."""
    size = sum(1 for name in columns if name.startswith(prefix + "["))
    return gather(columns, *(f"{prefix}[{k + 1}]" for k in range(size)))


def posterior(name: str, *, model: Callable, config: type, data: Mapping[str, np.ndarray],
              reported: Callable, latent_values: Callable, local_sites: tuple[str, ...] = (),
              reference: str | None = None, notes: str = "", **extra: Any) -> Posterior:
    """A :class:`Posterior` from named columns; ``reference`` names another posterior's
    reference where posteriordb shares one (eight schools)."""
    x, columns = rows(data)
    config = config_class(config.__name__, config, dim=x.shape[1])
    return Posterior(name=name, model=model, config=config, x=x, columns=columns,
                     local_sites=local_sites, reported=reported,
                     reference=load_reference(reference or name), notes=notes, extra=extra,
                     latent_values=latent_values)


class _PositiveOrdered(type(constraints.positive_ordered_vector)):
    """Positive increasing vectors, unconstrained the way Stan does it (below)."""


positive_ordered_vector = _PositiveOrdered()


class CumulativeExp(Transform):
    """Stan's ``positive_ordered`` transform: ``mu = cumsum(exp(u))``. Pyro's own (ordered,
    then exp) makes ``mu_2 = exp(u_1 + exp(u_2))``, a doubly exponential scale that NUTS's
    step size cannot follow; this one is exp per element, as in Stan."""

    domain = constraints.real_vector
    codomain = positive_ordered_vector
    bijective = True

    def __eq__(self, other):
        return isinstance(other, CumulativeExp)

    def _call(self, x):
        return torch.cumsum(torch.exp(x), -1)

    def _inverse(self, y):
        return torch.log(torch.cat([y[..., :1], y[..., 1:] - y[..., :-1]], -1))

    def log_abs_det_jacobian(self, x, y):
        return x.sum(-1)  # triangular, diagonal exp(x_k)


biject_to.register(_PositiveOrdered, lambda constraint: CumulativeExp())
transform_to.register(_PositiveOrdered, lambda constraint: CumulativeExp())


class OrderedNormal(dist.TorchDistribution):
    """Independent normals on the elements of a vector constrained to be increasing (and
    positive with ``positive=True``): Stan's ``ordered[K] mu; mu[k] ~ normal(loc[k], scale)``.

    ``log_prob`` is the sum of the normal log densities, without the log of the probability
    that independent normals land in the ordered set: a constant, so the posterior and every
    gradient are exact and log densities are off by that constant only. ``sample`` draws
    the normals and keeps the ordered ones (rejection), which is exact.
    """

    arg_constraints = {"loc": constraints.real_vector, "scale": constraints.positive}
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor | float, *,
                 positive: bool = False, validate_args: bool | None = None):
        self.loc = loc
        self.scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
        self.positive = positive
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return positive_ordered_vector if self.positive else constraints.ordered_vector

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return OrderedNormal(self.loc.expand(shape), self.scale, positive=self.positive)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return dist.Normal(self.loc, self.scale).log_prob(value).sum(-1)

    def sample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            out = torch.full(shape, float("nan"), dtype=self.loc.dtype, device=self.loc.device)
            for _ in range(MAX_REJECTION_ROUNDS):
                draw = torch.normal(self.loc.expand(shape), self.scale.expand(shape))
                ordered = (draw[..., 1:] > draw[..., :-1]).all(-1)
                if self.positive:
                    ordered = ordered & (draw[..., 0] > 0)
                fill = ordered & out[..., 0].isnan()
                out = torch.where(fill[..., None], draw, out)
                if not out[..., 0].isnan().any():
                    return out
        raise RuntimeError("OrderedNormal: rejection sampling found no ordered draw in "
                           f"{MAX_REJECTION_ROUNDS} rounds; the prior puts almost no mass there")
