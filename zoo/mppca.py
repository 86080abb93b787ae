"""Mixture of probabilistic principal component analysers (Tipping & Bishop, 1999).

    c_n ~ Categorical(pi),  z_n ~ N(0, I_q),  x_n | c_n = k, z_n ~ N(W_k z_n + mu_k, sigma_k^2 I_D)
    so  p(x_n) = sum_k pi_k N(x_n | mu_k, W_k W_k^T + sigma_k^2 I_D),   n = 1..N,  q < D

Each component is a PPCA model of its own q-dimensional subspace: the mixture describes data
that lie near a union of subspaces, which one PPCA with the same total number of latent
dimensions describes poorly.

A worked example of :func:`zoo.declare`: the Pyro model below is an ordinary function, and one
``declare(...)`` call gives it the generic guides (``auto-normal``, ``amortized``, ``flow``),
its closed forms (exact log p(x), ancestral sampling, EM), ``lvm-zoo fit``, ``compare`` and
``check``. The component is a discrete local site, so the guides enumerate it with
``TraceEnum_ELBO``; z is a continuous local site.

Parameters (the ``pyro.param`` names, constrained values)::

    {"weights": (K,) pi,  "locs": (K, D) mu_k,  "factors": (K, D, q) W_k,  "noise": (K,) sigma_k^2}

EM treats the component as the latent variable and integrates z out: the E-step gives the
responsibilities r_nk = p(c_n = k | x_n); the M-step is exact, the weighted mean and, from the
weighted covariance S_k, the PPCA maximum-likelihood W_k = U_q (L_q - sigma_k^2 I)^1/2 and
sigma_k^2 = the mean of the discarded eigenvalues, so the likelihood never decreases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from zoo.declare import declare
from zoo.errors import InputError
from zoo.gmm_em import MixtureStatistics, mean_variance, weighted_moments
from zoo.gmm_em import combine as combine_moments
from zoo.registry import DATA_PLATE, EMSteps, Params

PARAM_NAMES = ("weights", "locs", "factors", "noise")


@dataclass(frozen=True)
class MPPCAConfig:
    """K components, each a PPCA model with q latent dimensions."""

    dim: int = field(default=3, metadata={"cli": False})  # D, filled in from the data
    # K, the number of components (subspaces)
    components: int = field(default=3, metadata={"help": "number of components K"})
    # q, the latent dimensions of each component
    latent_dim: int = field(default=2, metadata={"help": "latent dimensions q per component"})
    # floor on each sigma_k^2, relative to the data's mean variance; keeps EM away from
    # a component collapsing onto its own q-dimensional subspace
    min_noise: float = field(default=1e-4, metadata={
        "help": "smallest noise variance, as a fraction of the data's mean variance"})

    def validate(self, num_data: int) -> None:
        if self.components < 1:
            raise InputError(f"--components {self.components} must be at least 1")
        if self.latent_dim < 1 or self.latent_dim >= self.dim:
            raise InputError(f"--latent-dim {self.latent_dim} must be between 1 and the data "
                             f"dimension minus one, {self.dim - 1}")
        if num_data < self.components * (self.latent_dim + 2):
            raise InputError(
                f"--components {self.components} x --latent-dim {self.latent_dim} needs at "
                f"least {self.components * (self.latent_dim + 2)} rows, got {num_data}; use "
                "fewer components or latent dimensions")
        if not self.min_noise > 0:
            raise InputError(f"--min-noise {self.min_noise} must be positive")


# --- the Pyro model ---------------------------------------------------------------------------


def _default_params(config: MPPCAConfig, like: torch.Tensor) -> Params:
    """Data-free starting values: spread means, the first q axes as every factor."""
    k, d, q = config.components, config.dim, config.latent_dim
    spread = torch.linspace(-1.0, 1.0, k, dtype=like.dtype, device=like.device)
    locs = spread[:, None] * like.new_ones(d)
    factors = torch.eye(d, q, dtype=like.dtype, device=like.device).expand(k, d, q).clone()
    return {"weights": like.new_full((k,), 1.0 / k), "locs": locs, "factors": factors,
            "noise": like.new_ones(k)}


def mppca_model(x=None, *, num_data=None, subsample_size=None, config: MPPCAConfig):
    """The mixture of PPCAs, ``x : (N, D)`` or ``None`` to draw ``num_data`` rows."""
    like = x if x is not None else torch.zeros(())
    start = _default_params(config, like)
    weights = pyro.param("weights", lambda: start["weights"], constraint=constraints.simplex)
    locs = pyro.param("locs", lambda: start["locs"])
    factors = pyro.param("factors", lambda: start["factors"])
    noise = pyro.param("noise", lambda: start["noise"], constraint=constraints.positive)
    size = x.shape[0] if x is not None else num_data
    with pyro.plate(DATA_PLATE, size, subsample_size=subsample_size, device=like.device) as rows:
        component = pyro.sample("component", dist.Categorical(weights))
        z = pyro.sample("z", dist.Normal(like.new_zeros(config.latent_dim), 1.0).to_event(1))
        # component may carry enumeration or particle dimensions on the left: index, broadcast
        mean = locs[component] + (factors[component] @ z.unsqueeze(-1)).squeeze(-1)
        scale = noise[component].sqrt().unsqueeze(-1)
        return pyro.sample("x", dist.Normal(mean, scale).to_event(1),
                           obs=None if x is None else x[rows])


# --- closed forms -------------------------------------------------------------------------------


def component_log_densities(params: Params, x: torch.Tensor) -> torch.Tensor:
    """log pi_k + log N(x_n | mu_k, W_k W_k^T + sigma_k^2 I) for ``x : (N, D)``: ``(N, K)``.
    The covariance is low rank plus diagonal, so Woodbury keeps it O(N D q) per component."""
    noise = params["noise"][:, None].expand(params["locs"].shape)
    marginal = dist.LowRankMultivariateNormal(params["locs"], params["factors"], noise)
    return marginal.log_prob(x.unsqueeze(-2)) + params["weights"].log()


def log_marginal(config: MPPCAConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    """log p(x_n) in nats for every row of ``x : (N, D)``: ``(N,)``."""
    return torch.logsumexp(component_log_densities(params, x), dim=-1)


def sample(config: MPPCAConfig, params: Params, num_data: int,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral sampling: ``(x (N, D), components (N,))``."""
    locs = params["locs"]
    options = {"generator": generator, "dtype": locs.dtype, "device": locs.device}
    component = torch.multinomial(params["weights"], num_data, replacement=True,
                                  generator=generator)
    z = torch.randn(num_data, params["factors"].shape[-1], **options)
    noise = torch.randn(num_data, locs.shape[-1], **options)
    x = (locs[component] + (params["factors"][component] @ z.unsqueeze(-1)).squeeze(-1)
         + noise * params["noise"][component].sqrt().unsqueeze(-1))
    return x, component


