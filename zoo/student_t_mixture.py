"""Mixture of multivariate Student-t distributions: a Gaussian mixture robust to outliers.

    c_n ~ Categorical(pi),  u_n ~ Gamma(nu/2, nu/2),  x_n | c_n = k, u_n ~ N(mu_k, Sigma_k / u_n)
    so  p(x_n) = sum_k pi_k t_nu(x_n | mu_k, Sigma_k),   n = 1..N,  nu > 0 degrees of freedom

The per-row precision scale u_n is what makes it robust: a row far from every component gets
a small u_n, a broad Gaussian of its own, and barely moves the means (Peel & McLachlan, 2000).
As nu grows the t becomes Gaussian and the model becomes the Gaussian mixture, which an outlier
drags: ``tests/zoo/test_examples.py`` shows both on the same data.

A worked example of :func:`zoo.declare`, with two local latent sites: the component (discrete,
enumerated by the generic guides with ``TraceEnum_ELBO``) and the precision scale u (positive:
the guides work in log space). The closed forms are the exact log p(x) and EM for fixed nu.

Parameters (the ``pyro.param`` names, constrained values)::

    {"weights": (K,) pi,  "locs": (K, D) mu_k,  "scale_trils": (K, D, D) Cholesky of Sigma_k}

EM (nu fixed) with both c and u latent: the E-step gives the responsibilities r_nk and the
expected precisions w_nk = (nu + D) / (nu + delta_nk), delta_nk the Mahalanobis distance of
x_n to component k; the M-step gives pi_k = mean_n r_nk, mu_k = sum r w x / sum r w and
Sigma_k = sum r w (x - mu_k)(x - mu_k)^T / sum r.
"""

from __future__ import annotations

import math
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
from zoo.seeding import own_random_stream


@dataclass(frozen=True)
class StudentTMixtureConfig:
    """K Student-t components with full scale matrices and a shared, fixed nu."""

    dim: int = field(default=2, metadata={"cli": False})  # D, filled in from the data
    # K, the number of components
    components: int = field(default=2, metadata={"help": "number of components K"})
    # nu: small is heavy-tailed and robust; large approaches the Gaussian mixture
    df: float = field(default=4.0, metadata={
        "help": "degrees of freedom nu of every component (> 0; large: Gaussian)"})
    # added to every covariance's diagonal, relative to the data's mean variance
    reg_covar: float = field(default=1e-6, metadata={
        "help": "added to the covariance diagonals, as a fraction of the data's mean variance"})

    def validate(self, num_data: int) -> None:
        if self.components < 1:
            raise InputError(f"--components {self.components} must be at least 1")
        if self.components > num_data:
            raise InputError(f"--components {self.components} exceeds the {num_data} rows; use "
                             f"at most {num_data}")
        if not (self.df > 0 and math.isfinite(self.df)):
            raise InputError(f"--df {self.df} must be a finite number > 0")
        if not self.reg_covar >= 0:
            raise InputError(f"--reg-covar {self.reg_covar} must be >= 0")


# --- the Pyro model ---------------------------------------------------------------------------


def _default_params(config: StudentTMixtureConfig, like: torch.Tensor) -> Params:
    k, d = config.components, config.dim
    spread = torch.linspace(-1.0, 1.0, k, dtype=like.dtype, device=like.device)
    eye = torch.eye(d, dtype=like.dtype, device=like.device)
    return {"weights": like.new_full((k,), 1.0 / k), "locs": spread[:, None] * like.new_ones(d),
            "scale_trils": eye.expand(k, d, d).clone()}


def student_t_mixture_model(x=None, *, num_data=None, subsample_size=None,
                            config: StudentTMixtureConfig):
    """The Student-t mixture as a scale mixture of Gaussians, ``x : (N, D)`` or ``None``."""
    like = x if x is not None else torch.zeros(())
    start = _default_params(config, like)
    weights = pyro.param("weights", lambda: start["weights"], constraint=constraints.simplex)
    locs = pyro.param("locs", lambda: start["locs"])
    scale_trils = pyro.param("scale_trils", lambda: start["scale_trils"],
                             constraint=constraints.lower_cholesky)
    half_df = like.new_tensor(config.df / 2)
    size = x.shape[0] if x is not None else num_data
    with pyro.plate(DATA_PLATE, size, subsample_size=subsample_size, device=like.device) as rows:
        component = pyro.sample("component", dist.Categorical(weights))
        precision = pyro.sample("precision", dist.Gamma(half_df, half_df))
        # component and precision may carry enumeration or particle dimensions on the left;
        # a guide's draw of u can underflow to 0, whose rsqrt would put inf in the factor
        floor = torch.finfo(precision.dtype).tiny
        scale_tril = scale_trils[component] * precision.clamp_min(floor).rsqrt()[..., None, None]
        return pyro.sample("x", dist.MultivariateNormal(locs[component], scale_tril=scale_tril),
                           obs=None if x is None else x[rows])


