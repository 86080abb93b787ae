"""Bayesian PPCA with automatic relevance determination (Bishop 1999, "Variational principal
components"), fitted by coordinate-ascent variational inference with the whole ELBO.

The generative process, for rows x_n ∈ R^D and q latent columns (default q = D - 1)::

    α_i ~ Gamma(a_α, b_α)               i = 1..q   (ARD precision of column i of W)
    W[:, i] ~ N(0, α_i⁻¹ I_D)
    μ ~ N(0, β⁻¹ I_D)
    τ ~ Gamma(a_τ, b_τ)                            (noise precision)
    z_n ~ N(0, I_q),   x_n ~ N(W z_n + μ, τ⁻¹ I_D)  n = 1..N

Gamma(a, b) has rate b. The mean-field family is q(Z) q(W) q(α) q(τ) q(μ); each factor's
optimum given the others is closed form (:func:`update_z` ... :func:`update_tau`) and lies in
the family :class:`Posterior` spans: q(z_n) = N(m_n, Σ_z) (one Σ_z for every row), the rows of W
independent N(M_k, Σ_W) (one Σ_W), q(α_i) and q(τ) Gamma, q(μ) = N(m_μ, σ²_μ I). A sweep updates
the blocks in that order, each maximizing the ELBO over its block, so the ELBO
(:func:`elbo`, every constant kept, in nats) never decreases.

The columns whose α_i grows large are switched off (their E‖w_i‖² falls to ~0): the effective
dimension (:func:`effective_dimension`) is the number of columns that keep a share of
Σ_i E‖w_i‖² above ``prune_ratio``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch

from zoo.errors import InputError
from zoo.registry import CONJUGATE_UPDATES, DATA_PLATE, ModelSpec, Params, register

INIT_METHODS = ("pca", "random")
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class BayesianPPCAConfig:
    """The latent size and the (broad, Bishop's) priors of Bayesian PPCA with ARD."""

    dim: int = field(default=2, metadata={"cli": False, "help": "observation dimension D"})
    latent_dim: int | None = field(default=None, metadata={
        "help": "latent columns q before ARD prunes them (default D - 1)", "min": 1})
    ard_concentration: float = field(default=1e-3, metadata={
        "help": "shape a of each column precision's Gamma(a, b) prior", "positive": True})
    ard_rate: float = field(default=1e-3, metadata={
        "help": "rate b of each column precision's Gamma(a, b) prior", "positive": True})
    noise_concentration: float = field(default=1e-3, metadata={
        "help": "shape of the noise precision's Gamma prior", "positive": True})
    noise_rate: float = field(default=1e-3, metadata={
        "help": "rate of the noise precision's Gamma prior", "positive": True})
    mean_precision: float = field(default=1e-3, metadata={
        "help": "precision β of the mean's N(0, 1/β) prior", "positive": True})
    prune_ratio: float = field(default=1e-3, metadata={
        "help": "a column counts in the effective dimension while its share of "
                "Σ E|w_i|² exceeds this", "positive": True})

    def __post_init__(self):
        self.validate()

    @property
    def q(self) -> int:
        return self.latent_dim if self.latent_dim is not None else max(1, self.dim - 1)

    def validate(self, num_data: int | None = None) -> None:
        """Raise :class:`InputError` naming the bad input and its fix; ``num_data`` = N."""
        if self.dim < 1:
            raise InputError(f"dim={self.dim} must be at least 1")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise InputError(f"latent_dim={self.latent_dim} must be at least 1")
        for name in ("ard_concentration", "ard_rate", "noise_concentration", "noise_rate",
                     "mean_precision", "prune_ratio"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise InputError(f"{name}={value} must be a finite positive number; "
                                 "use e.g. 1e-3")
        if num_data is not None and num_data < 2:
            raise InputError(f"Bayesian PPCA needs at least 2 rows, got {num_data}")


class Posterior(NamedTuple):
    """The mean-field q: q(z_n) = N(z_mean[n], z_cov); rows of W ~ N(w_mean[k], w_cov);
    q(α_i) = Gamma(alpha_concentration, alpha_rate[i]); q(τ) = Gamma(tau_concentration,
    tau_rate); q(μ) = N(mu_mean, mu_var I)."""

    z_mean: torch.Tensor  # (N, q)
    z_cov: torch.Tensor  # (q, q)
    w_mean: torch.Tensor  # (D, q)
    w_cov: torch.Tensor  # (q, q)
    alpha_concentration: torch.Tensor  # (q,)
    alpha_rate: torch.Tensor  # (q,)
    tau_concentration: torch.Tensor  # ()
    tau_rate: torch.Tensor  # ()
    mu_mean: torch.Tensor  # (D,)
    mu_var: torch.Tensor  # ()


def _check_data(config: BayesianPPCAConfig, x: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape[1] != config.dim:
        raise InputError(f"x must be (N, {config.dim}), got {tuple(x.shape)}")
    config.validate(x.shape[0])


def _expected_wtw(post: Posterior) -> torch.Tensor:
    d = post.w_mean.shape[0]
    return post.w_mean.T @ post.w_mean + d * post.w_cov


def _expected_column_norms(post: Posterior) -> torch.Tensor:
    """E‖w_i‖² for each column i, (q,)."""
    d = post.w_mean.shape[0]
    return (post.w_mean ** 2).sum(0) + d * torch.diagonal(post.w_cov)


def _tau(post: Posterior) -> torch.Tensor:
    return post.tau_concentration / post.tau_rate


def _squared_residuals(x: torch.Tensor, post: Posterior) -> torch.Tensor:
    """Σ_n E‖x_n - W z_n - μ‖² under q, a 0-d tensor: the squared residuals at q's means plus
    the spread of W z_n and μ (no cancellation between large terms: float32 keeps it)."""
    n, d = x.shape
    residual = x - post.z_mean @ post.w_mean.T - post.mu_mean
    zz = post.z_mean.T @ post.z_mean + n * post.z_cov  # Σ_n E[z_n z_nᵀ]
    return ((residual ** 2).sum() + n * (post.w_mean.T @ post.w_mean * post.z_cov).sum()
            + d * (post.w_cov * zz).sum() + n * d * post.mu_var)


def update_z(config, x, post: Posterior) -> Posterior:
    tau = _tau(post)
    q = post.w_mean.shape[1]
    eye = torch.eye(q, dtype=x.dtype, device=x.device)
    z_cov = torch.linalg.inv(eye + tau * _expected_wtw(post))
    z_cov = (z_cov + z_cov.T) / 2
    z_mean = tau * (x - post.mu_mean) @ post.w_mean @ z_cov
    return post._replace(z_mean=z_mean, z_cov=z_cov)


def update_mu(config, x, post: Posterior) -> Posterior:
    n = x.shape[0]
    tau = _tau(post)
    mu_var = 1.0 / (config.mean_precision + n * tau)
    mu_mean = tau * mu_var * (x - post.z_mean @ post.w_mean.T).sum(0)
    return post._replace(mu_mean=mu_mean, mu_var=mu_var)


def update_w(config, x, post: Posterior) -> Posterior:
    n = x.shape[0]
    tau = _tau(post)
    zz = post.z_mean.T @ post.z_mean + n * post.z_cov
    precision = torch.diag(post.alpha_concentration / post.alpha_rate) + tau * zz
    w_cov = torch.linalg.inv(precision)
    w_cov = (w_cov + w_cov.T) / 2
    w_mean = tau * (x - post.mu_mean).T @ post.z_mean @ w_cov
    return post._replace(w_mean=w_mean, w_cov=w_cov)


def update_alpha(config, x, post: Posterior) -> Posterior:
    d = x.shape[1]
    a = post.alpha_rate.new_tensor(config.ard_concentration + d / 2)
    rate = config.ard_rate + _expected_column_norms(post) / 2
    return post._replace(alpha_concentration=a.expand_as(rate).clone(), alpha_rate=rate)


def update_tau(config, x, post: Posterior) -> Posterior:
    n, d = x.shape
    c = x.new_tensor(config.noise_concentration + n * d / 2)
    rate = config.noise_rate + _squared_residuals(x, post) / 2
    return post._replace(tau_concentration=c, tau_rate=rate)


UPDATES = (("z", update_z), ("mu", update_mu), ("w", update_w), ("alpha", update_alpha),
           ("tau", update_tau))


def _gamma_log_prior(a0: float, b0: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E_q[log Gamma(λ | a0, b0)] under q(λ) = Gamma(a, b)."""
    e_log = torch.digamma(a) - torch.log(b)
    return a0 * math.log(b0) - math.lgamma(a0) + (a0 - 1) * e_log - b0 * a / b


def _gamma_entropy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a - torch.log(b) + torch.lgamma(a) + (1 - a) * torch.digamma(a)


def elbo(config: BayesianPPCAConfig, x: torch.Tensor, post: Posterior) -> torch.Tensor:
    """The whole ELBO E_q[log p(X, Z, W, α, τ, μ)] + H[q], every constant kept, in nats."""
    n, d = x.shape
    q = post.w_mean.shape[1]
    a, b = post.tau_concentration, post.tau_rate
    e_log_tau = torch.digamma(a) - torch.log(b)
    likelihood = n * d / 2 * (e_log_tau - LOG_2PI) - a / b / 2 * _squared_residuals(x, post)
    z_prior = -n * q / 2 * LOG_2PI - ((post.z_mean ** 2).sum() + n * torch.trace(post.z_cov)) / 2
    z_entropy = n / 2 * (q * (LOG_2PI + 1) + torch.logdet(post.z_cov))
    alpha_mean = post.alpha_concentration / post.alpha_rate
    e_log_alpha = torch.digamma(post.alpha_concentration) - torch.log(post.alpha_rate)
    w_prior = (d / 2 * (e_log_alpha - LOG_2PI) - alpha_mean / 2
               * _expected_column_norms(post)).sum()
    w_entropy = d / 2 * (q * (LOG_2PI + 1) + torch.logdet(post.w_cov))
    alpha_terms = (_gamma_log_prior(config.ard_concentration, config.ard_rate,
                                    post.alpha_concentration, post.alpha_rate)
                   + _gamma_entropy(post.alpha_concentration, post.alpha_rate)).sum()
    tau_terms = (_gamma_log_prior(config.noise_concentration, config.noise_rate, a, b)
                 + _gamma_entropy(a, b))
    beta = config.mean_precision
    mu_prior = d / 2 * (math.log(beta) - LOG_2PI) - beta / 2 * (
        post.mu_mean @ post.mu_mean + d * post.mu_var)
    mu_entropy = d / 2 * (LOG_2PI + 1 + torch.log(post.mu_var))
    return (likelihood + z_prior + z_entropy + w_prior + w_entropy + alpha_terms + tau_terms
            + mu_prior + mu_entropy)


def initial_posterior(config: BayesianPPCAConfig, x: torch.Tensor,
                      generator: torch.Generator | None, method: str) -> Posterior:
    """A start of every block: ``pca`` (W from the top q principal axes, scaled like maximum
    likelihood PPCA's) or ``random`` (W drawn N(0, s²) with s² the data's mean variance);
    q(Z) is then its update, q(τ) from the residual, q(α) from the columns."""
    _check_data(config, x)
    n, d = x.shape
    q = config.q
    like = dict(dtype=x.dtype, device=x.device)
    centered = x - x.mean(0)
    if method == "pca":
        _, s, vh = torch.linalg.svd(centered, full_matrices=False)
        variances = s ** 2 / n
        k = min(q, vh.shape[0])
        w = torch.zeros(d, q, **like)
        w[:, :k] = vh[:k].T * variances[:k].clamp_min(1e-12).sqrt()
    elif method == "random":
        scale = centered.pow(2).mean().sqrt()
        w = torch.randn(d, q, generator=generator, **like) * scale
    else:
        raise InputError(f"--init {method!r} is not one of: " + ", ".join(INIT_METHODS))
    eye = torch.eye(q, **like)
    variance = centered.pow(2).mean().clamp_min(1e-12)
    post = Posterior(
        z_mean=torch.zeros(n, q, **like), z_cov=eye.clone(), w_mean=w, w_cov=eye * 1e-3,
        alpha_concentration=torch.ones(q, **like), alpha_rate=torch.ones(q, **like),
        tau_concentration=torch.ones((), **like), tau_rate=variance.clone(),
        mu_mean=x.mean(0), mu_var=torch.tensor(1.0 / n, **like))
    post = update_z(config, x, post)
    post = update_alpha(config, x, post)
    return update_tau(config, x, post)


def effective_dimension(config: BayesianPPCAConfig, post: Posterior) -> int:
    """The number of columns whose share of Σ_i E‖w_i‖² exceeds ``config.prune_ratio``."""
    norms = _expected_column_norms(post)
    return int((norms > config.prune_ratio * norms.sum()).sum())


PARAM_NAMES = tuple(f"q_{name}" for name in Posterior._fields if not name.startswith("z_"))


def to_params(config: BayesianPPCAConfig, post: Posterior) -> Params:
    """The guide's ``pyro.param`` values of q over the global latents (q(Z) is each row's
    update given them, so it has no parameters): ``q_``-prefixed fields."""
    return {f"q_{name}": getattr(post, name) for name in Posterior._fields
            if not name.startswith("z_")}


def from_params(config: BayesianPPCAConfig, params: Params, x: torch.Tensor) -> Posterior:
    """The :class:`Posterior` of :func:`to_params`' dict, q(Z) its update on ``x``."""
    values = {name: params[f"q_{name}"] for name in Posterior._fields if not name.startswith("z_")}
    q = values["w_mean"].shape[1]
    post = Posterior(z_mean=x.new_zeros(x.shape[0], q), z_cov=x.new_zeros(q, q), **values)
    return update_z(config, x, post)


def summary(config: BayesianPPCAConfig, post: Posterior) -> dict:
    """What the fit says: the effective dimension, E[α_i], E[τ] (floats / lists)."""
    alpha = (post.alpha_concentration / post.alpha_rate).tolist()
    return {"effective_dimension": effective_dimension(config, post), "ard_precisions": alpha,
            "noise_precision": float(_tau(post))}


@dataclass(frozen=True)
class BlockCoordinateAscent:
    """What the ``cavi`` strategy needs of a conjugate model whose every block is updated in
    turn (the capability :data:`zoo.registry.CONJUGATE_UPDATES`): a start of q, the block
    updates of one sweep in order, the whole ELBO, q as the guide's parameters and a summary
    of the fit for the record."""

    initial: object  # (config, x, generator, method) -> posterior
    updates: tuple  # ((name, (config, x, posterior) -> posterior), ...) one sweep, in order
    elbo: object  # (config, x, posterior) -> 0-d tensor, nats
    to_params: object  # (config, posterior) -> the guide's parameters
    summary: object  # (config, posterior) -> dict for the fit's info
    guide: str
    init_methods: tuple[str, ...] = INIT_METHODS


BLOCK_COORDINATE_ASCENT = BlockCoordinateAscent(
    initial=initial_posterior, updates=UPDATES, elbo=elbo, to_params=to_params,
    summary=summary, guide="mean-field")


# ---------------------------------------------------------------------------------------------
# The Pyro model
# ---------------------------------------------------------------------------------------------


class BayesianPPCAModel:
    """The generative process of the module docstring as a Pyro model, the zoo's signature.
    Global sites ``alpha`` (q,), ``w`` (D, q), ``mu`` (D,), ``tau`` (); in plate ``data``
    ``z`` (q,) and ``x`` (D,). Every site broadcasts over leading particle dimensions."""

    def __init__(self, config: BayesianPPCAConfig):
        self.config = config

    def __call__(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                 subsample_size: int | None = None) -> torch.Tensor:
        config = self.config
        if x is None and num_data is None:
            raise InputError("Bayesian PPCA needs data x or a number of rows num_data")
        if x is not None:
            _check_data(config, x)
        like = x if x is not None else torch.zeros(())
        d, q = config.dim, config.q
        new = like.new_tensor
        alpha = pyro.sample("alpha", dist.Gamma(new(config.ard_concentration),
                                                new(config.ard_rate)).expand([q]).to_event(1))
        w = pyro.sample("w", dist.Normal(new(0.0), alpha.rsqrt().unsqueeze(-2).expand(
            *alpha.shape[:-1], d, q)).to_event(2))
        mu = pyro.sample("mu", dist.Normal(new(0.0), new(config.mean_precision).rsqrt())
                         .expand([d]).to_event(1))
        tau = pyro.sample("tau", dist.Gamma(new(config.noise_concentration),
                                            new(config.noise_rate)))
        size = x.shape[0] if x is not None else num_data
        with pyro.plate(DATA_PLATE, size, subsample_size=subsample_size,
                        device=like.device) as index:
            z = pyro.sample("z", dist.Normal(new(0.0), new(1.0)).expand([q]).to_event(1))
            # W's batch dims (particles) line up with z's left of the row dim
            loc = (w @ z.unsqueeze(-1)).squeeze(-1) + mu
            scale = tau.rsqrt()[..., None].expand_as(loc)
            return pyro.sample("x", dist.Normal(loc, scale).to_event(1),
                               obs=None if x is None else x[index])


def make_model(config: BayesianPPCAConfig, params: Params | None = None) -> BayesianPPCAModel:
    """The Pyro model for ``config`` (no ``pyro.param`` sites: ``params`` is unused)."""
    return BayesianPPCAModel(config)


SPEC = register(ModelSpec(
    name="bayesian-ppca",
    summary="Bayesian PPCA with ARD (Bishop 1999): Gamma column precisions prune W's columns; "
            "fitted by CAVI with the whole ELBO",
    config_class=BayesianPPCAConfig,
    make_model=make_model,
    default_data="old-faithful",
    local_sites=("z",),
    global_sites=("alpha", "w", "mu", "tau"),
    notes="the effective dimension is read off the fit (ARD); CAVI's ELBO keeps every constant",
    capabilities={CONJUGATE_UPDATES: BLOCK_COORDINATE_ASCENT},
    # maximum-likelihood PPCA (closed form, EM) with as many columns, no ARD, beside it
    baselines={"ppca": lambda config: {"latent_dim": max(1, min(config.q, config.dim - 1))}},
))

__all__ = [
    "BLOCK_COORDINATE_ASCENT", "INIT_METHODS", "PARAM_NAMES", "SPEC", "UPDATES",
    "BayesianPPCAConfig", "BayesianPPCAModel", "BlockCoordinateAscent", "Posterior",
    "effective_dimension", "elbo", "from_params", "initial_posterior", "make_model", "summary",
    "to_params", "update_alpha", "update_mu", "update_tau", "update_w", "update_z",
]