class MPPCAStatistics(NamedTuple):
    """The E-step's statistics, sums over rows (so shards and chunks of the data add up with
    :func:`combine`): the responsibility-weighted moments of the rows per component, and the
    unweighted diagonal moments of all rows (the data's variances, for the noise floor)."""

    moments: MixtureStatistics  # counts (K,), first (K, D), second (K, D, D), about centres
    spread: MixtureStatistics  # one component of unit weights, diagonal second moments


def statistics(x: torch.Tensor, responsibilities: torch.Tensor) -> MPPCAStatistics:
    """:class:`MPPCAStatistics` of ``x : (N, D)`` under ``responsibilities : (N, K)``."""
    return MPPCAStatistics(weighted_moments(x, responsibilities, full=True),
                           weighted_moments(x, x.new_ones(x.shape[0], 1), full=False))


def combine(parts, weights=None) -> MPPCAStatistics:
    """The statistics of the union of disjoint row sets, Σ_i w_i s_i (:func:`zoo.gmm.combine`
    on each part)."""
    parts = list(parts)
    return MPPCAStatistics(combine_moments([p.moments for p in parts], weights),
                           combine_moments([p.spread for p in parts], weights))


def m_step(config: MPPCAConfig, x: torch.Tensor | None,
           stats: MPPCAStatistics | torch.Tensor) -> Params:
    """The parameters that maximize sum_nk r_nk log pi_k N(x_n | mu_k, C_k) exactly: weighted
    means, and PPCA maximum likelihood from each weighted covariance. ``stats`` are the
    E-step's :class:`MPPCAStatistics`, or responsibilities ``(N, K)`` of the rows ``x``."""
    if isinstance(stats, torch.Tensor):
        stats = statistics(x, stats)
    counts, first, second, center, _ = stats.moments
    dtype = center.dtype
    totals = counts + 10 * torch.finfo(dtype).tiny  # (K,)
    weights = totals / totals.sum()
    locs = center + first / totals[:, None]  # (K, D) the weighted means
    shift = locs - center  # the scatter about the weighted means, from the moments' centres
    cross = first[:, :, None] * shift[:, None, :]
    scatter = (second - cross - cross.transpose(1, 2)
               + counts[:, None, None] * shift[:, :, None] * shift[:, None, :])
    covariance = scatter / totals[:, None, None]  # (K, D, D)
    # float64 for the D x D eigendecompositions: small eigenvalues are the noise
    values, vectors = torch.linalg.eigh(covariance.double())
    values, vectors = values.flip(-1).clamp_min(0), vectors.flip(-1)
    q = config.latent_dim
    floor = config.min_noise * mean_variance(stats.spread).double()
    noise = values[:, q:].mean(-1).clamp_min(floor)
    factors = vectors[..., :q] * (values[:, :q] - noise[:, None]).clamp_min(0).sqrt()[:, None]
    return {"weights": weights, "locs": locs, "factors": factors.to(dtype),
            "noise": noise.to(dtype)}


