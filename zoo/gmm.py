r"""Gaussian mixture model: K Gaussian clusters, and which one made each datapoint.

    z_n ~ Categorical(λ),            λ = weights on the simplex,            n = 1..N
    x_n | z_n = k ~ N(μ_k, S_k),      S_k = L_k L_kᵀ (full), L Lᵀ (tied), diag(σ_k²) or σ_k² I
    p(x) = Σ_k λ_k N(x | μ_k, S_k)

The global parameters travel in ONE representation, a dict keyed by the model's ``pyro.param``
names (K components, D dimensions):

    "weights"     (K,)        mixing proportions λ, on the simplex
    "means"       (K, D)      component means μ_k
    "scale_tril"  (K, D, D)   covariance_type="full": lower Cholesky factor L_k of S_k;
                              "tied": K equal copies of the one shared factor L (EM's M-step
                              pools the scatter; the Pyro model uses their mean, so that
                              under SVI equal copies get equal gradients and stay equal)
    "scale"       (K, D)      covariance_type="diag": standard deviations σ_kd
    "scale"       (K,)        covariance_type="spherical": one standard deviation σ_k

Beside the Pyro model sit its closed forms, the oracles everything else is checked against: the
exact ``log_marginal`` (Cholesky and logsumexp, float32-safe), the ``responsibilities``
p(z | x), the ``posterior`` and the ``elbo`` of any categorical q(z), ancestral ``sample``, and
``log_prior`` for MAP estimation by SVI. EM's numerics (sufficient statistics, the M-step, the
fast E-steps) live in :mod:`zoo.gmm_em`, its k-means++ / Lloyd starts in :mod:`zoo.gmm_init`
and the config's checks in :mod:`zoo.gmm_config`; this module re-exports them all, so that the
whole family is importable from here. Log-likelihoods are in nats (per datapoint where averaged).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from zoo.errors import InputError
from zoo.gmm_config import (
    COVARIANCE_TYPES,
    FULL_MATRICES,
    SCALE_NAME,
    GMMConfig,
    _check_data,
    _check_params,
    check_components,
)
from zoo.gmm_em import (
    BLOCK_VALUES,
    FEATURE_VALUES,
    QUADRATIC_ERROR,
    MixtureStatistics,
    SingularCovarianceError,
    _e_step_whitened,  # noqa: F401 - the tests of the E-step routes reach it here
    _log_joint_blocks,
    _normalize,
    _prepare,
    _quadratic_features,  # noqa: F401 - the tests of the E-step routes reach it here
    _quadratic_weights,  # noqa: F401 - the tests of the E-step routes reach it here
    combine,
    e_step,
    from_labels,
    label_statistics,
    m_step,
    maximize,
    mean_log_likelihood,
    row_log_likelihoods,
    sufficient_statistics,
    weighted_moments,
)
from zoo.gmm_init import (
    INIT_METHODS,
    START_ROWS,
    START_ROWS_PER_COMPONENT,
    LloydResult,
    _em_initialize,
    _em_initialize_rows,
    init_params,
    initialize,
    kmeans_plus_plus,
    lloyd,
    nearest_centers,
    squared_distances,
    start_rows,
    start_sample,
)
from zoo.registry import DATA_PLATE, EMSteps, ModelSpec, Params, register

# ---------------------------------------------------------------------------------------------
# Exact log-likelihood and responsibilities
# ---------------------------------------------------------------------------------------------


def log_joint(config: GMMConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``log λ_k + log N(x_n | μ_k, S_k)`` for ``x : (N, D)``, shape ``(N, K)``, nats."""
    parts = _prepare(config, params, x)
    return torch.cat([block for *_, block in _log_joint_blocks(config, parts, x)], 1).T