# --- closed forms -------------------------------------------------------------------------------


def _components(config: StudentTMixtureConfig, params: Params) -> dist.MultivariateStudentT:
    df = params["locs"].new_tensor(config.df)
    return dist.MultivariateStudentT(df, params["locs"], params["scale_trils"])


def component_log_densities(config: StudentTMixtureConfig, params: Params,
                            x: torch.Tensor) -> torch.Tensor:
    """log pi_k + log t_nu(x_n | mu_k, Sigma_k) for ``x : (N, D)``: ``(N, K)``."""
    return _components(config, params).log_prob(x.unsqueeze(-2)) + params["weights"].log()


def log_marginal(config: StudentTMixtureConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    """log p(x_n) in nats for every row of ``x : (N, D)``: ``(N,)``."""
    return torch.logsumexp(component_log_densities(config, params, x), dim=-1)


def sample(config: StudentTMixtureConfig, params: Params, num_data: int,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral sampling: ``(x (N, D), components (N,))``."""
    locs = params["locs"]
    options = {"dtype": locs.dtype, "device": locs.device}
    component = torch.multinomial(params["weights"], num_data, replacement=True,
                                  generator=generator)
    # torch's Gamma sampler takes no generator: seed a forked stream from it instead
    seed = int(torch.randint(2**62, (), generator=generator, device=locs.device))
    with own_random_stream(seed, locs.device):
        half_df = locs.new_tensor(config.df / 2)
        precision = dist.Gamma(half_df, half_df).sample((num_data,))
    noise = torch.randn(num_data, locs.shape[-1], 1, generator=generator, **options)
    x = locs[component] + (params["scale_trils"][component] @ noise).squeeze(-1) \
        * precision.rsqrt()[:, None]
    return x, component


class StudentTStatistics(NamedTuple):
    """The E-step's statistics, sums over rows (shards and chunks add up with :func:`combine`):
    the moments of the rows weighted by r_nk u_nk (responsibility times expected precision),
    the counts Σ_n r_nk, and the unweighted diagonal moments of all rows (the floor)."""

    moments: MixtureStatistics  # weights r u: counts (K,), first (K, D), second (K, D, D)
    counts: torch.Tensor  # (K,) Σ_n r_nk
    spread: MixtureStatistics  # one component of unit weights, diagonal second moments


def statistics(x: torch.Tensor, responsibilities: torch.Tensor,
               precisions: torch.Tensor) -> StudentTStatistics:
    """:class:`StudentTStatistics` of ``x : (N, D)`` given ``responsibilities`` and expected
    ``precisions``, both ``(N, K)``."""
    return StudentTStatistics(weighted_moments(x, responsibilities * precisions, full=True),
                              responsibilities.sum(0),
                              weighted_moments(x, x.new_ones(x.shape[0], 1), full=False))


def combine(parts, weights=None) -> StudentTStatistics:
    """The statistics of the union of disjoint row sets, Σ_i w_i s_i."""
    parts = list(parts)
    scale = [1.0] * len(parts) if weights is None else [float(w) for w in weights]
    return StudentTStatistics(
        combine_moments([p.moments for p in parts], weights),
        sum(w * p.counts for w, p in zip(scale, parts, strict=True)),
        combine_moments([p.spread for p in parts], weights))


def e_step(config: StudentTMixtureConfig, params: Params, x: torch.Tensor
           ) -> tuple[StudentTStatistics, torch.Tensor]:
    """The statistics of the responsibilities and expected precisions
    (:class:`StudentTStatistics`) and the mean log p(x)."""
    joint = component_log_densities(config, params, x)
    log_likelihood = torch.logsumexp(joint, dim=-1)
    responsibilities = (joint - log_likelihood[:, None]).exp()
    centred = x.unsqueeze(-2) - params["locs"]  # (N, K, D)
    solved = torch.linalg.solve_triangular(params["scale_trils"],
                                           centred.unsqueeze(-1), upper=False)
    mahalanobis = solved.squeeze(-1).square().sum(-1)  # (N, K)
    precisions = (config.df + x.shape[-1]) / (config.df + mahalanobis)
    return statistics(x, responsibilities, precisions), log_likelihood.mean()


def m_step(config: StudentTMixtureConfig, x: torch.Tensor | None,
           stats: StudentTStatistics | tuple[torch.Tensor, torch.Tensor]) -> Params:
    """pi, mu and Sigma maximizing the expected complete-data log-likelihood (nu fixed).
    ``stats`` are the E-step's :class:`StudentTStatistics`, or ``(responsibilities,
    precisions)`` of the rows ``x``."""
    if not isinstance(stats, StudentTStatistics):
        stats = statistics(x, *stats)
    weighted, first, second, center, _ = stats.moments
    dtype = center.dtype
    tiny = 10 * torch.finfo(dtype).tiny
    counts = stats.counts + tiny  # (K,)
    locs = center + first / (weighted + tiny)[:, None]  # Σ r u x / Σ r u
    shift = locs - center
    cross = first[:, :, None] * shift[:, None, :]
    scatter = (second - cross - cross.transpose(1, 2)
               + weighted[:, None, None] * shift[:, :, None] * shift[:, None, :])
    covariance = scatter / counts[:, None, None]
    floor = config.reg_covar * mean_variance(stats.spread) + tiny
    eye = torch.eye(center.shape[-1], dtype=dtype, device=center.device)
    scale_trils = torch.linalg.cholesky(covariance + floor * eye)
    return {"weights": counts / counts.sum(), "locs": locs, "scale_trils": scale_trils}


def em_init(config: StudentTMixtureConfig, x: torch.Tensor, generator: torch.Generator,
            method: str = "kmeans++") -> Params:
    """k-means++ seeding among the 90% of rows nearest the median (an outlier makes a poor
    seed), a few k-means passes on those rows, then one M-step on all rows with unit
    precisions. Also the starting point of SVI."""
    if x.dim() != 2 or x.shape[1] != config.dim:
        raise InputError(f"data of shape {tuple(x.shape)} do not match dim={config.dim}; "
                         "build the config from the data")
    config.validate(x.shape[0])
    k = config.components
    spread = (x - x.median(0).values).norm(dim=-1)
    core = x[spread <= spread.quantile(0.9)] if x.shape[0] >= 10 * k else x
    centres = core[torch.randint(core.shape[0], (1,), generator=generator, device=x.device)]
    for _ in range(1, k):
        distance = torch.cdist(core, centres).min(-1).values.square()
        pick = torch.multinomial(distance + torch.finfo(x.dtype).tiny, 1, generator=generator)
        centres = torch.cat([centres, core[pick]])
    for _ in range(10):
        hard = torch.nn.functional.one_hot(torch.cdist(core, centres).argmin(-1), k).to(x.dtype)
        centres = (hard.T @ core) / hard.sum(0).clamp_min(1)[:, None]
    hard = torch.nn.functional.one_hot(torch.cdist(x, centres).argmin(-1), k).to(x.dtype)
    responsibilities = 0.9 * hard + 0.1 / k
    return m_step(config, x, (responsibilities, torch.ones_like(responsibilities)))


def init_params(config: StudentTMixtureConfig, x: torch.Tensor,
                generator: torch.Generator) -> Params:
    return em_init(config, x, generator)


# --- synthetic data ---------------------------------------------------------------------------

SYNTHETIC_CONFIG = StudentTMixtureConfig(dim=2, components=2, df=3.0)


def true_params(dtype: torch.dtype = torch.float32) -> Params:
    """Two heavy-tailed clusters in the plane, at (-3, 0) and (3, 1)."""
    locs = torch.tensor([[-3.0, 0.0], [3.0, 1.0]], dtype=dtype)
    scale_trils = torch.tensor([[[1.0, 0.0], [0.5, 0.8]], [[0.7, 0.0], [-0.3, 1.0]]],
                               dtype=dtype)
    return {"weights": torch.tensor([0.5, 0.5], dtype=dtype), "locs": locs,
            "scale_trils": scale_trils}


def synthetic(num_data: int, generator: torch.Generator, dtype: torch.dtype = torch.float32):
    """``num_data`` draws from two Student-t clusters (nu = 3): ``(x, components, truth)``."""
    truth = true_params(dtype)
    x, component = sample(SYNTHETIC_CONFIG, truth, num_data, generator)
    return x, component, truth


SPEC = declare(
    "student-t-mixture",
    student_t_mixture_model,
    config=StudentTMixtureConfig,
    local_sites=("component", "precision"),
    summary="Student-t mixture: c ~ Cat(pi), u ~ Gamma(nu/2, nu/2), x | c, u ~ N(mu_c, "
            "Sigma_c / u)",
    default_data="old-faithful",
    log_marginal=log_marginal,
    sample=sample,
    em=EMSteps(init=em_init, e_step=e_step, m_step=m_step, init_methods=("kmeans++",),
               combine=combine),
    init_params=init_params,
    synthetic=synthetic,
    svi_defaults={"steps": 5000, "lr": 0.02},  # a cap: the schedule ends sooner
    notes="a worked example of zoo.declare, robust to outliers; exact log p(x) and EM (nu "
          "fixed); the generic guides enumerate the component (TraceEnum_ELBO)",
)

__all__ = ["StudentTMixtureConfig", "StudentTStatistics", "combine", "e_step", "em_init",
           "log_marginal", "m_step", "sample", "student_t_mixture_model", "synthetic",
           "true_params"]