def e_step(config: MPPCAConfig, params: Params, x: torch.Tensor
           ) -> tuple[MPPCAStatistics, torch.Tensor]:
    """The statistics of the responsibilities r_nk = p(c_n = k | x_n) (:class:`MPPCAStatistics`)
    and the mean log p(x) at ``params`` (nats per datapoint)."""
    joint = component_log_densities(params, x)
    log_likelihood = torch.logsumexp(joint, dim=-1)
    return statistics(x, (joint - log_likelihood[:, None]).exp()), log_likelihood.mean()


def em_init(config: MPPCAConfig, x: torch.Tensor, generator: torch.Generator,
            method: str = "kmeans++") -> Params:
    """k-means++ seeding (distinct rows, far apart), a few hard-assignment passes, then one
    M-step. Also the starting point of SVI."""
    if x.dim() != 2 or x.shape[1] != config.dim:
        raise InputError(f"data of shape {tuple(x.shape)} do not match dim={config.dim}; "
                         "build the config from the data")
    config.validate(x.shape[0])
    k = config.components
    first = torch.randint(x.shape[0], (1,), generator=generator, device=x.device)
    centres = x[first]
    for _ in range(1, k):
        distance = torch.cdist(x, centres).min(-1).values.square()
        pick = torch.multinomial(distance + torch.finfo(x.dtype).tiny, 1, generator=generator)
        centres = torch.cat([centres, x[pick]])
    for _ in range(5):
        nearest = torch.cdist(x, centres).argmin(-1)
        hard = torch.nn.functional.one_hot(nearest, k).to(x.dtype)
        centres = (hard.T @ x) / hard.sum(0).clamp_min(1)[:, None]
    responsibilities = 0.9 * hard + 0.1 / k  # soft, so no component starts empty
    return m_step(config, x, responsibilities)


def init_params(config: MPPCAConfig, x: torch.Tensor, generator: torch.Generator) -> Params:
    return em_init(config, x, generator)


# --- synthetic data: a union of subspaces -----------------------------------------------------

SYNTHETIC_CONFIG = MPPCAConfig(dim=8, components=3, latent_dim=2)


def true_params(generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
    """K=3 random 2-D subspaces of R^8 with separated centres, sigma^2 = 0.05."""
    k, d, q = (SYNTHETIC_CONFIG.components, SYNTHETIC_CONFIG.dim, SYNTHETIC_CONFIG.latent_dim)
    bases = torch.linalg.qr(torch.randn(k, d, q, generator=generator, dtype=torch.float64))[0]
    factors = bases * torch.tensor([2.0, 1.0], dtype=torch.float64)
    locs = 3.0 * torch.randn(k, d, generator=generator, dtype=torch.float64)
    params = {"weights": torch.full((k,), 1.0 / k, dtype=torch.float64), "locs": locs,
              "factors": factors, "noise": torch.full((k,), 0.05, dtype=torch.float64)}
    return {name: value.to(dtype) for name, value in params.items()}


def synthetic(num_data: int, generator: torch.Generator, dtype: torch.dtype = torch.float32):
    """``num_data`` rows near three 2-D subspaces of R^8: ``(x, components, true params)``."""
    truth = true_params(generator, dtype)
    x, component = sample(SYNTHETIC_CONFIG, truth, num_data, generator)
    return x, component, truth


SPEC = declare(
    "mppca",
    mppca_model,
    config=MPPCAConfig,
    local_sites=("component", "z"),
    summary="mixture of PPCAs: c ~ Cat(pi), z ~ N(0, I_q), x | c, z ~ N(W_c z + mu_c, "
            "sigma_c^2 I)",
    default_data="synthetic-mppca",
    log_marginal=log_marginal,
    sample=sample,
    em=EMSteps(init=em_init, e_step=e_step, m_step=m_step, init_methods=("kmeans++",),
               combine=combine),
    init_params=init_params,
    synthetic=synthetic,
    svi_defaults={"steps": 8000, "lr": 0.02},  # a cap: the schedule ends sooner
    notes="a worked example of zoo.declare; exact log p(x) and EM; the generic guides "
          "enumerate the component (TraceEnum_ELBO)",
)

__all__ = ["MPPCAConfig", "MPPCAStatistics", "combine", "e_step", "em_init", "log_marginal",
           "m_step", "mppca_model", "sample", "statistics", "synthetic", "true_params"]