def log_marginal(config: GMMConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Exact ``log p(x_n)`` for ``x : (N, D)``, shape ``(N,)``, in nats: by the compiled
    E-step kernel for float32 rows on a CPU where it runs and its error bound holds
    (:func:`zoo.gmm_em.row_log_likelihoods`), else by whitened row blocks."""
    rows = row_log_likelihoods(config, params, x)
    if rows is not None:
        return rows.to(x.dtype)
    parts = _prepare(config, params, x)
    return torch.cat([_normalize(block)[0] for *_, block in _log_joint_blocks(config, parts, x)])


def log_responsibilities(config: GMMConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``log p(z_n = k | x_n)``, shape ``(N, K)``; each row's exponentials sum to one."""
    joint = log_joint(config, params, x)
    return joint - torch.logsumexp(joint, dim=1, keepdim=True)


def responsibilities(config: GMMConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    """The exact posterior ``p(z_n = k | x_n)``, shape ``(N, K)``."""
    return log_responsibilities(config, params, x).exp()


def posterior(config: GMMConfig, params: Params, x: torch.Tensor) -> dist.Categorical:
    """``p(z | x)`` as a batch of N categorical distributions over the K components."""
    return dist.Categorical(logits=log_responsibilities(config, params, x))


def elbo(config: GMMConfig, params: Params, x: torch.Tensor,
         logits: torch.Tensor) -> torch.Tensor:
    """The exact ELBO ``E_q[log p(x_n, z) - log q(z)]`` of ``q(z_n) = softmax(logits_n)``,
    shape ``(N,)``, nats; ``log_marginal - elbo = KL(q || p(z | x)) >= 0``."""
    log_q = torch.log_softmax(logits, dim=-1)
    terms = log_q.exp() * (log_joint(config, params, x) - log_q)
    return torch.where(log_q.exp() > 0, terms, torch.zeros_like(terms)).sum(-1)


# ---------------------------------------------------------------------------------------------
# Sampling and data
# ---------------------------------------------------------------------------------------------


def sample(config: GMMConfig, params: Params, n: int,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral sampling: ``z ~ Categorical(λ)``, then ``x ~ N(μ_z, S_z)``.

    Returns ``(x : (n, D), z : (n,))`` on the parameters' device and dtype.
    """
    _check_params(config, params)
    means = params["means"]
    z = torch.multinomial(params["weights"], n, replacement=True, generator=generator)
    noise = torch.randn(n, config.dim, generator=generator, dtype=means.dtype,
                        device=means.device)
    if config.full_matrices:
        offset = (params["scale_tril"][z] @ noise[:, :, None])[..., 0]
    else:
        offset = params["scale"].reshape(config.components, -1)[z] * noise
    return means[z] + offset, z


def _full(scale_tril_rows) -> torch.Tensor:
    return torch.linalg.cholesky(torch.tensor(scale_tril_rows, dtype=torch.float64))


TRUE_PARAMS = {  # the well-separated mixture of :func:`synthetic`
    "weights": torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
    "means": torch.tensor([[0.0, 0.0], [6.0, 0.0], [3.0, 6.0]], dtype=torch.float64),
    "scale_tril": _full([[[1.0, 0.5], [0.5, 1.0]], [[0.7, -0.3], [-0.3, 0.5]],
                         [[1.2, 0.0], [0.0, 0.4]]]),
}


def synthetic(num_data: int, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float32):
    """``num_data`` draws from a well-separated K=3, D=2 full-covariance mixture.

    Returns ``(x : (N, 2), labels : (N,), true params)`` on the generator's device.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    params = {name: value.to(dtype=dtype, device=device) for name, value in TRUE_PARAMS.items()}
    x, labels = sample(GMMConfig(dim=2, components=3), params, num_data, generator)
    return x, labels, params


# ---------------------------------------------------------------------------------------------
# Priors (MAP with SVI)
# ---------------------------------------------------------------------------------------------


def log_prior(config: GMMConfig, params: Params) -> torch.Tensor:
    """``log p(weights) + log p(means) + log p(scales)``, a 0-dim tensor in nats.

    Dirichlet(``prior_concentration``) weights, Normal(0, ``prior_mean_scale``) mean
    coordinates, LogNormal(0, ``prior_scale_spread``) standard deviations and, for full
    covariances, an LKJ(1) (uniform) prior on the correlation Cholesky factor: the density is
    written over (standard deviations, correlation factor), the usual MAP parameterization.
    """
    weights, means = params["weights"], params["means"]
    k, d = means.shape
    ones = weights.new_ones(k)
    total = dist.Dirichlet(config.prior_concentration * ones).log_prob(weights)
    zero = means.new_zeros(())  # hyperparameters in the parameters' dtype and device
    total = total + dist.Normal(zero, zero + config.prior_mean_scale).log_prob(means).sum()
    spread = dist.LogNormal(zero, zero + config.prior_scale_spread)
    if config.full_matrices:
        scale_tril = params["scale_tril"]
        stddev = scale_tril.square().sum(-1).sqrt()  # row norms of L: sqrt(diag(L Lᵀ))
        total = total + spread.log_prob(stddev).sum()
        if d > 1:
            correlation = scale_tril / stddev[..., None]
            total = total + dist.LKJCholesky(d, weights.new_tensor(1.0)).log_prob(
                correlation).sum()
    else:
        total = total + spread.log_prob(params["scale"]).sum()
    return total


# ---------------------------------------------------------------------------------------------
# The Pyro model
# ---------------------------------------------------------------------------------------------


class GaussianMixtureModel:
    """The Pyro model ``p(x, z)`` with maximum-likelihood ``pyro.param`` globals.

    ``model(x=None, *, num_data=None, subsample_size=None)``: ``x : (N, D)`` observed rows, or
    ``None`` to draw ``num_data`` rows. The assignment ``z`` lives in
    ``pyro.plate("data", N, subsample_size=...)``; it is marked for parallel enumeration, so
    ``TraceEnum_ELBO`` sums it out wherever a guide leaves it alone. ``params`` are the initial
    values of the ``pyro.param`` sites (default: uniform weights, unit covariances and means
    from a fixed seed). With ``config.prior`` the log-prior enters as a ``pyro.factor``.
    """

    def __init__(self, config: GMMConfig, params: Params | None = None):
        if params is not None:
            _check_params(config, params)
            params = {name: value.detach().clone() for name, value in params.items()}
        self.config = config
        self.initial_params = params

    def _initial(self, like: torch.Tensor | None) -> Params:
        if self.initial_params is not None:
            return self.initial_params
        k, d = self.config.components, self.config.dim
        options = {"dtype": like.dtype if like is not None else torch.get_default_dtype(),
                   "device": like.device if like is not None else None}
        means = torch.randn(k, d, generator=torch.Generator().manual_seed(0))
        scale = {"full": torch.eye(d).expand(k, d, d).clone(),
                 "tied": torch.eye(d).expand(k, d, d).clone(), "diag": torch.ones(k, d),
                 "spherical": torch.ones(k)}[self.config.covariance_type]
        return {"weights": torch.full((k,), 1.0 / k, **options), "means": means.to(**options),
                SCALE_NAME[self.config.covariance_type]: scale.to(**options)}

    def current_params(self, like: torch.Tensor | None = None) -> Params:
        """The ``pyro.param`` values now (creating them from the initial values if new)."""
        initial = self._initial(like)
        scale_name = SCALE_NAME[self.config.covariance_type]
        scale_constraint = (constraints.lower_cholesky if scale_name == "scale_tril"
                            else constraints.positive)
        scale = pyro.param(scale_name, initial[scale_name], constraint=scale_constraint)
        if self.config.covariance_type == "tied":
            scale = scale.mean(0, keepdim=True).expand_as(scale)  # the one shared factor
        return {
            "weights": pyro.param("weights", initial["weights"], constraint=constraints.simplex),
            "means": pyro.param("means", initial["means"]),
            scale_name: scale,
        }

    def __call__(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                 subsample_size: int | None = None) -> torch.Tensor:
        if x is None and num_data is None:
            raise InputError("the GMM model needs data x or a number of rows num_data to draw")
        if x is not None:
            _check_data(self.config, x)
        params = self.current_params(x)
        if self.config.prior:
            pyro.factor("log_prior", log_prior(self.config, params))
        size = x.shape[0] if x is not None else num_data
        with pyro.plate(DATA_PLATE, size, subsample_size=subsample_size,
                        device=params["means"].device) as index:
            z = pyro.sample("z", dist.Categorical(params["weights"]),
                            infer={"enumerate": "parallel"})
            return pyro.sample("x", component_distribution(self.config, params, z),
                               obs=None if x is None else x[index])


def component_distribution(config: GMMConfig, params: Params,
                           z: torch.Tensor) -> dist.TorchDistribution:
    """``N(μ_z, S_z)`` with event shape ``(D,)`` for any batch of assignments ``z``."""
    means = params["means"][z]
    if config.full_matrices:
        return dist.MultivariateNormal(means, scale_tril=params["scale_tril"][z])
    scale = params["scale"][z]
    if config.covariance_type == "spherical":
        scale = scale[..., None].expand(means.shape)
    return dist.Normal(means, scale).to_event(1)


def make_model(config: GMMConfig, params: Params | None = None) -> GaussianMixtureModel:
    """The Pyro model for ``config``, its ``pyro.param`` sites starting at ``params``."""
    return GaussianMixtureModel(config, params)


def from_assignments(config: GMMConfig, x: torch.Tensor, labels: torch.Tensor) -> Params:
    """The M-step on hard assignments ``labels : (N,)`` (K-means' clusters as a mixture)."""
    return from_labels(config, x, labels)


SPEC = register(ModelSpec(
    name="gmm",
    summary="Gaussian mixture: p(x) = Σ_k λ_k N(x | μ_k, S_k), by EM or SVI",
    config_class=GMMConfig,
    make_model=make_model,
    default_data="old-faithful",
    init_params=init_params,
    log_marginal=log_marginal,
    posterior=posterior,
    sample=sample,
    em=EMSteps(init=_em_initialize, e_step=e_step, m_step=maximize, init_methods=INIT_METHODS,
               combine=combine, label_statistics=label_statistics,
               init_rows=_em_initialize_rows, log_likelihood=mean_log_likelihood),
    from_assignments=from_assignments,
    synthetic=synthetic,
    local_sites=("z",),
    svi_defaults={"steps": 5000, "lr": 0.05},  # a cap: fits stop when the ELBO settles
    notes="exact log p(x) and p(z | x): the exact guide's ELBO is tight",
))

__all__ = [
    # the model family: config, closed forms, sampling, priors, the Pyro model, its registration
    "COVARIANCE_TYPES", "FULL_MATRICES", "SCALE_NAME", "SPEC", "TRUE_PARAMS", "GMMConfig",
    "GaussianMixtureModel",
    "check_components", "component_distribution", "elbo", "log_joint", "log_marginal",
    "log_prior", "log_responsibilities", "make_model", "posterior", "responsibilities", "sample",
    "synthetic",
    # EM's numerics (zoo.gmm_em)
    "BLOCK_VALUES", "FEATURE_VALUES", "QUADRATIC_ERROR", "MixtureStatistics",
    "SingularCovarianceError", "combine",
    "e_step", "label_statistics", "m_step", "maximize", "mean_log_likelihood",
    "sufficient_statistics",
    "weighted_moments",
    # starts (zoo.gmm_init)
    "INIT_METHODS", "START_ROWS", "START_ROWS_PER_COMPONENT", "LloydResult", "init_params",
    "initialize", "kmeans_plus_plus", "lloyd", "nearest_centers", "squared_distances",
    "start_rows", "start_sample",
]
