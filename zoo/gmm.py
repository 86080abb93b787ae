r"""Gaussian mixture model: K Gaussian clusters, and which one made each datapoint.

    z_n ~ Categorical(λ),            λ = weights on the simplex,            n = 1..N
    x_n | z_n = k ~ N(μ_k, S_k),      S_k = L_k L_kᵀ (full), diag(σ_k²) or σ_k² I
    p(x) = Σ_k λ_k N(x | μ_k, S_k)

The global parameters travel in ONE representation, a dict keyed by the model's ``pyro.param``
names (K components, D dimensions):

    "weights"     (K,)        mixing proportions λ, on the simplex
    "means"       (K, D)      component means μ_k
    "scale_tril"  (K, D, D)   covariance_type="full": lower Cholesky factor L_k of S_k
    "scale"       (K, D)      covariance_type="diag": standard deviations σ_kd
    "scale"       (K,)        covariance_type="spherical": one standard deviation σ_k

Beside the Pyro model sit its closed forms, the oracles everything else is checked against: the
exact ``log_marginal`` (Cholesky and logsumexp, float32-safe), the ``responsibilities``
p(z | x), the ``m_step`` given responsibilities, ancestral ``sample``, and k-means++ / Lloyd
starts. EM's E-step (:func:`e_step`) is the hot path. For data it sees again and again it keeps
their quadratic features, so that an iteration is two GEMMs and a logsumexp, wherever their
rounding error is provably negligible; otherwise one pass over row blocks whitens all K
components with a single GEMM, takes the logsumexp and accumulates the sufficient statistics.
Neither materializes N x K x D x D. Log-likelihoods are in nats (per datapoint where averaged).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from zoo.errors import InputError
from zoo.registry import EMSteps, ModelSpec, Params, register

COVARIANCE_TYPES = ("full", "diag", "spherical")
SCALE_NAME = {"full": "scale_tril", "diag": "scale", "spherical": "scale"}
INIT_METHODS = ("kmeans++", "kmeans", "random")


@dataclass(frozen=True)
class GMMConfig:
    """What a Gaussian mixture is: its size, covariance structure and optional priors."""

    # D, the observation dimension; filled in from the data
    dim: int = field(default=2, metadata={"cli": False, "help": "observation dimension D"})
    # K, the number of Gaussian components
    components: int = field(default=2, metadata={"help": "number of mixture components K"})
    # full (L L^T), diag (one variance per dimension) or spherical (one variance per component)
    covariance_type: str = field(default="full", metadata={
        "help": "covariance of each component: full, diag or spherical",
        "choices": COVARIANCE_TYPES})
    # added to every covariance diagonal in the M-step, so that no component can collapse
    reg_covar: float = field(default=1e-6, metadata={
        "help": "non-negative regularization added to the covariance diagonals (as scikit-learn)"})
    # add log p(weights, means, scales) to the objective: SVI then finds the MAP estimate
    prior: bool = field(default=False, metadata={
        "help": "put priors on the parameters (Dirichlet weights, Normal means, LogNormal "
                "scales, LKJ correlations) so that SVI finds the MAP estimate"})
    # Dirichlet concentration of the weights' prior; above 1 keeps components from emptying
    prior_concentration: float = field(default=2.0, metadata={
        "help": "Dirichlet concentration of the prior on the weights (with --prior)"})
    # standard deviation of the Normal(0, .) prior on every coordinate of the means
    prior_mean_scale: float = field(default=10.0, metadata={
        "help": "standard deviation of the Normal(0, s) prior on the means (with --prior)"})
    # standard deviation of log sigma under the LogNormal(0, .) prior on every standard deviation
    prior_scale_spread: float = field(default=2.0, metadata={
        "help": "log-scale spread of the LogNormal(0, s) prior on the standard deviations "
                "(with --prior)"})

    def __post_init__(self):
        self.validate()

    def validate(self, num_data: int | None = None) -> None:
        """Raise :class:`InputError` naming the bad input and its fix; ``num_data`` = N."""
        if self.covariance_type not in COVARIANCE_TYPES:
            raise InputError(f"unknown covariance_type={self.covariance_type!r}; choose one of: "
                             + ", ".join(COVARIANCE_TYPES))
        if self.components < 1:
            raise InputError(f"components={self.components} must be at least 1")
        if self.dim < 1:
            raise InputError(f"dim={self.dim} must be at least 1 (the data need a column)")
        if not (self.reg_covar >= 0 and math.isfinite(self.reg_covar)):
            raise InputError(f"reg_covar={self.reg_covar} must be a finite number >= 0; "
                             "use e.g. 1e-6")
        for name in ("prior_concentration", "prior_mean_scale", "prior_scale_spread"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise InputError(f"{name}={value} must be a finite positive number")
        if num_data is not None:
            check_components(self.components, num_data)


def check_components(k: int, num_data: int) -> None:
    """A mixture (or K-means) needs 1 <= k <= N components."""
    if k < 1:
        raise InputError(f"components={k} must be at least 1")
    if k > num_data:
        raise InputError(f"components={k} exceeds the {num_data} datapoints; use at most "
                         f"{num_data}")


# ---------------------------------------------------------------------------------------------
# Checks shared by every closed form
# ---------------------------------------------------------------------------------------------


def _check_data(config: GMMConfig, x: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape[1] != config.dim:
        raise InputError(f"x has shape {tuple(x.shape)} but the model has dim={config.dim}; "
                         f"give an (N, {config.dim}) tensor")
    if not x.is_floating_point():
        raise InputError(f"x has dtype {x.dtype}; convert it to float32 or float64")


def _check_params(config: GMMConfig, params: Params) -> None:
    k, d = config.components, config.dim
    scale_shape = {"full": (k, d, d), "diag": (k, d), "spherical": (k,)}[config.covariance_type]
    expected = {"weights": (k,), "means": (k, d), SCALE_NAME[config.covariance_type]: scale_shape}
    for name, shape in expected.items():
        if name not in params:
            raise InputError(f"parameters lack {name!r}; a {config.covariance_type} mixture "
                             f"needs {', '.join(expected)}")
        if tuple(params[name].shape) != shape:
            raise InputError(f"parameter {name!r} has shape {tuple(params[name].shape)}, "
                             f"expected {shape} for components={k}, dim={d}")


# ---------------------------------------------------------------------------------------------
# Exact log-likelihood and responsibilities
# ---------------------------------------------------------------------------------------------


class _Components(NamedTuple):
    """Per-component constants of the log-density, computed once per call (K x D x D work).

    Rows are centred on the data's mean ``m`` (so that float32 rows far from the origin keep
    their precision) and whitened against all K components at once, component-major:
    ``y_k = (x - m) P_k + b_k`` with ``P_k = L_k^{-T}`` (full) or ``diag(1 / σ_k)``, and
    ``b_k = (m - μ_k) P_k``; then ``log λ_k N(x | μ_k, S_k) = log_const_k - |y_k|² / 2``.
    For full covariances the rows carry a trailing 1 and ``whiten_k = [[P_k, 0], [b_k, 1]]``,
    so that one batched GEMM does all of it and ``[y_k, 1]`` comes out: its weighted second
    moments hold the counts and first moments as well.
    """

    log_const: torch.Tensor  # (K, 1) log λ_k - D/2 log 2π - log det L_k
    whiten: torch.Tensor  # full: (K, D+1, D+1) = [[P_k, 0], [b_k, 1]]; else (K, 1, D) = 1/σ_k
    bias: torch.Tensor | None  # diag/spherical: (K, 1, D) = b_k; full: None (inside whiten)
    center: torch.Tensor  # (D,) the shift m


def _components(config: GMMConfig, params: Params, center: torch.Tensor) -> _Components:
    _check_params(config, params)
    weights, means = params["weights"], params["means"]
    k, d = means.shape
    if config.covariance_type == "full":
        scale_tril = params["scale_tril"]
        diagonal = scale_tril.diagonal(dim1=-2, dim2=-1)
    else:
        scale = params["scale"]
        diagonal = scale if config.covariance_type == "diag" else scale[:, None].expand(k, d)
    if not bool((diagonal > 0).all() & torch.isfinite(diagonal).all()):
        raise InputError(f"the {SCALE_NAME[config.covariance_type]!r} parameter has a "
                         "non-positive or non-finite scale, i.e. a singular covariance; raise "
                         "reg_covar or start from other parameters")
    log_const = (torch.log(weights) - 0.5 * d * math.log(2 * math.pi)
                 - torch.log(diagonal).sum(-1))[:, None]
    shift = center - means  # (K, D)
    if config.covariance_type == "full":
        identity = torch.eye(d, dtype=means.dtype, device=means.device).expand(k, d, d)
        precision_factor = torch.linalg.solve_triangular(
            scale_tril, identity, upper=False).transpose(-1, -2)  # P_k = L_k^{-T}, upper
        whiten = torch.zeros(k, d + 1, d + 1, dtype=means.dtype, device=means.device)
        whiten[:, :d, :d] = precision_factor
        whiten[:, d, :d] = (shift[:, None, :] @ precision_factor)[:, 0]  # b_k
        whiten[:, d, d] = 1.0  # carries the rows' 1 through: y's last column counts
        return _Components(log_const, whiten, None, center)
    inverse_scale = (1.0 / params["scale"]).reshape(k, 1, -1)
    return _Components(log_const, inverse_scale, shift[:, None, :] * inverse_scale, center)


def _augmented(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``[x - m, 1]``, shape ``(N, D + 1)``: centred rows with the constant the bias needs."""
    rows = torch.empty(x.shape[0], x.shape[1] + 1, dtype=x.dtype, device=x.device)
    torch.sub(x, center, out=rows[:, :-1])
    rows[:, -1] = 1.0
    return rows


