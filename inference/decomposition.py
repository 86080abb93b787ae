"""The ELBO decomposition, exactly: log p(x_n) = ELBO_n + KL(q(z_n) || p(z_n | x_n)).

For a model whose spec has both ``log_marginal`` and ``posterior`` (PPCA, factor analysis, the
GMM), no sampling is needed: log p(x_n) comes from the closed form, the gap is the KL divergence
between two known distributions (``torch.distributions.kl_divergence``; Gaussians of diagonal
and full covariance are matched through their full-covariance form), and the ELBO is their
difference. All three are per datapoint, in nats.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pyro import poutine
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from inference.evaluate import fitted, guide_site
from inference.results import FitResult
from zoo.errors import InputError
from zoo.registry import ModelSpec, Params


class ElboDecomposition(NamedTuple):
    """Per-datapoint terms, each ``(N,)`` in nats; ``log_likelihood = elbo + kl``."""

    log_likelihood: torch.Tensor  # log p(x_n)
    elbo: torch.Tensor  # E_q[log p(x_n, z_n) - log q(z_n)]
    kl: torch.Tensor  # KL(q(z_n) || p(z_n | x_n)) >= 0, the gap

    def means(self) -> dict[str, float]:
        """Mean nats per datapoint of each term: ``{"log_likelihood", "elbo", "kl"}``."""
        return {name: float(value.detach().mean()) for name, value in self._asdict().items()}


def elbo_decomposition(spec: ModelSpec, config, params: Params, x: torch.Tensor,
                       q) -> ElboDecomposition:
    """log p(x_n), ELBO_n and KL(q || p(z_n | x_n)) for every row of ``x : (N, D)``, exactly.

    Args:
        spec: a model with ``log_marginal`` and ``posterior`` and one local latent site.
        config: the model's config.
        params: the model's parameters (its one representation) at which to judge ``q``.
        x: the data, ``(N, D)``.
        q: the approximate posterior over the local latent, either a distribution with batch
            shape ``(N,)`` or a guide (called as ``q(x)``; its local site's distribution is
            read from one trace, so its parameters must already be in the param store; see
            :func:`decompose_fit` for a fitted result).

    Differentiable: with ``q``'s parameters requiring gradients, ``elbo`` is the exact ELBO to
    maximize (no sampling). Wrap the call in ``torch.no_grad()`` to only evaluate.
    """
    if spec.log_marginal is None or spec.posterior is None:
        raise InputError(f"model '{spec.name}' has no exact log p(x) and posterior; judge its "
                         "guides with an importance-sampled bound instead")
    if not isinstance(q, Distribution):
        q = guide_distribution(q, x, site=_local_site(spec))
    if tuple(q.batch_shape) != (x.shape[0],):
        raise InputError(f"q has batch shape {tuple(q.batch_shape)} but x has {x.shape[0]} "
                         "rows; q must describe every row of x (no subsampling)")
    log_likelihood = spec.log_marginal(config, params, x)
    kl = gaussian_aware_kl(q, spec.posterior(config, params, x))
    return ElboDecomposition(log_likelihood, log_likelihood - kl, kl)


def exact_decomposition(spec: ModelSpec, config, result: FitResult,
                        x: torch.Tensor) -> dict | None:
    """Mean exact log p(x), ELBO and KL of the fit's guide on ``x`` where the model has a
    closed-form marginal and posterior over one local site (a guide that leaves the site to
    enumeration has q = p(z | x): KL 0); ``None`` otherwise."""
    if (spec.log_marginal is None or spec.posterior is None or len(spec.local_sites) != 1
            or result.guide not in spec.guides):
        return None
    site = spec.local_sites[0]
    with torch.no_grad(), fitted(spec, config, result.params, x, guide=result.guide,
                guide_params=result.guide_params) as (model, guide_fn):
        q = guide_site(guide_fn, x, site)
        try:
            if q is None:
                log_likelihood = spec.log_marginal(config, result.params, x)
                return {"log_likelihood": float(log_likelihood.mean()),
                        "elbo": float(log_likelihood.mean()), "kl": 0.0}
            return elbo_decomposition(spec, config, result.params, x, q).means()
        except (InputError, NotImplementedError):
            return None


def decompose_fit(spec: ModelSpec, config, result: FitResult, x: torch.Tensor,
                  guide: str | None = None) -> ElboDecomposition:
    """:func:`elbo_decomposition` of a fitted result on ``x`` (its training rows, for a
    mean-field guide). ``guide`` defaults to the result's guide; without one (EM, closed form)
    q is the exact posterior and the gap is 0. Runs in a param-store scope of its own."""
    with torch.no_grad():
        return _decompose_fit(spec, config, result, x, guide or result.guide)


def _decompose_fit(spec, config, result, x, guide):
    if guide is None:
        return elbo_decomposition(spec, config, result.params, x,
                                  spec.posterior(config, result.params, x))
    if guide not in spec.guides:
        raise InputError(f"model '{spec.name}' has no guide '{guide}'; choose one of: "
                         + ", ".join(spec.guides))
    # `fitted` registers the guide's parameters (networks included) and then writes the fit's
    # values into them, so an encoder is judged with its trained weights, not fresh ones.
    with fitted(spec, config, result.params, x, guide=guide,
                guide_params=result.guide_params) as (_, guide_fn):
        return elbo_decomposition(spec, config, result.params, x, guide_fn)


def guide_distribution(guide, x: torch.Tensor, site: str = "z") -> Distribution:
    """The distribution a guide puts on ``site`` for all rows of ``x`` (one trace, no
    subsampling)."""
    trace = poutine.trace(guide).get_trace(x)
    if site not in trace.nodes:
        raise InputError(f"the guide has no sample site '{site}'")
    return trace.nodes[site]["fn"]


def gaussian_aware_kl(q: Distribution, p: Distribution) -> torch.Tensor:
    """``kl_divergence(q, p)``; a diagonal Gaussian (``Independent(Normal, 1)``) facing a
    full-covariance one is first written as a ``MultivariateNormal``. Two categoricals are
    compared through their log-probabilities: torch's rule reads ``p.probs == 0`` as
    impossible (KL = inf), but a posterior responsibility below float32's smallest number
    (a logit 104 nats down) rounds to 0 while its logit is finite, and q's mass there adds
    ``q (log q - log p)``, a finite (and negligible) amount."""
    if isinstance(q, Categorical) and isinstance(p, Categorical):
        return categorical_kl(q, p)
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return kl_divergence(_as_multivariate_normal(q), _as_multivariate_normal(p))


def categorical_kl(q: Categorical, p: Categorical) -> torch.Tensor:
    """KL(q || p) from normalized logits, in float64: ``sum_k q_k (log q_k - log p_k)``, terms
    with ``q_k = 0`` contributing 0 and ``p_k`` impossible (logit -inf) only where q puts mass."""
    log_q, log_p = q.logits.double(), p.logits.double()
    q_probs = log_q.exp()
    terms = torch.where(q_probs > 0, q_probs * (log_q - log_p), torch.zeros_like(q_probs))
    return terms.sum(-1).to(q.logits.dtype)


def _as_multivariate_normal(d: Distribution) -> Distribution:
    if isinstance(d, MultivariateNormal):
        return d
    if (isinstance(d, Independent) and isinstance(d.base_dist, Normal)
            and d.reinterpreted_batch_ndims == 1):
        return MultivariateNormal(d.base_dist.loc, scale_tril=torch.diag_embed(d.base_dist.scale))
    raise InputError(f"no exact KL divergence between {type(d).__name__} and the posterior; "
                     "the decomposition needs distributions torch can compare")


def _local_site(spec: ModelSpec) -> str:
    if len(spec.local_sites) != 1:
        raise InputError(f"model '{spec.name}' has local sites {spec.local_sites}; the exact "
                         "decomposition handles one local latent")
    return spec.local_sites[0]
