"""The Bayesian Gaussian mixture: Dirichlet or Dirichlet-process weights, Normal-Wishart components.

Generative process (T = K components for Dirichlet weights, K + 1 for the stick-breaking
Dirichlet process truncated after K sticks, the last component taking the stick that is left)::

    π ~ Dirichlet(α₀, ..., α₀)  or  π_k = v_k Π_{j<k} (1 - v_j), v_k ~ Beta(1, γ₀)
    Λ_k ~ Wishart(ν₀, W₀ = C₀⁻¹),  μ_k | Λ_k ~ N(m₀, (β₀ Λ_k)⁻¹),  k = 1..T
    z_n ~ Categorical(π),  x_n | z_n ~ N(μ_{z_n}, Λ_{z_n}⁻¹)

The variational posterior is mean-field, q(z) q(π) Π_k q(μ_k, Λ_k), each factor in the prior's
conjugate family; coordinate ascent (CAVI) updates each block in closed form. The covariance
type names the family of q(Λ_k), as in scikit-learn: ``full`` any Wishart; ``tied`` one Wishart
shared by every component (q(Λ_k) all equal); ``diag`` a Wishart with a diagonal scale
matrix; ``spherical`` a Wishart with scale w_k I (with a prior C₀ of the same form). Each is
the exact coordinate-ascent update of the *same* model within that family -- which is what
scikit-learn's ``BayesianGaussianMixture`` computes: its E-step's E[log |Λ|] is the Wishart
one, Σ_d ψ((ν - d)/2) + D log 2 + log |W|, for all four types. Under the truncated
Dirichlet process, q(z_n = K + 1) = 0 and q of that component's parameters is its prior.

:func:`elbo` is the WHOLE evidence lower bound, every constant kept, in nats (not per
datapoint): E_q[log p(x, z, π, μ, Λ)] - E_q[log q], so ELBO <= log p(x) and it equals log p(x)
when the family holds the posterior (K = 1, full covariance, ``reg_covar=0``). scikit-learn's
``lower_bound_`` drops the terms that do not move during a fit; :func:`sklearn_bound_offset`
is what it dropped (derived in its docstring).

Shapes: ``x : (N, D)``, responsibilities ``(N, K)``; everything is batched over components
(batched Cholesky and triangular solves), the same code on CPU and CUDA, dtype from the data.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

from zoo.errors import InputError
from zoo.registry import CONJUGATE_UPDATES, DATA_PLATE, ModelSpec, Params, register

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
WEIGHT_PRIORS = ("dirichlet_process", "dirichlet_distribution")
INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


@dataclass(frozen=True)
class BayesianGMMConfig:
    """The Bayesian mixture's size, variational family and priors (scikit-learn's names;
    ``None`` is scikit-learn's data-dependent default, resolved by :func:`resolve_priors`)."""

    # D, the observation dimension; filled in from the data
    dim: int = field(default=2, metadata={"cli": False, "help": "observation dimension D"})
    # K, the number of components (the truncation level under the Dirichlet process)
    components: int = field(default=2, metadata={
        "help": "number of mixture components K (the truncation under the Dirichlet process)"})
    # the family of q(Λ_k): full, tied (shared), diag (diagonal scale), spherical (w_k I)
    covariance_type: str = field(default="full", metadata={
        "help": "family of each q(precision): full, tied, diag or spherical",
        "choices": COVARIANCE_TYPES})
    # stick-breaking Dirichlet process (truncated at K) or a finite symmetric Dirichlet
    weight_concentration_prior_type: str = field(default="dirichlet_process", metadata={
        "help": "prior on the weights: dirichlet_process (stick-breaking, truncated at K) or "
                "dirichlet_distribution", "choices": WEIGHT_PRIORS})
    # γ₀ of the Beta(1, γ₀) sticks, or α₀ of the Dirichlet (default 1/K)
    weight_concentration_prior: float | None = field(default=None, metadata={
        "help": "concentration of the weights' prior (default 1/K)", "positive": True})
    # β₀: how many pseudo-observations the prior mean is worth (default 1)
    mean_precision_prior: float | None = field(default=None, metadata={
        "help": "precision scale β0 of the means' prior (default 1)", "positive": True})
    # ν₀ > D - 1 (default D)
    degrees_of_freedom_prior: float | None = field(default=None, metadata={
        "help": "Wishart degrees of freedom ν0 of the precisions' prior, above D - 1 "
                "(default D)"})
    # m₀ (default: the data's mean); a tuple of D numbers
    mean_prior: tuple | None = field(default=None, metadata={"cli": False})
    # C₀ = W₀⁻¹ (default: the data's covariance, its diagonal, or their mean, by type)
    covariance_prior: tuple | float | None = field(default=None, metadata={"cli": False})
    # added to every scatter's diagonal in the update, as scikit-learn does (0: exact CAVI)
    reg_covar: float = field(default=1e-6, metadata={
        "help": "non-negative regularization added to the scatter diagonals (as scikit-learn; "
                "0 makes every update exact coordinate ascent)", "min": 0.0})

    def __post_init__(self):
        self.validate()

    def validate(self, num_data: int | None = None) -> None:
        """Raise :class:`InputError` naming the bad input and its fix; ``num_data`` = N."""
        if self.covariance_type not in COVARIANCE_TYPES:
            raise InputError(f"unknown covariance_type={self.covariance_type!r}; choose one of: "
                             + ", ".join(COVARIANCE_TYPES))
        if self.weight_concentration_prior_type not in WEIGHT_PRIORS:
            raise InputError(f"unknown weight_concentration_prior_type="
                             f"{self.weight_concentration_prior_type!r}; choose one of: "
                             + ", ".join(WEIGHT_PRIORS))
        if self.components < 1:
            raise InputError(f"components={self.components} must be at least 1")
        if self.dim < 1:
            raise InputError(f"dim={self.dim} must be at least 1")
        for name in ("weight_concentration_prior", "mean_precision_prior"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise InputError(f"{name}={value} must be a finite positive number")
        nu = self.degrees_of_freedom_prior
        if nu is not None and not (nu > self.dim - 1 and math.isfinite(nu)):
            raise InputError(f"degrees_of_freedom_prior={nu} must exceed dim - 1 = "
                             f"{self.dim - 1}; use e.g. {self.dim}")
        if not (self.reg_covar >= 0 and math.isfinite(self.reg_covar)):
            raise InputError(f"reg_covar={self.reg_covar} must be a finite number >= 0; "
                             "use e.g. 1e-6")
        if num_data is not None and self.components > num_data:
            raise InputError(f"components={self.components} exceeds the {num_data} "
                             f"datapoints; use at most {num_data}")

    @property
    def stick_breaking(self) -> bool:
        return self.weight_concentration_prior_type == "dirichlet_process"


class Priors(NamedTuple):
    """The resolved prior: tensors on the data's device and dtype."""

    weight_concentration: torch.Tensor  # () α₀ or γ₀
    mean_precision: torch.Tensor  # () β₀
    mean: torch.Tensor  # (D,) m₀
    degrees_of_freedom: torch.Tensor  # () ν₀
    covariance: torch.Tensor  # C₀ = W₀⁻¹: (D, D) full/tied, (D,) diag, () spherical


class Posterior(NamedTuple):
    """q(π) q(μ, Λ) in scikit-learn's parametrization (its fitted attributes' names).

    ``covariances`` is the scale matrix's inverse divided by ν (so that its inverse,
    ``precisions``, is E_q[Λ_k]); shapes as scikit-learn's per covariance type.
    """

    weight_concentration: torch.Tensor  # (K,) Dirichlet α, or (2, K) Beta (a, b) per stick
    mean_precision: torch.Tensor  # (K,) β_k
    means: torch.Tensor  # (K, D) m_k
    degrees_of_freedom: torch.Tensor  # (K,) ν_k (tied: K equal values)
    covariances: torch.Tensor  # (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical
    precisions_cholesky: torch.Tensor  # same shapes: Cholesky factor of E_q[Λ_k] (sklearn's)


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(float(value), dtype=like.dtype, device=like.device)


def _check_data(config: BayesianGMMConfig, x: torch.Tensor, *, fitting: bool = True) -> None:
    """``fitting``: the rows are the whole fit's, so K may not exceed N (the Pyro model takes
    any rows: a minibatch, or the two rows a trace of its sites uses)."""
    if x.dim() != 2 or x.shape[1] != config.dim:
        raise InputError(f"x has shape {tuple(x.shape)} but the model has dim={config.dim}; "
                         f"give an (N, {config.dim}) tensor")
    if not x.is_floating_point():
        raise InputError(f"x has dtype {x.dtype}; convert it to float32 or float64")
    config.validate(x.shape[0] if fitting else None)


def proper_covariance(covariance: torch.Tensor, reg_covar: float) -> torch.Tensor:
    """A default prior scale from the data's covariance ``(D, D)``, made proper: where it is
    singular (N <= D rows, or a constant column) ``reg_covar`` is added to its diagonal, as
    the M-step adds it to the covariances. Why: a singular scale makes the Wishart prior
    improper and the ELBO -inf (or, by rounding, finite nonsense that varies by machine);
    scikit-learn's bound leaves the prior's normalizer out, so it fits with the singular
    scale."""
    d = covariance.shape[-1]
    floor = d * torch.finfo(covariance.dtype).eps * covariance.diagonal().abs().max()
    if bool(torch.linalg.eigvalsh(covariance).min() > floor):
        return covariance
    return covariance + reg_covar * torch.eye(d, dtype=covariance.dtype,
                                              device=covariance.device)


def resolve_priors(config: BayesianGMMConfig, x: torch.Tensor | None) -> Priors:
    """The prior with scikit-learn's defaults filled in from ``x`` (1/K, 1, mean(x), D, and
    the covariance of x, its diagonal or the mean of its diagonal, with ddof=1; a singular
    full covariance made proper by :func:`proper_covariance`). Without data the defaults are
    m₀ = 0 and C₀ = I."""
    like = x if x is not None else torch.zeros(1, config.dim)
    d = config.dim
    kind = config.covariance_type
    if config.mean_prior is not None:
        mean = torch.as_tensor(config.mean_prior, dtype=like.dtype, device=like.device)
        if mean.shape != (d,):
            raise InputError(f"mean_prior has shape {tuple(mean.shape)}; give {d} numbers")
    else:
        mean = x.mean(0) if x is not None else like.new_zeros(d)
    if config.covariance_prior is not None:
        covariance = torch.as_tensor(config.covariance_prior, dtype=like.dtype,
                                     device=like.device)
        shape = {"full": (d, d), "tied": (d, d), "diag": (d,), "spherical": ()}[kind]
        if tuple(covariance.shape) != shape:
            raise InputError(f"covariance_prior has shape {tuple(covariance.shape)}; a "
                             f"{kind} mixture needs {shape}")
        if kind in ("full", "tied"):
            if not torch.allclose(covariance, covariance.T) or bool(
                    torch.linalg.eigvalsh(covariance).min() <= 0):
                raise InputError("covariance_prior must be symmetric positive-definite")
        elif bool((covariance <= 0).any()):
            raise InputError("covariance_prior must be positive")
    elif x is None:
        eye = torch.eye(d, dtype=like.dtype, device=like.device)
        covariance = {"full": eye, "tied": eye, "diag": eye.diagonal().clone(),
                      "spherical": like.new_ones(())}[kind]
    else:
        if x.shape[0] < 2:
            raise InputError("the default covariance_prior is the data's covariance, which "
                             "needs at least 2 rows; give covariance_prior or more rows")
        centred = x - x.mean(0)
        if kind in ("full", "tied"):
            covariance = proper_covariance(centred.T @ centred / (x.shape[0] - 1),
                                           config.reg_covar)
        else:
            variance = centred.square().sum(0) / (x.shape[0] - 1)
            covariance = variance if kind == "diag" else variance.mean()
    k = config.components
    return Priors(
        weight_concentration=_scalar(config.weight_concentration_prior or 1.0 / k, like),
        mean_precision=_scalar(config.mean_precision_prior or 1.0, like),
        mean=mean,
        degrees_of_freedom=_scalar(config.degrees_of_freedom_prior or d, like),
        covariance=covariance)


# ---------------------------------------------------------------------------------------------
# The update of q(π) q(μ, Λ) given the responsibilities (scikit-learn's "M-step")
# ---------------------------------------------------------------------------------------------


class Rows(NamedTuple):
    """The rows with what every iteration reuses, computed once per fit (:func:`prepare`)."""

    x: torch.Tensor  # (N, D)
    shift: torch.Tensor  # (D,) the rows' mean
    centred: torch.Tensor  # (N, D) y = x - shift (a view of ``features`` where there are any)
    features: torch.Tensor | None  # (N, D(D+1)/2 + D + 1): φ(y) = (y_d y_e for d <= e, y, 1)
    pair_index: torch.Tensor | None  # (2, D(D+1)/2) the (d, e) of the products


FEATURES_MAX_ELEMENTS = 2**27  # beyond this many numbers (1 GiB in float64) go without them


def _empty_large(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialized tensor of ``like``'s dtype and device. In CPU memory it comes from
    NumPy's allocator, which asks Linux for transparent huge pages for large blocks: 2 MiB
    pages fault in about 500 times for the 245 MB of φ at N = 200,000, D = 16, against about
    60,000 4 KiB faults (~55 ms of a ~0.8 s fit) for PyTorch's own allocation."""
    if like.device.type != "cpu":
        return like.new_empty(shape)
    import numpy as np

    kind = torch.empty(0, dtype=like.dtype).numpy().dtype
    return torch.from_numpy(np.empty(shape, dtype=kind))


def prepare(config: BayesianGMMConfig, x: torch.Tensor) -> Rows:
    """Centre the rows once; for full covariances in float64 also their features
    φ(y) = (y_d y_e for d <= e, y, 1): the weighted counts, sums and second moments are then
    one GEMM (rᵀφ), and so is log ρ (φ W: E_q[log π_k + log N(x | μ_k, Λ_k⁻¹)] is linear in
    φ), D(D+1)/2 + D + 1 columns, about half a batched GEMM's work and no (K, N, D)
    temporary. φ is stored feature by feature (the transpose of an (F, N) block), so each
    product is one contiguous write. In float32 the expanded quadratic form would lose digits,
    so it keeps the direct form."""
    if isinstance(x, Rows):
        return x
    shift = x.mean(0)
    n, d = x.shape
    pairs = d * (d + 1) // 2
    if not (config.covariance_type == "full" and x.dtype == torch.float64
            and n * (pairs + d + 1) <= FEATURES_MAX_ELEMENTS):
        return Rows(x, shift, x - shift, None, None)
    index = torch.triu_indices(d, d, device=x.device)
    by_feature = _empty_large(x, (pairs + d + 1, n))
    centred = torch.sub(x.T, shift[:, None], out=by_feature[pairs:pairs + d])  # (D, N)
    by_feature[-1] = 1.0
    start = 0
    for row in range(d):  # the products y_row y_e, e >= row
        torch.mul(centred[row], centred[row:], out=by_feature[start:start + d - row])
        start += d - row
    return Rows(x, shift, centred.T, by_feature.T, index)


class Statistics(NamedTuple):
    counts: torch.Tensor  # (K,) N_k (+ 10 eps, as scikit-learn)
    means: torch.Tensor  # (K, D) x̄_k
    scatter: torch.Tensor  # S_k + reg I: (K, D, D) full, (D, D) tied, (K, D) diag, (K,) sph


def statistics(config: BayesianGMMConfig, x: torch.Tensor | Rows,
               resp: torch.Tensor) -> Statistics:
    """Weighted counts, means and covariances of the rows under ``resp : (N, K)``, one GEMM
    each (the rows are centred once at their mean, so the uncentred sums lose nothing)."""
    rows = prepare(config, x)
    x, shift, centred = rows.x, rows.shift, rows.centred
    reg = config.reg_covar
    kind = config.covariance_type
    d = x.shape[1]
    if rows.features is not None:  # Σ r φ: products, rows and counts in one GEMM
        moments = (rows.features.T @ resp).T  # (K, D(D+1)/2 + D + 1): φ is stored by feature
        upper, sums, counts = moments[:, :-d - 1], moments[:, -d - 1:-1], moments[:, -1]
    else:
        counts, sums = resp.sum(0), resp.T @ centred  # (K,), (K, D)
    counts = counts + 10 * torch.finfo(resp.dtype).eps
    means_c = sums / counts[:, None]
    if kind == "full":
        if rows.features is not None:
            second = upper.new_zeros(resp.shape[1], x.shape[1], x.shape[1])
            second[:, rows.pair_index[0], rows.pair_index[1]] = upper
            second[:, rows.pair_index[1], rows.pair_index[0]] = upper
        else:
            second = (resp.T[:, :, None] * centred).transpose(1, 2) @ centred
        scatter = second / counts[:, None, None] - means_c[:, :, None] * means_c[:, None, :]
        scatter = scatter + reg * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    elif kind == "tied":
        # scikit-learn's tied scatter is (Σ_n x xᵀ - Σ_k N_k x̄_k x̄_kᵀ) / Σ_k N_k over ALL
        # rows; for a start whose rows do not sum to one (random_from_data, k-means++) the
        # rows' missing weight 1 - Σ_k r_nk adds its x xᵀ, so the same start gives the same fit
        weight = resp.sum(1)
        outer = ((centred * weight[:, None]).T @ centred
                 - (counts[:, None] * means_c).T @ means_c)
        missing = 1.0 - weight
        if bool((missing.abs() > 1e-9).any()):
            outer = outer + (x * missing[:, None]).T @ x
        scatter = outer / counts.sum() + reg * torch.eye(x.shape[1], dtype=x.dtype,
                                                         device=x.device)
    else:
        second = resp.T @ centred.square() / counts[:, None]
        scatter = second - means_c.square() + reg
        if kind == "spherical":
            scatter = scatter.mean(1)
    return Statistics(counts, means_c + shift, scatter)


def _precision_cholesky(covariances: torch.Tensor, kind: str) -> torch.Tensor:
    """The Cholesky factor U of each precision (U Uᵀ = covariance⁻¹, U = L⁻ᵀ for L the
    covariance's lower Cholesky factor), scikit-learn's ``precisions_cholesky_``."""
    if kind in ("full", "tied"):
        lower, info = torch.linalg.cholesky_ex(covariances)
        if bool((info != 0).any()):
            raise FloatingPointError("a component's covariance is not positive-definite; "
                                     "increase reg_covar or reduce components")
        eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype,
                        device=covariances.device).expand_as(covariances)
        return torch.linalg.solve_triangular(lower, eye, upper=False).transpose(-1, -2)
    if bool((covariances <= 0).any()):
        raise FloatingPointError("a component's variance is not positive; increase "
                                 "reg_covar or reduce components")
    return covariances.rsqrt()


def update_globals(config: BayesianGMMConfig, priors: Priors, x: torch.Tensor | Rows,
                   resp: torch.Tensor) -> Posterior:
    """The coordinate update of q(π) Π_k q(μ_k, Λ_k) given ``resp : (N, K)``: the exact
    maximizer of the ELBO over these factors within the family of ``covariance_type`` (with
    ``reg_covar = 0``)."""
    stats = statistics(config, x, resp)
    nk, xk, sk = stats
    k = config.components
    if config.stick_breaking:
        later = nk.flip(0).cumsum(0).flip(0) - nk  # Σ_{j>k} N_j
        concentration = torch.stack([1.0 + nk, priors.weight_concentration + later])
    else:
        concentration = priors.weight_concentration + nk
    beta0, m0, nu0, c0 = (priors.mean_precision, priors.mean, priors.degrees_of_freedom,
                          priors.covariance)
    beta = beta0 + nk
    means = (beta0 * m0 + nk[:, None] * xk) / beta[:, None]
    diff = xk - m0
    shrink = nk * beta0 / beta  # N_k β₀ / β_k
    kind = config.covariance_type
    if kind == "full":
        nu = nu0 + nk
        scale = (c0 + nk[:, None, None] * sk
                 + shrink[:, None, None] * diff[:, :, None] * diff[:, None, :])
        covariances = scale / nu[:, None, None]
    elif kind == "tied":
        nu = (nu0 + nk.sum() / k).expand(k)
        scale = c0 + sk * nk.sum() / k + (shrink[:, None] * diff).T @ diff / k
        covariances = scale / nu[0]
    elif kind == "diag":
        nu = nu0 + nk
        covariances = (c0 + nk[:, None] * (sk + (beta0 / beta)[:, None] * diff.square())
                       ) / nu[:, None]
    else:
        nu = nu0 + nk
        covariances = (c0 + nk * (sk + beta0 / beta * diff.square().mean(1))) / nu
    return Posterior(concentration, beta, means, nu, covariances,
                     _precision_cholesky(covariances, kind))


# ---------------------------------------------------------------------------------------------
# Expectations under q, the update of q(z), the whole ELBO
# ---------------------------------------------------------------------------------------------


def expected_log_weights(config: BayesianGMMConfig, post: Posterior) -> torch.Tensor:
    """E_q[log π_k], shape ``(K,)``."""
    if config.stick_breaking:
        a, b = post.weight_concentration
        total = torch.digamma(a + b)
        log_rest = torch.digamma(b) - total
        return torch.digamma(a) - total + torch.cumsum(log_rest, 0) - log_rest
    alpha = post.weight_concentration
    return torch.digamma(alpha) - torch.digamma(alpha.sum())


def _log_det_precision_cholesky(post: Posterior, kind: str, dim: int) -> torch.Tensor:
    """log |U_k| = ½ log |E_q[Λ_k]|, shape ``(K,)``."""
    u = post.precisions_cholesky
    k = post.means.shape[0]
    if kind == "full":
        return u.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if kind == "tied":
        return u.diagonal().log().sum().expand(k)
    if kind == "diag":
        return u.log().sum(-1)
    return dim * u.log()


def _mahalanobis(points: torch.Tensor, post: Posterior, kind: str) -> torch.Tensor:
    """(p - m_k)ᵀ E_q[Λ_k] (p - m_k) for ``points : (N, D)``, shape ``(N, K)``: one GEMM
    against the K factors side by side for full covariances, one for tied, elementwise for
    diag and spherical."""
    u, m = post.precisions_cholesky, post.means
    if kind == "full":
        k, d = m.shape
        projected = (points @ u.transpose(0, 1).reshape(d, k * d)).view(-1, k, d)
        projected -= (m[:, None, :] @ u)[:, 0, :]  # (N, K, D): the K projections of each row
        return torch.linalg.vector_norm(projected, dim=-1).square()
    if kind == "tied":
        return ((points @ u)[:, None, :] - (m @ u)[None]).square().sum(-1)
    if kind == "diag":
        precision = u.square()  # (K, D)
        return (points.square() @ precision.T - 2.0 * points @ (m * precision).T
                + (m.square() * precision).sum(1))
    precision = u.square()  # (K,)
    return (points.square().sum(1)[:, None] - 2.0 * points @ m.T
            + m.square().sum(1)) * precision


def _multi_digamma_sum(nu: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ_{d<D} ψ((ν - d)/2) for ``nu : (K,)``."""
    offsets = torch.arange(dim, dtype=nu.dtype, device=nu.device)
    return torch.digamma(0.5 * (nu[:, None] - offsets)).sum(-1)


def _multi_lgamma(half_nu: torch.Tensor, dim: int) -> torch.Tensor:
    """log Γ_D(a) = D(D-1)/4 log π + Σ_{d<D} log Γ(a - d/2)."""
    return torch.mvlgamma(half_nu, dim)


def _log_rho_from_features(rows: Rows, post: Posterior, bias: torch.Tensor) -> torch.Tensor:
    """``bias - ½ (y - m̃_k)ᵀ P_k (y - m̃_k)`` for full covariances (P_k = E_q[Λ_k], y and m̃_k
    centred at the rows' mean) as one GEMM on the features φ(y) = (y_d y_e, y, 1): the
    quadratic form is yᵀP y - 2 yᵀP m̃ + m̃ᵀP m̃."""
    u = post.precisions_cholesky
    precision = u @ u.transpose(-1, -2)  # (K, D, D)
    i, j = rows.pair_index
    offset = post.means - rows.shift  # (K, D)
    pulled = (precision @ offset[:, :, None])[:, :, 0]  # (K, D)
    weights = torch.cat([precision[:, i, j] * torch.where(i == j, -0.5, -1.0).to(precision),
                         pulled, (bias - 0.5 * (offset * pulled).sum(1))[:, None]], 1)
    return (weights @ rows.features.T).T  # (N, K), stored by component: (K, N) contiguous


def expected_log_joint(config: BayesianGMMConfig, priors: Priors, post: Posterior,
                       x: torch.Tensor | Rows) -> torch.Tensor:
    """log ρ_nk = E_q[log π_k + log N(x_n | μ_k, Λ_k⁻¹)], shape ``(N, K)``; q(z_n) ∝ ρ_n
    is the coordinate update of q(z), and Σ r log ρ is the ELBO's data term."""
    rows = x if isinstance(x, Rows) else None
    points = x.x if rows is not None else x
    d = points.shape[1]
    kind = config.covariance_type
    nu = post.degrees_of_freedom
    log_det_w = 2.0 * _log_det_precision_cholesky(post, kind, d) - d * nu.log()
    expected_log_det = _multi_digamma_sum(nu, d) + d * math.log(2.0) + log_det_w
    bias = (expected_log_weights(config, post)
            + 0.5 * (expected_log_det - d * math.log(2 * math.pi) - d / post.mean_precision))
    if rows is not None and rows.features is not None and kind == "full":
        return _log_rho_from_features(rows, post, bias)
    return bias - 0.5 * _mahalanobis(points, post, kind)  # ν (x - m)ᵀ W (x - m)


def responsibilities(log_rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The coordinate update of q(z): ``(resp, log_resp)``, each ``(N, K)``."""
    log_resp = log_rho - torch.logsumexp(log_rho, 1, keepdim=True)
    return log_resp.exp(), log_resp


def _kl_weights(config: BayesianGMMConfig, priors: Priors, post: Posterior) -> torch.Tensor:
    """KL(q(π) || p(π)): Dirichlet against Dirichlet, or the sum over sticks of
    Beta(a_k, b_k) against Beta(1, γ₀)."""
    g = priors.weight_concentration
    if config.stick_breaking:
        a, b = post.weight_concentration
        log_beta_q = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
        log_beta_p = -torch.log(g)  # log B(1, γ₀)
        return (log_beta_p - log_beta_q + (a - 1) * torch.digamma(a)
                + (b - g) * torch.digamma(b) + (1 + g - a - b) * torch.digamma(a + b)).sum()
    alpha = post.weight_concentration
    k = alpha.shape[0]
    total = alpha.sum()
    return (torch.lgamma(total) - torch.lgamma(alpha).sum() - torch.lgamma(k * g)
            + k * torch.lgamma(g) + ((alpha - g) * (torch.digamma(alpha)
                                                    - torch.digamma(total))).sum())


def _log_det_prior_covariance(priors: Priors, kind: str, dim: int) -> torch.Tensor:
    c0 = priors.covariance
    if kind in ("full", "tied"):
        return torch.linalg.slogdet(c0)[1]
    if kind == "diag":
        return c0.log().sum()
    return dim * c0.log()


def _trace_prior_precision(priors: Priors, post: Posterior, kind: str,
                           dim: int) -> torch.Tensor:
    """tr(C₀ E_q[Λ_k]) = ν_k tr(W₀⁻¹ W_k), shape ``(K,)``."""
    u = post.precisions_cholesky
    c0 = priors.covariance
    k = post.means.shape[0]
    if kind == "full":
        return ((c0 @ u) * u).sum((-2, -1))
    if kind == "tied":
        return ((c0 @ u) * u).sum().expand(k)
    if kind == "diag":
        return u.square() @ c0
    return dim * c0 * u.square()


def _kl_components(config: BayesianGMMConfig, priors: Priors, post: Posterior) -> torch.Tensor:
    """Σ_k KL(q(μ_k, Λ_k) || p(μ_k, Λ_k)) for Normal-Wishart q and p:
    E_q(Λ)[KL(N(m_k, (β_k Λ)⁻¹) || N(m₀, (β₀ Λ)⁻¹))] + KL(Wishart(ν_k, W_k) || Wishart(ν₀, W₀))."""
    d = post.means.shape[1]
    kind = config.covariance_type
    beta0, nu0 = priors.mean_precision, priors.degrees_of_freedom
    beta, nu = post.mean_precision, post.degrees_of_freedom
    offset = _mahalanobis(priors.mean[None], post, kind)[0]  # (m₀ - m_k)ᵀ E[Λ_k] (·)
    kl_mean = 0.5 * (d * beta0 / beta - d + d * torch.log(beta / beta0) + beta0 * offset)
    log_det_w = 2.0 * _log_det_precision_cholesky(post, kind, d) - d * nu.log()
    log_det_w0 = -_log_det_prior_covariance(priors, kind, d)
    expected_log_det = _multi_digamma_sum(nu, d) + d * math.log(2.0) + log_det_w

    def log_normalizer(log_det, df):  # log B(W, ν) of the Wishart density
        return -0.5 * df * log_det - 0.5 * df * d * math.log(2.0) - _multi_lgamma(0.5 * df, d)

    kl_wishart = (log_normalizer(log_det_w, nu) - log_normalizer(log_det_w0, nu0)
                  + 0.5 * (nu - nu0) * expected_log_det - 0.5 * nu * d
                  + 0.5 * _trace_prior_precision(priors, post, kind, d))
    return (kl_mean + kl_wishart).sum()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a b of two (N, K) tables as one BLAS dot, in the memory order of ``a`` (row by row,
    or component by component for a table stored as (K, N)): no (N, K) temporary."""
    if not a.is_contiguous() and a.T.is_contiguous():
        a, b = a.T, b.T
    return torch.dot(a.reshape(-1), b.reshape(-1))


def elbo(config: BayesianGMMConfig, priors: Priors, post: Posterior, resp: torch.Tensor,
         log_rho: torch.Tensor, entropy: torch.Tensor | None = None) -> torch.Tensor:
    """The whole ELBO in nats (a 0-d tensor), every constant kept, at q(z) = ``resp`` and
    q(π, μ, Λ) = ``post``; ``log_rho`` is :func:`expected_log_joint` at ``post``:

    Σ_nk r_nk (log ρ_nk - log r_nk) - KL(q(π) || p(π)) - Σ_k KL(q(μ_k, Λ_k) || p(μ_k, Λ_k)).

    ``entropy`` is -Σ r log r where the caller has it (the update of q(z) gives it for one
    more pass); else it is computed here."""
    if entropy is None:
        entropy = -torch.xlogy(resp, resp).sum()
    data = _dot(resp, log_rho)  # Σ r log ρ
    return (data + entropy - _kl_weights(config, priors, post)
            - _kl_components(config, priors, post))


def sklearn_bound_offset(config: BayesianGMMConfig, priors: Priors, num_data: int,
                         post: Posterior | None = None) -> torch.Tensor:
    """The whole ELBO minus scikit-learn's ``lower_bound_`` for the same q.

    Where q(π, μ, Λ) is the coordinate update from q(z) = r (true after every iteration of
    either implementation), the terms linear in E[log |Λ_k|] and E[Λ_k] cancel (ν_k = ν₀ + N_k
    and W_k = A_k⁻¹ within each family) and the ELBO collapses to
    H(r) - (ND/2) log 2π + log C(α₀) - log C(α) + Σ_k [log B(W₀, ν₀) - log B(W_k, ν_k)]
    + (D/2) Σ_k log(β₀/β_k), with C the weights' normalizer (Dirichlet, or Π_k 1/B(a_k, b_k)
    for the sticks) and B the Wishart's. scikit-learn keeps
    H(r) - log C(α) - Σ_k [log B(W_k, ν_k) + D(D-1)/4 log π] - (D/2) Σ_k log β_k, so
    the difference is the constant

        c = -(ND/2) log 2π + K [log B(W₀, ν₀) + D(D-1)/4 log π + (D/2) log β₀] + w,
        w = log Γ(K α₀) - K log Γ(α₀) (Dirichlet) or K log γ₀ (Dirichlet process),

    which depends on N, D, K and the prior only. scikit-learn adds ``reg_covar`` to each
    scatter, so its q(Λ) is the update of a likelihood with ``reg_covar`` I added to every
    covariance; measured against the model without it, the ELBO's trace term differs by
    ½ reg_covar Σ_k N_k tr E_q[Λ_k], added here when ``post`` is given (it is zero for
    ``reg_covar = 0``).
    """
    d, k = config.dim, config.components
    kind = config.covariance_type
    nu0, beta0, g = priors.degrees_of_freedom, priors.mean_precision, priors.weight_concentration
    log_b0 = (0.5 * nu0 * _log_det_prior_covariance(priors, kind, d)
              - 0.5 * nu0 * d * math.log(2.0) - _multi_lgamma(0.5 * nu0, d))
    weights = (k * torch.log(g) if config.stick_breaking
               else torch.lgamma(k * g) - k * torch.lgamma(g))
    offset = (-0.5 * num_data * d * math.log(2 * math.pi)
              + k * (log_b0 + d * (d - 1) / 4 * math.log(math.pi) + 0.5 * d * torch.log(beta0))
              + weights)
    if post is not None and config.reg_covar > 0:
        counts = post.mean_precision - beta0  # N_k, read back from β_k = β₀ + N_k
        u = post.precisions_cholesky
        trace = {"full": lambda: u.square().sum((-2, -1)),
                 "tied": lambda: u.square().sum().expand(k),
                 "diag": lambda: u.square().sum(-1),
                 "spherical": lambda: d * u.square()}[kind]()  # tr E_q[Λ_k]
        offset = offset + 0.5 * config.reg_covar * (counts * trace).sum()
    return offset


def update_penalty(config: BayesianGMMConfig, priors: Priors, before: Posterior,
                   after: Posterior) -> torch.Tensor:
    """R(before) - R(after), R = ½ reg_covar Σ_k N_k tr E_q[Λ_k] with the update's N_k (read
    back from β_k = β₀ + N_k of ``after``): with ``reg_covar > 0`` the update of q(π, μ, Λ)
    from ``before`` to ``after`` maximizes ELBO - R rather than the ELBO (scikit-learn's
    update), so the iteration can lower the ELBO by at most this much."""
    k = before.means.shape[0]

    def trace(post):  # tr E_q[Λ_k], (K,)
        u = post.precisions_cholesky
        return {"full": lambda: u.square().sum((-2, -1)),
                "tied": lambda: u.square().sum().expand(k),
                "diag": lambda: u.square().sum(-1),
                "spherical": lambda: config.dim * u.square()}[config.covariance_type]()

    counts = after.mean_precision - priors.mean_precision
    return 0.5 * config.reg_covar * (counts * (trace(before) - trace(after))).sum()


def mixture_weights(config: BayesianGMMConfig, post: Posterior) -> torch.Tensor:
    """scikit-learn's ``weights_``: E_q[π] (Dirichlet) or the sticks' means broken in turn
    and normalized to sum to one over the K components."""
    if config.stick_breaking:
        a, b = post.weight_concentration
        kept = b / (a + b)
        weights = a / (a + b) * torch.cat([kept.new_ones(1), torch.cumprod(kept[:-1], 0)])
        return weights / weights.sum()
    return post.weight_concentration / post.weight_concentration.sum()


def precisions(config: BayesianGMMConfig, post: Posterior) -> torch.Tensor:
    """E_q[Λ_k] (scikit-learn's ``precisions_``)."""
    u = post.precisions_cholesky
    if config.covariance_type in ("full", "tied"):
        return u @ u.transpose(-1, -2)
    return u.square()


# ---------------------------------------------------------------------------------------------
# Starts and the coordinate-ascent hooks the ``cavi`` strategy calls
# ---------------------------------------------------------------------------------------------


def initial_responsibilities(config: BayesianGMMConfig, x: torch.Tensor,
                             generator: torch.Generator | None = None,
                             method: str = "kmeans") -> torch.Tensor:
    """q(z) to start from, ``(N, K)``: one-hot labels of Lloyd's K-means from k-means++ seeds
    (``"kmeans"``), one-hot at the k-means++ seeds only (``"k-means++"``), uniform random
    rows normalized (``"random"``), or one-hot at K random rows (``"random_from_data"``):
    scikit-learn's four starts (drawn from ``generator``, not scikit-learn's stream)."""
    from zoo.gmm_init import kmeans_plus_plus, lloyd, lloyd_tolerance

    _check_data(config, x)
    n, k = x.shape[0], config.components
    resp = x.new_zeros(n, k)
    columns = torch.arange(k, device=x.device)
    if method == "kmeans":
        centers, _ = kmeans_plus_plus(x, k, generator=generator)
        labels = lloyd(x, centers, tol=lloyd_tolerance(x)).labels
        resp[torch.arange(n, device=x.device), labels] = 1.0
    elif method == "k-means++":
        _, indices = kmeans_plus_plus(x, k, generator=generator)
        resp[indices, columns] = 1.0
    elif method == "random":
        resp = torch.rand(n, k, generator=generator, dtype=x.dtype, device=x.device)
        resp /= resp.sum(1, keepdim=True)
    elif method == "random_from_data":
        rows = torch.randperm(n, generator=generator, device=x.device)[:k]
        resp[rows, columns] = 1.0
    else:
        raise InputError(f"unknown init {method!r}; choose one of: " + ", ".join(INIT_METHODS))
    return resp


def to_params(config: BayesianGMMConfig, post: Posterior) -> Params:
    """q's parameters under the ``pyro.param`` names of the mean-field guide
    (``guides.bayesian_gmm``): the posterior's fields with a ``q_`` prefix (the Cholesky
    factors follow from the covariances; tied: one ν)."""
    params = {f"q_{name}": value for name, value in post._asdict().items()
              if name != "precisions_cholesky"}
    if config.covariance_type == "tied":
        params["q_degrees_of_freedom"] = post.degrees_of_freedom
    return params


def from_params(config: BayesianGMMConfig, params: Params) -> Posterior:
    """The :class:`Posterior` of :func:`to_params`' dict."""
    values = {name: params[f"q_{name}"] for name in Posterior._fields
              if name != "precisions_cholesky"}
    values["precisions_cholesky"] = _precision_cholesky(values["covariances"],
                                                        config.covariance_type)
    return Posterior(**values)


@dataclass(frozen=True)
class CoordinateAscent:
    """What the ``cavi`` strategy needs of a conjugate model (the capability
    :data:`zoo.registry.CONJUGATE_UPDATES`): resolve the prior from the data, start q(local),
    update q(global) given q(local), compute log ρ (q(local)'s update is its softmax), and the
    whole ELBO."""

    priors: object  # (config, x) -> priors
    prepare: object  # (config, x) -> the rows as the updates take them, once per fit
    initial_local: object  # (config, x, generator, method) -> resp (N, K)
    update_globals: object  # (config, priors, x, resp) -> posterior
    expected_log_joint: object  # (config, priors, posterior, x) -> log ρ (N, K), a new
    #   tensor (the loop shifts it in place), stored row by row or by component
    elbo: object  # (config, priors, posterior, resp, log ρ, entropy of resp) -> 0-d, nats
    to_params: object  # (config, posterior) -> the guide's parameters (``guide_params``)
    guide: str  # the registered guide whose pyro.params ``to_params`` names
    init_methods: tuple[str, ...] = INIT_METHODS
    update_penalty: object = None
    # ^ (config, priors, posterior before, posterior after) -> R's fall during the global
    #   update, where it maximizes ELBO - R rather than the ELBO (a regularizer R): an
    #   iteration may then lower the ELBO by that much


COORDINATE_ASCENT = CoordinateAscent(
    priors=resolve_priors, prepare=prepare, initial_local=initial_responsibilities,
    update_globals=update_globals, expected_log_joint=expected_log_joint, elbo=elbo,
    to_params=to_params, guide="mean-field", update_penalty=update_penalty)


# ---------------------------------------------------------------------------------------------
# The Pyro model
# ---------------------------------------------------------------------------------------------


def stick_breaking_weights(sticks: torch.Tensor) -> torch.Tensor:
    """``(..., K)`` sticks -> ``(..., K + 1)`` weights, the last one the stick left over."""
    rest = torch.cumprod(1.0 - sticks, -1)
    before = torch.cat([torch.ones_like(sticks[..., :1]), rest[..., :-1]], -1)
    return torch.cat([sticks * before, rest[..., -1:]], -1)


class StickBreaking(torch.distributions.transforms.Transform):
    """Sticks v ∈ (0, 1)^K -> weights π ∈ Δ^K: π_k = v_k Π_{j<k} (1 - v_j), the last weight
    the stick left over. Triangular: log |det ∂π_{1..K}/∂v| = Σ_k log Π_{j<k} (1 - v_j)."""

    domain = torch.distributions.constraints.independent(
        torch.distributions.constraints.unit_interval, 1)
    codomain = torch.distributions.constraints.simplex
    bijective = True

    def __eq__(self, other):
        return isinstance(other, StickBreaking)

    def forward_shape(self, shape):
        return shape[:-1] + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        return shape[:-1] + (shape[-1] - 1,)

    @staticmethod
    def _inside(v):  # a Beta(1, b < 1) draw rounds to 1 often: keep every log finite
        info = torch.finfo(v.dtype)
        return v.clamp(info.tiny, 1.0 - info.eps)

    def _call(self, v):
        return stick_breaking_weights(self._inside(v))

    def _inverse(self, weights):
        left = 1.0 - torch.cumsum(weights[..., :-1], -1) + weights[..., :-1]  # stick before k
        return self._inside(weights[..., :-1] / left)

    def log_abs_det_jacobian(self, v, weights):
        kept = torch.log1p(-self._inside(v))
        return (torch.cumsum(kept, -1) - kept).sum(-1)  # Σ_k log Π_{j<k} (1 - v_j)


def stick_breaking_distribution(a: torch.Tensor, b: torch.Tensor) -> dist.TorchDistribution:
    """The weights π ∈ Δ^K of K independent Beta(a_k, b_k) sticks broken in turn (the
    truncated stick-breaking prior with a = 1, b = γ₀; CAVI's q(π) with the fitted a, b)."""
    return dist.TransformedDistribution(dist.Beta(a, b).to_event(1), [StickBreaking()])


def positive_definite(precision: torch.Tensor) -> torch.Tensor:
    """``precision : (..., D, D)`` with √eps times its largest eigenvalue added to the diagonal
    where its smallest is below that: a Wishart draw with ν near D - 1 can be singular in
    floating point (a χ² draw that underflows; common in float32), and N(μ, (β Λ)⁻¹) needs Λ
    positive-definite. Draws that are not near-singular pass unchanged."""
    eigenvalues = torch.linalg.eigvalsh(precision)
    floor = torch.finfo(precision.dtype).eps ** 0.5 * eigenvalues[..., -1].abs()
    bad = eigenvalues[..., 0] < floor
    if not bool(bad.any()):
        return precision
    eye = torch.eye(precision.shape[-1], dtype=precision.dtype, device=precision.device)
    return torch.where(bad[..., None, None], precision + floor[..., None, None] * eye, precision)


class Wishart(dist.Wishart):
    """Pyro's Wishart whose draws pass through :func:`positive_definite`: the density is the
    Wishart's, and a draw that rounding made singular (log |Λ| = -inf in p and q alike, so a
    NaN importance weight) is nudged back inside the cone."""

    def rsample(self, sample_shape=()):
        with warnings.catch_warnings():  # torch warns of the singular draws mended here
            warnings.filterwarnings("ignore", "Singular sample detected")
            draw = super().rsample(torch.Size(sample_shape))
        return positive_definite(draw)


def prior_precision_matrix(config: BayesianGMMConfig, priors: Priors) -> torch.Tensor:
    """C₀ = W₀⁻¹ as a (D, D) matrix."""
    c0, d = priors.covariance, config.dim
    if c0.dim() == 2:
        return c0
    eye = torch.eye(d, dtype=c0.dtype, device=c0.device)
    return eye * c0 if c0.dim() == 0 else torch.diag(c0)


class BayesianGaussianMixtureModel:
    """The generative process of the module docstring as a Pyro model, the zoo's signature.

    Sites: ``weights`` (Dirichlet, or K Beta sticks broken in turn: T = K + 1 components),
    ``precisions`` (T Wisharts) and ``means`` (T Normals), the T components an event
    dimension of each, then ``z`` and ``x`` in plate ``data``. The prior is resolved from
    ``x`` at each call unless given.
    """

    def __init__(self, config: BayesianGMMConfig, priors: Priors | None = None):
        self.config = config
        self.priors = priors

    def __call__(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                 subsample_size: int | None = None) -> torch.Tensor:
        if x is None and num_data is None:
            raise InputError("the Bayesian mixture needs data x or a number of rows num_data")
        if x is not None:
            _check_data(self.config, x, fitting=False)
        priors = self.priors or resolve_priors(self.config, x)
        config, k = self.config, self.config.components
        g = priors.weight_concentration
        if config.stick_breaking:
            weights = pyro.sample("weights", stick_breaking_distribution(
                torch.ones_like(g).expand([k]), g.expand([k])))
        else:
            weights = pyro.sample("weights", dist.Dirichlet(g.expand([k])))
        total = weights.shape[-1]
        # a prior resolved from a couple of rows (a trace on x[:2]) can be singular: mend it
        c0 = positive_definite(prior_precision_matrix(config, priors))
        # the T components are an event dimension, not a plate: a global site's log-density
        # is one number per draw of θ (what the yardstick for global latents sums)
        precision = pyro.sample("precisions", Wishart(
            priors.degrees_of_freedom, precision_matrix=c0).expand([total]).to_event(1))
        means = pyro.sample("means", dist.MultivariateNormal(
            priors.mean, precision_matrix=priors.mean_precision * positive_definite(precision)
        ).to_event(1))
        size = x.shape[0] if x is not None else num_data
        with pyro.plate(DATA_PLATE, size, subsample_size=subsample_size,
                        device=c0.device) as index:
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            # Vindex broadcasts θ's batch dimensions (particles) against z's
            return pyro.sample("x", dist.MultivariateNormal(
                Vindex(means)[..., z, :], precision_matrix=Vindex(precision)[..., z, :, :]),
                obs=None if x is None else x[index])


def make_model(config: BayesianGMMConfig, params: Params | None = None
               ) -> BayesianGaussianMixtureModel:
    """The Pyro model for ``config`` (it has no ``pyro.param`` sites: ``params`` is unused)."""
    return BayesianGaussianMixtureModel(config)


SPEC = register(ModelSpec(
    name="bayesian-gmm",
    summary="Bayesian Gaussian mixture: Dirichlet / Dirichlet-process weights, Normal-Wishart "
            "components, fitted by CAVI with the whole ELBO",
    config_class=BayesianGMMConfig,
    make_model=make_model,
    default_data="old-faithful",
    local_sites=("z",),
    global_sites=("weights", "precisions", "means"),
    notes="CAVI's ELBO keeps every constant: comparable with log p(x) and with SVI's ELBO",
    capabilities={CONJUGATE_UPDATES: COORDINATE_ASCENT},
    # the maximum-likelihood mixture (EM) with as many components, beside it
    baselines={"gmm": lambda config: {"components": config.components,
                                      "covariance_type": config.covariance_type}},
))

__all__ = [
    "COORDINATE_ASCENT", "COVARIANCE_TYPES", "INIT_METHODS", "SPEC", "WEIGHT_PRIORS",
    "BayesianGMMConfig", "BayesianGaussianMixtureModel", "CoordinateAscent", "Posterior",
    "Priors", "Rows", "Statistics", "StickBreaking", "Wishart", "elbo", "expected_log_joint",
    "expected_log_weights", "from_params", "initial_responsibilities", "make_model",
    "mixture_weights", "positive_definite", "precisions", "prepare", "prior_precision_matrix",
    "resolve_priors", "responsibilities", "sklearn_bound_offset", "statistics",
    "stick_breaking_distribution", "stick_breaking_weights", "to_params", "update_globals",
    "update_penalty",
]