def _whiten(config: GMMConfig, parts: _Components, rows: torch.Tensor) -> torch.Tensor:
    """``(n, D + 1)`` augmented rows -> ``(K, n, D)`` whitened differences to every component
    (full covariances: ``(K, n, D + 1)``, with a trailing 1)."""
    if config.covariance_type == "full":
        return torch.matmul(rows, parts.whiten)
    return torch.addcmul(parts.bias, rows[:, :-1], parts.whiten)


# Values per whitened row block (K x rows x D): about 1 MB of float32 on a CPU, so that a
# block stays in cache between the few operations that touch it; on a GPU, where every kernel
# launch costs more than the memory traffic, blocks of half a gigabyte.
BLOCK_VALUES = {"cpu": 2**18, "cuda": 2**27}


def _row_blocks(x: torch.Tensor, width: int):
    """Row ranges of ``x`` whose whitened blocks hold about ``BLOCK_VALUES`` values."""
    budget = BLOCK_VALUES.get(x.device.type, BLOCK_VALUES["cuda"])
    rows = max(256, budget // max(width, 1))
    for start in range(0, x.shape[0], rows):
        yield slice(start, min(start + rows, x.shape[0]))


def _log_joint_blocks(config: GMMConfig, parts: _Components, x: torch.Tensor):
    """Yield ``([x - m, 1] : (n, D + 1), whitened y : (K, n, D or D + 1), log λ_k N(x | k) :
    (K, n))`` per row block."""
    augmented = _augmented(x, parts.center)
    # |[y, 1]|² - 1 = |y|²: the trailing 1 costs no precision that a log-density needs
    offset = parts.log_const + (0.5 if config.covariance_type == "full" else 0.0)
    for rows in _row_blocks(x, config.components * config.dim):
        block = augmented[rows]
        y = _whiten(config, parts, block)
        distance = torch.linalg.vector_norm(y, dim=-1)
        yield block, y, torch.addcmul(offset, distance, distance, value=-0.5)


def _prepare(config: GMMConfig, params: Params, x: torch.Tensor) -> _Components:
    _check_data(config, x)
    return _components(config, params, x.mean(0))


def _normalize(joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, n)`` log joint -> ``(log p(x) : (n,), responsibilities : (K, n))``, overwriting
    ``joint``. Component-major, so that every reduction over the K components is a vectorized
    operation across rows.

    Responsibilities are floored at eps² of the row's largest (e^-32 in float32, e^-72 in
    float64): that is far below what the sums can resolve, and it keeps every product of a
    responsibility and whitened rows away from subnormal numbers, whose arithmetic is a
    hundred times slower on a CPU.
    """
    peak = joint.amax(0)
    floor = 2 * math.log(torch.finfo(joint.dtype).eps)
    weights = joint.sub_(peak).clamp_(min=floor).exp_()
    total = weights.sum(0)
    return peak + total.log(), weights.div_(total)


def log_joint(config: GMMConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``log λ_k + log N(x_n | μ_k, S_k)`` for ``x : (N, D)``, shape ``(N, K)``, nats."""
    parts = _prepare(config, params, x)
    return torch.cat([block for *_, block in _log_joint_blocks(config, parts, x)], 1).T


