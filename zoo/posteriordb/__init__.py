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
proper prior that replaces the Stan program's flat one on it), ``"dense_mass"`` (True where
the posterior's correlations need NUTS with a dense mass matrix) and ``"nuts"``, the NUTS
settings a posterior needs beyond those, each with its reason in ``notes``:
``"noncentered"`` (sites ``s ~ Normal(loc, scale)`` that NUTS samples in the coordinates
``(s - loc) / scale``, Pyro's ``LocScaleReparam(0)``: the same posterior, the model's own
sites and densities, without the funnel that biases NUTS in the model's coordinates) and
``"centred"`` (site -> the predictors' means: a regression's coefficients sampled with the
intercept at those means, :class:`CentredIntercept`, where uncentred predictors correlate the
intercept and slope beyond what NUTS's regularized dense mass matrix captures) and ``"jit"``
(False where the JIT-compiled potential is slower than the eager one).
:func:`nuts_model` applies them to a model and :func:`model_draws` maps NUTS's draws back
to the model's latent sites, so ``reported`` reads them as any other draws.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.reparam import LocScaleReparam
from pyro.infer.reparam.reparam import Reparam

from zoo.errors import InputError

__all__ = ["MODULES", "CentredIntercept", "Posterior", "Reference", "get", "model_draws", "names",
           "nuts_model", "suite"]

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


class CentredIntercept(Reparam):
    """A regression's coefficient vector ``b ~ Normal(loc, scale)`` (intercept first) sampled as
    ``c = M b`` with ``c_0 = b_0 + sum_j shift_j b_j`` (``shift_j`` the predictors' means) and
    ``c_j = b_j``: the intercept at the predictors' mean, uncorrelated with the slopes. ``c``'s
    prior is the normal ``M b`` has (det M = 1, so the density is the same), ``b = M^-1 c``."""

    def __init__(self, shift: tuple[float, ...]):
        self.shift = shift

    def apply(self, msg):
        fn, name = msg["fn"], msg["name"]
        base = fn.base_dist if isinstance(fn, torch.distributions.Independent) else fn
        loc, scale = base.loc, base.scale
        shift = loc.new_tensor(self.shift)
        mix = torch.eye(loc.shape[-1], dtype=loc.dtype, device=loc.device)
        mix = mix.index_add(0, torch.zeros(1, dtype=torch.long, device=loc.device),
                            shift.unsqueeze(0))  # row 0 += shift: M = I + e_0 shift^T
        covariance = (mix * scale.unsqueeze(-2) ** 2) @ mix.transpose(-1, -2)
        centred = pyro.sample(f"{name}_centred",
                              dist.MultivariateNormal(loc @ mix.transpose(-1, -2), covariance))
        value = centred - (centred * shift).sum(-1, keepdim=True) * (
            torch.arange(loc.shape[-1], device=loc.device) == 0)  # b_0 = c_0 - shift . c
        return {"fn": dist.Delta(value, event_dim=1).mask(False), "value": value,
                "is_observed": True}


def _reparametrized(post: Posterior) -> dict[str, Reparam]:
    settings = post.extra.get("nuts", {})
    return {**{site: LocScaleReparam(centered=0.0) for site in settings.get("noncentered", ())},
            **{site: CentredIntercept(tuple(shift))
               for site, shift in settings.get("centred", {}).items()}}


def nuts_model(post: Posterior, model: Callable[..., Any]) -> Callable[..., Any]:
    """``model`` (``post.model`` or its declared form) as NUTS should sample it: the sites in
    ``extra["nuts"]["noncentered"]`` and ``["centred"]`` reparametrized (the posterior is
    unchanged)."""
    config = _reparametrized(post)
    return poutine.reparam(model, config=config) if config else model


def model_draws(post: Posterior, model: Callable[..., Any], samples: Mapping[str, torch.Tensor],
                *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
    """NUTS's draws of ``nuts_model(post, model)`` (``samples``: site -> (S, ...)) as draws of
    ``model``'s latent sites: each noncentred site recomputed from its draw, the model run
    once per draw on ``args``/``kwargs`` (the data)."""
    sites = tuple(_reparametrized(post))
    if not sites:
        return dict(samples)
    reparametrized = nuts_model(post, model)
    count = next(iter(samples.values())).shape[0]
    values: dict[str, list[torch.Tensor]] = {site: [] for site in sites}
    for s in range(count):
        draw = {name: value[s] for name, value in samples.items()}
        trace = poutine.trace(poutine.condition(reparametrized, data=draw)).get_trace(
            *args, **kwargs)
        for site in sites:
            values[site].append(trace.nodes[site]["value"].detach())
    kept = {name: value for name, value in samples.items()
            if not any(name in (f"{site}_decentered", f"{site}_centred") for site in sites)}
    return {**kept, **{site: torch.stack(parts) for site, parts in values.items()}}