def log_marginal(config: GMMConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Exact ``log p(x_n)`` for ``x : (N, D)``, shape ``(N,)``, in nats."""
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
# The M-step
# ---------------------------------------------------------------------------------------------


class MixtureStatistics(NamedTuple):
    """Posterior-weighted sufficient statistics of the data, about per-component centres.

    With ``r_nk`` the responsibilities and ``c_k`` the centres (the previous means, or the
    data's mean, as the E-step found convenient):
    ``counts = Σ_n r_nk`` (K,), ``first = Σ_n r_nk (x_n - c_k)`` (K, D), ``second =
    Σ_n r_nk (x_n - c_k)(x_n - c_k)ᵀ`` (K, D, D) for full covariances, or its diagonal (K, D).
    Moments about a nearby centre, not about the origin, keep float32 free of cancellation.
    """

    counts: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    center: torch.Tensor
    num_data: int


def sufficient_statistics(config: GMMConfig, x: torch.Tensor,
                          resp: torch.Tensor) -> MixtureStatistics:
    """The statistics of ``x : (N, D)`` under responsibilities ``resp : (N, K)``, about the
    weighted means."""
    _check_data(config, x)
    if resp.shape != (x.shape[0], config.components):
        raise InputError(f"responsibilities have shape {tuple(resp.shape)}, expected "
                         f"({x.shape[0]}, {config.components})")
    counts = resp.sum(0)
    center = (resp.T @ x) / (counts + 10 * torch.finfo(x.dtype).eps)[:, None]
    first = resp.T @ x - counts[:, None] * center
    k, d = center.shape
    full = config.covariance_type == "full"
    second = x.new_zeros((k, d, d) if full else (k, d))
    for rows in _row_blocks(x, k * d):
        diff = x[rows, None, :] - center  # (n, K, D)
        weighted = diff * resp[rows, :, None]
        if full:
            second.baddbmm_(weighted.permute(1, 2, 0), diff.transpose(0, 1))
        else:
            second.add_((weighted * diff).sum(0))
    return MixtureStatistics(counts, first, second, center, x.shape[0])


def maximize(config: GMMConfig, x: torch.Tensor | None,
             statistics: MixtureStatistics) -> Params:
    """The parameters that maximize the expected complete-data log-likelihood given the
    statistics, with ``reg_covar`` on the covariance diagonals (scikit-learn's M-step).

    Raises :class:`InputError` when a covariance is singular (duplicated points, or a
    component on a lower-dimensional subspace, with too small a ``reg_covar``)."""
    counts, first, second, center, num_data = statistics
    eps = torch.finfo(center.dtype).eps
    totals = counts + 10 * eps  # as scikit-learn: an empty component keeps finite means
    means = (first + counts[:, None] * center) / totals[:, None]  # Σ r x / totals
    weights = totals / num_data
    shift = means - center  # move the second moments from the centres to the new means
    d = center.shape[1]
    if config.covariance_type == "full":
        cross = first[:, :, None] * shift[:, None, :]
        scatter = (second - cross - cross.transpose(1, 2)
                   + counts[:, None, None] * shift[:, :, None] * shift[:, None, :])
        covariance = scatter / totals[:, None, None] + config.reg_covar * torch.eye(
            d, dtype=scatter.dtype, device=scatter.device)
        scale_tril, info = torch.linalg.cholesky_ex(covariance)
        pivots = scale_tril.diagonal(dim1=-2, dim2=-1).square()
        variances = covariance.diagonal(dim1=-2, dim2=-1)
    else:
        scatter = second - 2 * first * shift + counts[:, None] * shift.square()
        variances = scatter / totals[:, None] + config.reg_covar
        if config.covariance_type == "spherical":
            variances = variances.mean(1, keepdim=True)
        pivots, info = variances, torch.zeros_like(counts, dtype=torch.int32)
    # A pivot at rounding level is a singular covariance even where Cholesky "succeeds":
    # rounding noise of points equal to μ is about (eps |μ|)², of a flat direction eps * var.
    floor = d * eps * variances.amax(-1) + (4 * eps * means.abs().amax(-1)).square()
    singular = (info > 0) | ~(pivots > floor[:, None]).all(-1)
    if bool(singular.any()):
        k = int(singular.nonzero()[0, 0])
        raise InputError(
            f"component {k} of {config.components} has a singular covariance: its "
            f"{float(counts[k]):.4g} points are duplicates or lie on a lower-dimensional "
            f"subspace, and reg_covar={config.reg_covar:g} does not lift it; raise reg_covar "
            "(e.g. 1e-6 for standardized data), use fewer components, or remove duplicated "
            "points")
    if config.covariance_type == "full":
        scale = {"scale_tril": scale_tril}
    elif config.covariance_type == "diag":
        scale = {"scale": variances.sqrt()}
    else:
        scale = {"scale": variances.sqrt()[:, 0]}
    return {"weights": weights, "means": means, **scale}


def m_step(config: GMMConfig, x: torch.Tensor, resp: torch.Tensor) -> Params:
    """Weighted means, covariances (+ ``reg_covar``) and weights given ``resp : (N, K)``."""
    return maximize(config, x, sufficient_statistics(config, x, resp))


def e_step(config: GMMConfig, params: Params,
           x: torch.Tensor) -> tuple[MixtureStatistics, torch.Tensor]:
    """EM's E-step, fused with the statistics the M-step needs.

    Returns the posterior-weighted statistics of ``x : (N, D)`` (see :class:`MixtureStatistics`)
    and the mean ``log p(x)`` at ``params`` (nats per datapoint, a 0-dim tensor).

    Two exact routes. EM calls this with the same ``x`` every iteration, so where its quadratic
    features fit in memory (:data:`FEATURE_VALUES`) and their rounding error is provably below
    :data:`QUADRATIC_ERROR` nats, the features are built once and each iteration is two GEMMs and
    a logsumexp (:func:`_e_step_quadratic`). Otherwise every row block is whitened against the
    components (:func:`_e_step_whitened`), which is float32-safe at any offset or conditioning.
    """
    _check_data(config, x)
    features = _quadratic_features(config, x)
    if features is not None:
        weights, bound = _quadratic_weights(config, params, features)
        if bound <= QUADRATIC_ERROR:
            return _e_step_quadratic(config, params, x, features, weights)
    return _e_step_whitened(config, params, x)


# ---------------------------------------------------------------------------------------------
# The E-step on quadratic features, for data seen again and again
# ---------------------------------------------------------------------------------------------

# Most values of quadratic features kept between EM iterations (256 MB of float32).
FEATURE_VALUES = 2**26
# Largest worst-case rounding error of a log-density through the quadratic features, in nats;
# beyond it (float32 data far from their mean, or nearly singular covariances) E-steps whiten.
QUADRATIC_ERROR = 1e-3


class _Features(NamedTuple):
    """``φ(x - m)ᵀ``, shape ``(F, N)``: the products ``c_i c_j`` (i ≤ j; only ``c_i²`` for
    diagonal covariances), then ``c``, then 1, for the rows centred on their mean ``m``."""

    data: weakref.ref  # the tensor they belong to
    version: int  # its in-place version counter when they were built
    full: bool
    values: torch.Tensor  # (F, N)
    center: torch.Tensor  # (D,) m
    radius: float  # max_n |x_n - m|²


_FEATURES: list[_Features] = []  # at most one entry: the data of the EM run in progress


def _quadratic_features(config: GMMConfig, x: torch.Tensor) -> _Features | None:
    full = config.covariance_type == "full"
    n, d = x.shape
    quadratic = d * (d + 1) // 2 if full else d
    if n * (quadratic + d + 1) > FEATURE_VALUES:
        return None
    if _FEATURES:
        cached = _FEATURES[0]
        if cached.data() is x and cached.version == x._version and cached.full == full:
            return cached
    center = x.mean(0)
    rows = (x - center).T.contiguous()  # (D, N): gathering whole rows is a copy of memory
    if full:
        first, second = torch.triu_indices(d, d, device=x.device)
        products = rows[first] * rows[second]
    else:
        products = rows.square()
    values = torch.cat([products, rows, rows.new_ones(1, n)])
    features = _Features(weakref.ref(x), x._version, full, values, center,
                         float(rows.square().sum(0).max()))
    _FEATURES[:] = [features]
    weakref.finalize(x, _forget_dead_features)  # free them with the data
    return features


def _forget_dead_features() -> None:
    _FEATURES[:] = [features for features in _FEATURES if features.data() is not None]


def _quadratic_weights(config: GMMConfig, params: Params,
                       features: _Features) -> tuple[torch.Tensor, float]:
    """``W : (K, F)`` with ``W φ(c) = log λ_k N(x | μ_k, S_k)`` and an estimate of its largest
    rounding error, in nats: ``eps * max(|c|², |δ|²) * max_k |Λ_k|_F`` with ``c = x - m``,
    ``δ = μ - m``, which bounds ``eps Σ_ij |Λ_ij c_i c_j|``, the size of the terms that cancel.

    ``-½ (c - δ)ᵀ Λ (c - δ) = -½ cᵀΛc + cᵀΛδ - ½ δᵀΛδ``, and ``cᵀΛc`` counts each ``c_i c_j``
    with i < j twice."""
    parts = _components(config, params, features.center)
    means = params["means"]
    k, d = means.shape
    delta = means - features.center
    if config.covariance_type == "full":
        precision_factor = parts.whiten[:, :d, :d]  # P_k = L_k^{-T}: Λ_k = P_k P_kᵀ
        precision = precision_factor @ precision_factor.transpose(-1, -2)
        first, second = torch.triu_indices(d, d, device=means.device)
        quadratic = -0.5 * precision[:, first, second] * (2.0 - (first == second).to(means.dtype))
        linear = (precision @ delta[:, :, None])[..., 0]
        norm = torch.linalg.matrix_norm(precision)  # Frobenius
    else:
        inverse_variance = parts.whiten[:, 0, :].square().expand(k, d)
        quadratic = -0.5 * inverse_variance
        linear = inverse_variance * delta
        norm = torch.linalg.vector_norm(inverse_variance, dim=-1)
    constant = parts.log_const[:, 0] - 0.5 * (linear * delta).sum(-1)
    weights = torch.cat([quadratic, linear, constant[:, None]], 1)
    scale = max(features.radius, float(delta.square().sum(-1).max()))
    bound = torch.finfo(means.dtype).eps * scale * float(norm.max())
    return weights, bound


def _e_step_quadratic(config: GMMConfig, params: Params, x: torch.Tensor,
                      features: _Features, weights: torch.Tensor):
    """Two GEMMs over the features: ``W φ`` gives every log joint, and ``R φᵀ`` every
    responsibility-weighted sum of ``c_i c_j``, ``c`` and 1, i.e. all statistics about ``m``."""
    k, d = config.components, config.dim
    log_px, resp = _normalize(weights @ features.values)  # (K, N), component-major
    sums = resp @ features.values.T  # (K, F)
    quadratic = sums.shape[1] - d - 1
    first, counts = sums[:, quadratic:-1], sums[:, -1]
    if config.covariance_type == "full":
        rows, columns = torch.triu_indices(d, d, device=x.device)
        second = sums.new_zeros(k, d, d)
        second[:, rows, columns] = sums[:, :quadratic]
        second[:, columns, rows] = sums[:, :quadratic]
    else:
        second = sums[:, :quadratic]
    center = features.center.expand(k, d)
    return MixtureStatistics(counts, first, second, center, x.shape[0]), log_px.mean()


# ---------------------------------------------------------------------------------------------
# The E-step by whitened row blocks, float32-safe
# ---------------------------------------------------------------------------------------------


def _e_step_whitened(config: GMMConfig, params: Params,
                     x: torch.Tensor) -> tuple[MixtureStatistics, torch.Tensor]:
    """One pass over ``x`` in cache-sized row blocks. Per block: one batched GEMM whitens the
    rows against all K components, a logsumexp over components normalizes, and one batched GEMM
    sums the responsibility-weighted moments of the whitened rows, which are mapped back with
    ``L_k`` at the end. Four large operations per block and no small GEMM: on a busy machine
    every multi-threaded operation waits for a core.
    """
    k, d = config.components, config.dim
    full = config.covariance_type == "full"
    total = x.new_zeros(())
    # full: Σ r [y, 1]ᵀ[y, 1] holds Σ r y yᵀ, Σ r y and Σ r; diag: Σ r y², Σ r y, Σ r
    second = x.new_zeros((k, d + 1, d + 1) if full else (k, d))
    first, counts = x.new_zeros(k, d), x.new_zeros(k)
    parts = _prepare(config, params, x)
    for _, y, joint in _log_joint_blocks(config, parts, x):
        log_px, resp = _normalize(joint)
        total += log_px.sum()
        weighted = y * resp[:, :, None]
        if full:
            second.baddbmm_(weighted.transpose(1, 2), y)
        else:
            second.add_((weighted * y).sum(1))
            first.add_(weighted.sum(1))
            counts.add_(resp.sum(1))
    means = params["means"]
    # back from whitened to data coordinates, about the current means μ_k:
    # x - μ_k = y L_kᵀ (full) or y σ_k, so Σ r (x-μ)(x-μ)ᵀ = L_k (Σ r yᵀy) L_kᵀ
    if full:
        scale_tril = params["scale_tril"]
        counts = second[:, d, d]
        first = (scale_tril @ second[:, :d, d:])[..., 0]
        second = scale_tril @ second[:, :d, :d] @ scale_tril.transpose(-1, -2)
    else:
        scale = params["scale"].reshape(k, -1)
        first, second = first * scale, second * scale.square()
    return MixtureStatistics(counts, first, second, means, x.shape[0]), total / x.shape[0]


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
    if config.covariance_type == "full":
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
# Starting points: k-means++ and Lloyd's algorithm (K-means is EM's hard-assignment limit)
# ---------------------------------------------------------------------------------------------


def squared_distances(x: torch.Tensor, centers: torch.Tensor,
                      x_squared: torch.Tensor | None = None) -> torch.Tensor:
    """``|x_n - c_j|²`` for ``x : (N, D)``, ``centers : (J, D)``, shape ``(N, J)``, one GEMM."""
    if x_squared is None:
        x_squared = x.square().sum(1)
    cross = torch.addmm(centers.square().sum(1), x, centers.T, alpha=-2.0)
    return cross.add_(x_squared[:, None]).clamp_min_(0.0)


def kmeans_plus_plus(x: torch.Tensor, k: int, *, generator: torch.Generator | None = None,
                     local_trials: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's variant).

    Each new centre is the best, by total squared distance, of ``local_trials`` (default
    ``2 + log k``) candidates drawn with probability proportional to the squared distance to
    the nearest centre so far. Returns ``(centers : (k, D), indices : (k,))``.
    """
    num_data = x.shape[0]
    check_components(k, num_data)
    trials = local_trials or 2 + int(math.log(k))
    x_squared = x.square().sum(1)
    first = torch.randint(num_data, (1,), generator=generator, device=x.device)
    indices = [first]
    closest = squared_distances(x, x[first], x_squared)[:, 0]
    for _ in range(1, k):
        weights = closest if bool(closest.sum() > 0) else torch.ones_like(closest)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        trial = torch.minimum(closest[:, None], squared_distances(x, x[candidates], x_squared))
        best = torch.argmin(trial.sum(0))
        closest = trial[:, best]
        indices.append(candidates[best].reshape(1))
    indices = torch.cat(indices)
    return x[indices].clone(), indices


def nearest_centers(x: torch.Tensor, centers: torch.Tensor,
                    x_squared: torch.Tensor | None = None) -> torch.Tensor:
    """The index of the nearest centre of every row, shape ``(N,)``."""
    return squared_distances(x, centers, x_squared).argmin(1)


def _cluster_means(x, labels, centers, x_squared):
    k = centers.shape[0]
    counts = torch.bincount(labels, minlength=k)
    if bool((counts == 0).any()):
        # scikit-learn's remedy: an empty cluster takes the point farthest from its centre
        empty = (counts == 0).nonzero()[:, 0]
        far = (x - centers[labels]).square().sum(1).topk(empty.numel()).indices
        labels = labels.clone()
        labels[far] = empty
        counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros_like(centers).index_add_(0, labels, x)
    return sums / counts[:, None].to(x.dtype)


class LloydResult(NamedTuple):
    centers: torch.Tensor  # (K, D)
    labels: torch.Tensor  # (N,) index of each row's centre
    inertia: float  # Σ_n |x_n - c_{label_n}|²
    n_iter: int  # Lloyd iterations run
    converged: bool  # labels stopped changing, or the centres moved less than tol


def lloyd(x: torch.Tensor, centers: torch.Tensor, *, max_iter: int = 300,
          tol: float = 0.0) -> LloydResult:
    """Lloyd's algorithm from ``centers : (K, D)``: assign every row to its nearest centre,
    move each centre to its rows' mean; stop when no label changes or the total squared centre
    shift is at most ``tol`` (absolute, as scikit-learn's scaled tolerance)."""
    x_squared = x.square().sum(1)
    previous = None
    converged = strict = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
        labels = nearest_centers(x, centers, x_squared)
        moved = _cluster_means(x, labels, centers, x_squared)
        shift = float((moved - centers).square().sum())
        centers = moved
        if previous is not None and torch.equal(labels, previous):
            converged = strict = True
            break
        if shift <= tol:
            converged = True
            break
        previous = labels
    if not strict:
        labels = nearest_centers(x, centers, x_squared)
    inertia = float((x - centers[labels]).square().sum())
    return LloydResult(centers, labels, inertia, n_iter, converged)


def initialize(config: GMMConfig, x: torch.Tensor, generator: torch.Generator | None = None,
               method: str = "kmeans++") -> Params:
    """Starting parameters from the data: one M-step from the hard assignment to k-means++
    centres (``"kmeans++"``), to Lloyd's converged centres (``"kmeans"``), or from uniform
    random responsibilities (``"random"``, as scikit-learn)."""
    config.validate(x.shape[0])
    _check_data(config, x)
    k = config.components
    if method in ("kmeans++", "kmeans"):
        centers, _ = kmeans_plus_plus(x, k, generator=generator)
        if method == "kmeans":
            centers = lloyd(x, centers).centers
        labels = nearest_centers(x, centers)
        resp = torch.nn.functional.one_hot(labels, k).to(x.dtype)
    elif method == "random":
        resp = torch.rand(x.shape[0], k, generator=generator, dtype=x.dtype, device=x.device)
        resp /= resp.sum(1, keepdim=True)
    else:
        raise InputError(f"unknown init {method!r}; choose one of: " + ", ".join(INIT_METHODS))
    return m_step(config, x, resp)


def init_params(config: GMMConfig, x: torch.Tensor,
                generator: torch.Generator | None = None) -> Params:
    """SVI's starting point: the k-means++ start EM uses (restarts vary the generator)."""
    return initialize(config, x, generator, "kmeans++")


def _em_initialize(config: GMMConfig, x: torch.Tensor, generator, method) -> Params:
    if config.prior:
        raise InputError("EM here maximizes the likelihood and ignores priors; for the MAP "
                         "estimate under --prior use --inference svi, or drop --prior")
    return initialize(config, x, generator, method)


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
    if config.covariance_type == "full":
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
        scale = {"full": torch.eye(d).expand(k, d, d).clone(), "diag": torch.ones(k, d),
                 "spherical": torch.ones(k)}[self.config.covariance_type]
        return {"weights": torch.full((k,), 1.0 / k, **options), "means": means.to(**options),
                SCALE_NAME[self.config.covariance_type]: scale.to(**options)}

    def current_params(self, like: torch.Tensor | None = None) -> Params:
        """The ``pyro.param`` values now (creating them from the initial values if new)."""
        initial = self._initial(like)
        scale_name = SCALE_NAME[self.config.covariance_type]
        scale_constraint = (constraints.lower_cholesky if scale_name == "scale_tril"
                            else constraints.positive)
        return {
            "weights": pyro.param("weights", initial["weights"], constraint=constraints.simplex),
            "means": pyro.param("means", initial["means"]),
            scale_name: pyro.param(scale_name, initial[scale_name], constraint=scale_constraint),
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
        with pyro.plate("data", size, subsample_size=subsample_size,
                        device=params["means"].device) as index:
            z = pyro.sample("z", dist.Categorical(params["weights"]),
                            infer={"enumerate": "parallel"})
            return pyro.sample("x", component_distribution(self.config, params, z),
                               obs=None if x is None else x[index])


def component_distribution(config: GMMConfig, params: Params,
                           z: torch.Tensor) -> dist.TorchDistribution:
    """``N(μ_z, S_z)`` with event shape ``(D,)`` for any batch of assignments ``z``."""
    means = params["means"][z]
    if config.covariance_type == "full":
        return dist.MultivariateNormal(means, scale_tril=params["scale_tril"][z])
    scale = params["scale"][z]
    if config.covariance_type == "spherical":
        scale = scale[..., None].expand(means.shape)
    return dist.Normal(means, scale).to_event(1)


def make_model(config: GMMConfig, params: Params | None = None) -> GaussianMixtureModel:
    """The Pyro model for ``config``, its ``pyro.param`` sites starting at ``params``."""
    return GaussianMixtureModel(config, params)


GUIDE_NAMES = ("exact", "mean-field", "amortized", "enumerate")


def _guide_factory(name: str):
    """``(model, config) -> guide`` for the guide ``name`` of :mod:`guides.gmm`, imported when
    a guide is built: guides import the zoo, so the zoo may not import them at load time."""

    def factory(model, config):
        from guides.gmm import GUIDES

        return GUIDES[name](model, config)

    factory.__name__ = factory.__qualname__ = f"{name.replace('-', '_')}_guide"
    factory.per_datapoint = name == "mean-field"  # free parameters per training row
    return factory


SPEC = register(ModelSpec(
    name="gmm",
    summary="Gaussian mixture: p(x) = Σ_k λ_k N(x | μ_k, S_k), by EM or SVI",
    config_class=GMMConfig,
    make_model=make_model,
    guides={name: _guide_factory(name) for name in GUIDE_NAMES},
    default_data="old-faithful",
    default_guide="exact",
    default_elbo={"exact": "Trace_ELBO", "mean-field": "Trace_ELBO",
                  "amortized": "Trace_ELBO", "enumerate": "TraceEnum_ELBO"},
    init_params=init_params,
    log_marginal=log_marginal,
    posterior=posterior,
    sample=sample,
    em=EMSteps(init=_em_initialize, e_step=e_step, m_step=maximize, init_methods=INIT_METHODS),
    synthetic=synthetic,
    local_sites=("z",),
    svi_defaults={"steps": 1000, "lr": 0.05},
    notes="exact log p(x) and p(z | x): the exact guide's ELBO is tight",
))
