"""Probabilistic PCA and factor analysis: the linear-Gaussian latent-variable model.

    z_n ~ N(0, I_q),    x_n | z_n ~ N(W z_n + mu, Psi),    n = 1..N,  x_n in R^D,  q < D
    PPCA: Psi = sigma^2 I_D (one noise variance);  factor analysis: Psi = diag(psi_1..psi_D).

Everything is Gaussian, so everything is known exactly:

- marginal   x_n ~ N(mu, C),  C = W W^T + Psi  (D x D, never formed: Woodbury and the matrix
  determinant lemma give log p(x) in O(N D q));
- posterior  z_n | x_n ~ N(G W^T Psi^-1 (x_n - mu), G),  G = (I_q + W^T Psi^-1 W)^-1  (q x q).
  For PPCA G = sigma^2 M^-1 with the q x q matrix M = W^T W + sigma^2 I_q (not W W^T + sigma^2 I,
  which is D x D: ``tests/zoo/test_ppca.py`` checks against brute-force conditioning);
- maximum likelihood (PPCA, Tipping & Bishop 1999): mu = mean, W = U_q (L_q - sigma^2 I)^1/2 from
  the top q eigenpairs of the sample covariance S, sigma^2 = mean of the D - q discarded
  eigenvalues. Factor analysis has no closed form; EM fits both.

Parameters, the one representation every strategy produces and evaluation consumes (a dict
keyed by the model's ``pyro.param`` names, constrained values):

    {"loc": (D,) mu,  "weight": (D, q) W,  "noise": () sigma^2 for PPCA | (D,) psi for FA}

``noise`` holds variances, not standard deviations. With ``prior_precision = alpha > 0`` every
entry of W gets a N(0, 1/alpha) prior: SVI and EM then find the MAP estimate (the model adds
log p(W) as a ``pyro.factor``; EM's history is the penalized mean log p(x) + log p(W) / N).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from zoo.errors import InputError
from zoo.registry import DATA_PLATE, EMSteps, ModelSpec, Params, register

PARAM_NAMES = ("loc", "weight", "noise")
_CHUNK_ROWS = 65536  # rows per block of the centred covariance on the CPU
_MAX_CANCELLATION = 3e-5  # largest relative error the one-product covariance may have


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PPCAConfig:
    """Probabilistic PCA: isotropic noise sigma^2 I."""

    dim: int = field(default=2, metadata={"cli": False})  # D, filled in from the data
    latent_dim: int = field(  # q, the number of latent dimensions
        default=2, metadata={"help": "latent dimensions q (at least 1, below the data dimension)"})
    prior_precision: float = field(  # alpha of a N(0, 1/alpha) prior on W; 0: maximum likelihood
        default=0.0,
        metadata={"help": "precision of a N(0, 1/alpha) prior on every entry of W; 0 means "
                          "maximum likelihood, > 0 gives the MAP estimate (EM and SVI)"})

    noise: ClassVar[str] = "isotropic"  # the noise covariance: sigma^2 I

    def validate(self, num_data: int) -> None:
        """Raise :class:`InputError` if this config cannot be fitted to ``num_data`` rows."""
        q, d = self.latent_dim, self.dim
        if q < 1:
            raise InputError(f"latent_dim={q} must be at least 1")
        if q >= d:
            raise InputError(f"latent_dim={q} must be below the data dimension {d}; "
                             f"use at most {d - 1}")
        if num_data <= q + 1:
            raise InputError(
                f"latent_dim={q} needs at least {q + 2} datapoints (N centred points span at most "
                f"N - 1 directions, and q of them leave none for the noise), got {num_data}; "
                f"use latent_dim at most {max(num_data - 2, 0)} or more data")
        if not self.prior_precision >= 0:
            raise InputError(f"prior_precision={self.prior_precision} must be >= 0 (0: no prior)")


@dataclass(frozen=True)
class FactorAnalysisConfig(PPCAConfig):
    """Factor analysis: diagonal noise diag(psi_1..psi_D); every other field as for PPCA."""

    noise: ClassVar[str] = "diagonal"  # the noise covariance: diag(psi)


def _check_data(config: PPCAConfig, x: torch.Tensor) -> None:
    if isinstance(x, Moments):  # a summary of rows (EM on shards or chunks)
        if x.mean.shape != (config.dim,):
            raise InputError(f"data of dimension {x.mean.shape[0]} do not match dim="
                             f"{config.dim}; build the config from the data")
        config.validate(x.num_data)
        return
    if x.dim() != 2 or x.shape[1] != config.dim:
        raise InputError(f"data of shape {tuple(x.shape)} do not match dim={config.dim}; build "
                         "the config from the data (spec.make_config(x.shape[1], ...))")
    if not x.is_floating_point():
        raise InputError(f"data of dtype {x.dtype} must be floating point (float32 or float64)")
    config.validate(x.shape[0])


def _check_columns(config: PPCAConfig, variances: torch.Tensor) -> None:
    """Factor analysis gives every column its own noise variance: a constant column drives it
    to 0 and the likelihood to infinity."""
    if config.noise != "diagonal":
        return
    floor = torch.finfo(variances.dtype).eps * variances.max()
    constant = torch.nonzero(variances <= floor).flatten().tolist()
    if constant:
        shown = ", ".join(map(str, constant[:10])) + (", ..." if len(constant) > 10 else "")
        raise InputError(
            f"factor analysis: {len(constant)} column(s) of the data are constant (columns "
            f"{shown}); their noise variance psi would shrink to 0 and the likelihood grow "
            "without bound. Drop the constant columns, or use ppca, whose noise is shared")


# --- data moments ---------------------------------------------------------------------------


class Moments(NamedTuple):
    """The sufficient statistics of the data: ``mean (D,)`` and biased ``covariance (D, D)``."""

    num_data: int
    mean: torch.Tensor
    covariance: torch.Tensor


def moments(x: torch.Tensor) -> Moments:
    """Mean and covariance (divided by N) of ``x : (N, D)``, in ``x``'s dtype.

    First as scikit-learn does, with one matrix product: S = X^T X / N - mean mean^T, a single
    pass over the data. That subtraction cancels log10(E[x_d^2] / var_d) digits in column d;
    when it would leave a relative error above ``_MAX_CANCELLATION`` (a mean large against the
    spread: beyond 16 standard deviations in float32, 4e5 in float64), the covariance is
    computed again from rows centred block by block on the mean just found.
    """
    num_data, dim = x.shape
    mean = x.sum(0) / num_data
    gram = x.T @ x
    covariance = gram / num_data - torch.outer(mean, mean)
    second_moments = gram.diagonal() / num_data
    variances = covariance.diagonal()
    eps = torch.finfo(x.dtype).eps
    if bool((second_moments * eps > _MAX_CANCELLATION * variances.clamp_min(0)).any()):
        covariance = _centred_covariance(x, mean)
    return Moments(num_data, mean, 0.5 * (covariance + covariance.T))


def _centred_covariance(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    num_data, dim = x.shape
    rows = num_data if x.is_cuda else _CHUNK_ROWS
    gram = x.new_zeros(dim, dim)
    total = x.new_zeros(dim)
    buffer = x.new_empty(min(rows, num_data), dim)
    for start in range(0, num_data, rows):
        block = x[start:start + rows]
        centred = torch.sub(block, shift, out=buffer[: block.shape[0]])
        gram.addmm_(centred.T, centred)
        total += centred.sum(0)
    offset = total / num_data  # ~0: the shift is the mean, up to rounding
    return gram / num_data - torch.outer(offset, offset)


def summarize(config: PPCAConfig, x: torch.Tensor) -> Moments:
    """The rows' :class:`Moments`: all EM needs of them. EM on the shards of a process group or
    the chunks of a memory-mapped file combines these (:func:`combine_moments`) once and then
    runs on the summary, passing over the rows no more."""
    _check_data(config, x)
    return moments(x)


def combine_moments(parts) -> Moments:
    """The moments of the union of disjoint row sets (Chan, Golub & LeVeque): the pooled mean,
    and the pooled covariance with the between-part scatter added exactly."""
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    num_data = sum(p.num_data for p in parts)
    mean = sum(p.num_data * p.mean for p in parts) / num_data
    covariance = sum(p.num_data * (p.covariance + torch.outer(p.mean - mean, p.mean - mean))
                     for p in parts) / num_data
    return Moments(num_data, mean, 0.5 * (covariance + covariance.T))


_last_moments: dict = {}


def data_moments(x: torch.Tensor | Moments) -> Moments:
    """:func:`moments` of ``x``, remembered for the last tensor seen (EM asks every iteration).

    The memo holds a weak reference and the tensor's version counter, so a different tensor or
    an in-place change of this one recomputes. A :class:`Moments` summary is its own.
    """
    if isinstance(x, Moments):
        return x
    key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device, x._version)
    ref = _last_moments.get("ref")
    if ref is not None and ref() is x and _last_moments["key"] == key:
        return _last_moments["value"]
    value = moments(x)
    _last_moments.update(ref=weakref.ref(x), key=key, value=value)
    return value


# --- closed forms ---------------------------------------------------------------------------


class _Woodbury(NamedTuple):
    psi: torch.Tensor  # (D,) noise variances
    scaled: torch.Tensor  # (D, q) Psi^-1 W
    cholesky: torch.Tensor  # (q, q) lower Cholesky factor of I + W^T Psi^-1 W
    logdet: torch.Tensor  # () log |W W^T + Psi|


def _woodbury(params: Params) -> _Woodbury:
    weight = params["weight"]
    dim, latent = weight.shape
    psi = params["noise"].expand(dim)
    scaled = weight / psi[:, None]
    inner = torch.eye(latent, dtype=weight.dtype, device=weight.device) + weight.T @ scaled
    cholesky = torch.linalg.cholesky(inner)
    logdet = 2 * cholesky.diagonal().log().sum() + psi.log().sum()
    return _Woodbury(psi, scaled, cholesky, logdet)


def log_marginal(config: PPCAConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    """log p(x_n) in nats for every row of ``x : (N, D)``; returns ``(N,)``.

    C^-1 = Psi^-1 - Psi^-1 W (I + W^T Psi^-1 W)^-1 W^T Psi^-1 (Woodbury) and
    |C| = |I + W^T Psi^-1 W| |Psi| (determinant lemma): O(N D q), no D x D matrix.
    """
    parts = _woodbury(params)
    residual = x - params["loc"]
    projected = torch.linalg.solve_triangular(
        parts.cholesky, (residual @ parts.scaled).T, upper=False)  # (q, N)
    quadratic = (residual.square() / parts.psi).sum(-1) - projected.square().sum(0)
    return -0.5 * (x.shape[-1] * math.log(2 * math.pi) + parts.logdet + quadratic)


def posterior(config: PPCAConfig, params: Params, x: torch.Tensor) -> dist.MultivariateNormal:
    """p(z_n | x_n) for every row of ``x : (N, D)``: batch shape (N,), event shape (q,).

    Covariance G = (I + W^T Psi^-1 W)^-1 (= sigma^2 (W^T W + sigma^2 I)^-1 for PPCA), the same
    for every row; mean G W^T Psi^-1 (x_n - mu).
    """
    parts = _woodbury(params)
    covariance = torch.cholesky_inverse(parts.cholesky)
    mean = (x - params["loc"]) @ parts.scaled @ covariance
    scale_tril = torch.linalg.cholesky(covariance)
    return dist.MultivariateNormal(mean, scale_tril=scale_tril.expand(x.shape[0], -1, -1))


def closed_form(config: PPCAConfig, x: torch.Tensor) -> Params:
    """Maximum-likelihood PPCA parameters (Tipping & Bishop) from one pass over ``x : (N, D)``.

    The sample covariance (divided by N) is eigendecomposed; W = U_q (L_q - sigma^2)^1/2 with
    each column's largest entry positive, sigma^2 = mean of the discarded eigenvalues.
    """
    _check_data(config, x)
    if config.noise != "isotropic":
        raise InputError("factor analysis has no closed form; use --inference em or svi")
    if config.prior_precision > 0:
        raise InputError(f"prior_precision={config.prior_precision} asks for a MAP estimate, "
                         "which has no closed form; use --inference em or svi")
    q = config.latent_dim
    params, values = tipping_bishop(x, q)
    if params["noise"] <= values[0] * torch.finfo(x.dtype).eps:
        raise InputError(f"the data lie in a subspace of at most {q} dimensions, so the noise "
                         f"variance is 0; use latent_dim below {q} or data with noise")
    return params


def tipping_bishop(x: torch.Tensor, latent_dim: int) -> tuple[Params, torch.Tensor]:
    """The maximum-likelihood PPCA parameters of ``x : (N, D)`` for any ``latent_dim`` from 0
    to D, unchecked (``noise`` is 0 where q >= min(N - 1, D)), and the covariance's
    eigenvalues (D,), largest first. :func:`closed_form` is this with the zoo's checks."""
    data = moments(x)
    # a D x D eigendecomposition: float64 costs nothing here and keeps small eigenvalues exact
    values, vectors = torch.linalg.eigh(data.covariance.double())
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    q = latent_dim
    # N centred rows span at most N - 1 directions: beyond them the eigenvalues are exactly 0
    # (numerically, rounding), and so is the noise where q reaches the rank
    rank = min(data.num_data - 1, values.shape[0])
    noise = values[q:].mean() if q < rank else values.new_zeros(())
    weight = vectors[:, :q] * (values[:q] - noise).clamp_min(0).sqrt()
    sign = torch.sign(weight.gather(0, weight.abs().argmax(0, keepdim=True)))
    return {"loc": data.mean, "weight": (weight * sign).to(x.dtype),
            "noise": noise.to(x.dtype)}, values


def diagonalizing_rotation(params: Params) -> torch.Tensor:
    """The rotation R (q x q) that makes the posterior covariance diagonal, with its variances
    increasing: W R has Psi^-1-orthogonal columns ordered by length (for PPCA, the principal
    directions). W and W R give the same log p(x); R picks the canonical one of them."""
    psi = params["noise"].expand(params["weight"].shape[0])
    _, _, right_t = torch.linalg.svd(params["weight"] / psi.sqrt()[:, None], full_matrices=False)
    return right_t.T


# --- EM ---------------------------------------------------------------------------------------


class Statistics(NamedTuple):
    """Posterior expectations averaged over the data (the E-step's output), in standardized
    coordinates x_d / s_d, where EM's arithmetic is best conditioned."""

    moments: Moments
    scale: torch.Tensor  # s: () one common scale for PPCA, (D,) column scales for FA
    cross: torch.Tensor  # (D, q) mean_n (x_n - xbar)_d / s_d E[z_n]^T
    second: torch.Tensor  # (q, q) mean_n E[z_n z_n^T]
    noise: torch.Tensor  # the E-step's noise (data units), for the MAP ridge


def em_init(config: PPCAConfig, x: torch.Tensor, generator: torch.Generator,
            method: str = "random") -> Params:
    """Random W with the data's scale (W W^T carries about half the variance), noise the other
    half, loc the data mean. Also the SVI starting point."""
    _check_data(config, x)
    data = data_moments(x)
    variances = data.covariance.diagonal()
    _check_columns(config, variances)
    dim, q = config.dim, config.latent_dim
    scale = (variances.sum() / (2 * dim * q)).sqrt()
    weight = torch.randn(dim, q, generator=generator, dtype=data.mean.dtype,
                         device=data.mean.device) * scale
    noise = variances.mean() / 2 if config.noise == "isotropic" else variances / 2
    return {"loc": data.mean.clone(), "weight": weight, "noise": noise.clone()}


def _standardizer(config: PPCAConfig, data: Moments) -> torch.Tensor:
    """Column scales s. EM commutes with rescaling the columns (all of them alike for PPCA,
    each on its own for FA), so it runs on x_d / s_d with unit variances: that keeps a Heywood
    case (some psi_d -> 0) from mixing its tiny numbers with the data's large ones."""
    variances = data.covariance.diagonal()
    return (variances.mean() if config.noise == "isotropic" else variances).sqrt()


def e_step(config: PPCAConfig, params: Params, x: torch.Tensor) -> tuple[Statistics, torch.Tensor]:
    """Posterior statistics under ``params`` and the mean log p(x) at ``params`` (nats per
    datapoint; plus log p(W) / N under a prior), from the data moments: O(D^2 q) per call once
    the moments of ``x`` are known (one O(N D^2) pass, remembered). The D x D arithmetic runs
    in float64 whatever the data's dtype: it costs nothing next to that pass, and it keeps the
    history exact enough to be monotone and to meet a 1e-4 tolerance with float32 data.

    Computed through the SVD of the whitened weight A = Psi^-1/2 W = U diag(sv) V^T, so that
    G = V diag(1 / (1 + sv^2)) V^T keeps its small eigenvalues exact when some psi_d is tiny
    (inverting I + A^T A would lose them, and with them the monotonicity of EM).
    """
    data = data_moments(x)
    _check_columns(config, data.covariance.diagonal())
    data = Moments(data.num_data, data.mean.double(), data.covariance.double())
    params = {name: value.double() for name, value in params.items()}
    scale = _standardizer(config, data)
    column = scale[..., None]
    psi = (params["noise"] / scale ** 2).expand(config.dim)  # standardized noise variances
    root = psi.sqrt()
    left, singular, right_t = torch.linalg.svd(params["weight"] / column / root[:, None],
                                               full_matrices=False)
    whitened = data.covariance / (column * scale) / (root[:, None] * root)  # B, (D, D)
    whitened_left = whitened @ left  # B U, (D, q)
    inner = left.T @ whitened_left  # U^T B U, (q, q)
    squared = singular.square()
    shrink = singular / (1 + squared)  # E[z_n] = V diag(shrink) U^T Psi^-1/2 (x_n - xbar)
    right = right_t.T
    second = right @ (torch.diag(1 / (1 + squared)) + shrink[:, None] * inner * shrink) @ right.T
    cross = root[:, None] * (whitened_left * shrink) @ right.T
    # mean_n (x_n - mu)^T C^-1 (x_n - mu) = tr(C^-1 S) + (xbar - mu)^T C^-1 (xbar - mu)
    explained = squared / (1 + squared)
    trace = whitened.diagonal().sum() - (explained * inner.diagonal()).sum()
    offset = (data.mean - params["loc"]) / scale / root
    shift = offset.square().sum() - (explained * (offset @ left).square()).sum()
    logdet = psi.log().sum() + squared.log1p().sum()
    log_jacobian = scale.log().expand(config.dim).sum()  # from standardized units back to x's
    mean_log_likelihood = -0.5 * (config.dim * math.log(2 * math.pi) + logdet
                                  + trace + shift) - log_jacobian
    if config.prior_precision > 0:
        mean_log_likelihood = (mean_log_likelihood
                               + _log_prior(config, params["weight"]) / data.num_data)
    return Statistics(data, scale, cross, second, params["noise"]), mean_log_likelihood


def m_step(config: PPCAConfig, x: torch.Tensor, statistics: Statistics) -> Params:
    """The parameters maximizing the expected complete-data log-likelihood; loc = the mean.

    Maximum likelihood: PX-EM (Liu, Rubin & Wu 1998), the M-step of the expanded model
    z ~ N(0, Sigma_z): W' = cross second^-1, the noise from the expected residual of W', and
    Sigma_z = second, mapped back by W = W' chol(second). Same fixed points and the same
    monotone ascent as plain EM, but the scales of W and the noise no longer crawl when the
    noise is small (iris, q=2: 26 instead of 334 iterations to 1e-10).
    MAP (``prior_precision > 0``): plain EM with W = cross (second + alpha psi / N)^-1 row by
    row, then the noise given that W (conditional maximization keeps the ascent monotone).
    """
    data, scale, cross, second, _ = statistics
    dtype = x.mean.dtype if isinstance(x, Moments) else x.dtype
    column = scale[..., None]
    if config.prior_precision > 0:
        ridge = config.prior_precision * statistics.noise.expand(config.dim) / data.num_data
        eye = torch.eye(config.latent_dim, dtype=second.dtype, device=second.device)
        system = second + ridge[:, None, None] * eye  # (D, q, q), one system per row of W
        weight = torch.linalg.solve(system, cross[..., None]).squeeze(-1)
    else:
        weight = torch.linalg.solve(second, cross.T).T
    variances = data.covariance.diagonal() / scale ** 2  # 1 for FA, mean 1 for PPCA
    residual = (variances - 2 * (weight * cross).sum(1)
                + ((weight @ second) * weight).sum(1))  # mean_n E (x_nd - w_d^T z_n)^2
    eps = torch.finfo(residual.dtype).eps
    if config.noise == "isotropic":
        noise = residual.mean().clamp_min(torch.finfo(dtype).eps)
    else:
        # where psi_d / S_dd nears 0 the cancellation in `residual` costs eps (S_dd / psi_d)^2
        # relative error; the floor keeps it below 1%. Clamping is the exact M-step on the
        # set psi_d >= floor, so EM stays monotone.
        noise = residual.clamp_min(10 * eps ** 0.5)
    if config.prior_precision == 0:
        weight = weight @ torch.linalg.cholesky(second)  # PX-EM: back from z ~ N(0, second)
    weight = _canonical_rotation(weight, noise.expand(config.dim))
    params = {"loc": data.mean.clone(), "weight": weight * column, "noise": noise * scale ** 2}
    return {name: value.to(dtype) for name, value in params.items()}


# --- factor analysis by the SVD iteration (scikit-learn's FactorAnalysis) -----------------

FA_NOISE_FLOOR = 1e-12  # the smallest noise variance the SVD iteration keeps (absolute)


class SVDIteration(NamedTuple):
    params: Params  # {"loc", "weight" (D, q), "noise" (D,)}
    log_likelihood: list[float]  # the total log p(x) of every iteration's (W, psi)
    converged: bool


def factor_analysis_svd(x: torch.Tensor, latent_dim: int, *, tol: float = 1e-2,
                        max_iter: int = 1000, noise_init: torch.Tensor | None = None
                        ) -> SVDIteration:
    """Maximum-likelihood factor analysis of ``x : (N, D)`` by the SVD iteration (Barber,
    *Bayesian Reasoning and Machine Learning*, 2012, section 21.2.2), the algorithm of
    scikit-learn's ``FactorAnalysis``: with the rows centred and scaled column-wise by
    psi^-1/2 / sqrt(N), the top ``q`` singular values s and right vectors V of that matrix
    give W = psi^1/2 V^T diag(max(s^2 - 1, 0))^1/2 and the exact log-likelihood of (W, psi);
    then psi = max(var - diag(W W^T), ``FA_NOISE_FLOOR``). It stops when the total
    log-likelihood (nats, summed over rows) gains less than ``tol``; ``latent_dim`` may be
    anything from 0 to D, and any number of rows is fitted.
    """
    n, dim = x.shape
    mean = x.mean(0)
    centred = x - mean
    variances = centred.square().mean(0)
    psi = (torch.ones_like(variances) if noise_init is None
           else noise_init.to(variances).clone())
    constant = dim * math.log(2 * math.pi) + latent_dim
    history: list[float] = []
    converged = False
    weight = x.new_zeros(latent_dim, dim)
    for _ in range(max_iter):
        root = psi.sqrt() + FA_NOISE_FLOOR
        _, singular, right_t = torch.linalg.svd(centred / (root * math.sqrt(n)),
                                                full_matrices=False)
        squared = singular.square()
        top, rest = squared[:latent_dim], squared[latent_dim:]
        if top.shape[0] < latent_dim:  # fewer rows than factors: the missing values are 0
            top = torch.cat([top, top.new_zeros(latent_dim - top.shape[0])])
            right_t = torch.cat([right_t, right_t.new_zeros(latent_dim - right_t.shape[0],
                                                            dim)])
        weight = (top - 1).clamp_min(0).sqrt()[:, None] * right_t[:latent_dim] * root
        total = -0.5 * n * float(constant + top.log().sum() + rest.sum() + psi.log().sum())
        history.append(total)
        if len(history) > 1 and total - history[-2] < tol:
            converged = True
            break
        psi = (variances - weight.square().sum(0)).clamp_min(FA_NOISE_FLOOR)
    return SVDIteration({"loc": mean, "weight": weight.T.contiguous(), "noise": psi},
                        history, converged)


def orthomax(weight: torch.Tensor, gamma: float, *, tol: float = 1e-6,
             max_iter: int = 100) -> torch.Tensor:
    """The orthogonal rotation ``W R`` of the loadings ``weight : (D, q)`` that maximizes the
    orthomax criterion (Kaiser 1958): ``gamma=1`` varimax, ``gamma=0`` quartimax. Each step
    solves the linearized problem by an SVD (the polar factor); it stops when the criterion
    grows by a relative ``tol`` or less. W W^T, so the model's covariance, is unchanged."""
    dim, q = weight.shape
    rotation = torch.eye(q, dtype=weight.dtype, device=weight.device)
    previous = 0.0
    for _ in range(max_iter):
        rotated = weight @ rotation
        target = rotated ** 3 - (gamma / dim) * rotated * rotated.square().sum(0)
        left, singular, right_t = torch.linalg.svd(weight.T @ target)
        rotation = left @ right_t
        criterion = float(singular.sum())
        if previous != 0 and criterion / previous < 1 + tol:
            break
        previous = criterion
    return weight @ rotation


def _canonical_rotation(weight: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """``W R``, the one of the equally likely ``W R`` (R orthogonal) whose columns are
    Psi^-1-orthogonal, longest first, each with its largest whitened entry positive.

    EM's update commutes with rotations of W (PX-EM's as well: it keeps W W^T), so this
    changes no log-likelihood of the run; it pins W down, so that EM's iterates converge as
    points and an accelerated EM (SQUAREM, in :mod:`inference.em`) can extrapolate them
    instead of a drift along the rotations, which no iterate ever settles."""
    whitened = weight / psi.sqrt()[:, None]
    _, _, right_t = torch.linalg.svd(whitened, full_matrices=False)
    rotated = whitened @ right_t.T
    sign = torch.sign(rotated.gather(0, rotated.abs().argmax(0, keepdim=True)))
    return weight @ right_t.T * sign


def _log_prior(config: PPCAConfig, weight: torch.Tensor) -> torch.Tensor:
    scale = weight.new_tensor(config.prior_precision).rsqrt()
    return dist.Normal(0.0, scale).log_prob(weight).sum()


# --- the Pyro model -----------------------------------------------------------------------


_CONSTRAINTS = {"loc": constraints.real, "weight": constraints.real,
                "noise": constraints.positive}


class LinearGaussianModel:
    """The Pyro model ``model(x=None, *, num_data=None, subsample_size=None)``.

    ``params`` are the initial values of the ``pyro.param`` sites ``loc``, ``weight`` and
    ``noise`` (default: loc 0, W the first q columns of I, noise 1, in the data's dtype and
    device). With ``fixed=True`` the given ``params`` are constants, not ``pyro.param`` sites:
    SVI then fits the guide alone, at these model parameters.
    """

    def __init__(self, config: PPCAConfig, params: Params | None = None, *,
                 fixed: bool = False):
        if fixed and params is None:
            raise InputError("fixed=True needs the params to hold fixed")
        self.config = config
        # pyro.param takes over the tensor it is given (and SVI updates it in place): copy
        self.initial = None if params is None else {
            n: params[n] if fixed else params[n].detach().clone() for n in PARAM_NAMES}
        self.fixed = fixed

    def _initial(self, like: torch.Tensor | None) -> Params:
        if self.initial is None:
            options = ({"dtype": like.dtype, "device": like.device} if like is not None
                       else {"dtype": torch.get_default_dtype()})
            dim, q = self.config.dim, self.config.latent_dim
            noise_shape = () if self.config.noise == "isotropic" else (dim,)
            self.initial = {"loc": torch.zeros(dim, **options),
                            "weight": torch.eye(dim, q, **options),
                            "noise": torch.ones(noise_shape, **options)}
        return self.initial

    def params(self, like: torch.Tensor | None = None, *, record: bool = True) -> Params:
        """The current parameters. ``record=False`` reads the param store without making
        ``pyro.param`` sites: the exact guide reads the model's parameters that way, so that
        they stay the model's (gradients still reach them through the store)."""
        if self.fixed:
            return self.initial
        initial = self._initial(like)
        if record:
            return {n: pyro.param(n, initial[n], constraint=_CONSTRAINTS[n]) for n in PARAM_NAMES}
        store = pyro.get_param_store()
        return {n: store.setdefault(n, initial[n], _CONSTRAINTS[n]) for n in PARAM_NAMES}

    def __call__(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                 subsample_size: int | None = None) -> torch.Tensor:
        params = self.params(x)
        loc, weight = params["loc"], params["weight"]
        scale = params["noise"].sqrt().expand(self.config.dim)
        if self.config.prior_precision > 0:
            pyro.factor("weight_prior", _log_prior(self.config, weight))
        size = x.shape[0] if x is not None else (num_data or 1)
        zeros = weight.new_zeros(self.config.latent_dim)
        with pyro.plate(DATA_PLATE, size, subsample_size=subsample_size,
                        device=weight.device) as idx:
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            observed = None if x is None else x[idx]
            return pyro.sample("x", dist.Normal(loc + z @ weight.T, scale).to_event(1),
                               obs=observed)


def make_model(config: PPCAConfig, params: Params | None = None, *,
               fixed: bool = False) -> LinearGaussianModel:
    return LinearGaussianModel(config, params, fixed=fixed)


# --- sampling -------------------------------------------------------------------------------


def sample(config: PPCAConfig, params: Params, num_data: int,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral sampling: ``(x (N, D), z (N, q))`` in the params' dtype and device."""
    weight = params["weight"]
    options = {"generator": generator, "dtype": weight.dtype, "device": weight.device}
    z = torch.randn(num_data, weight.shape[1], **options)
    noise = torch.randn(num_data, weight.shape[0], **options) * params["noise"].sqrt()
    return params["loc"] + z @ weight.T + noise, z


def _true_params(noise: str, generator: torch.Generator, dtype: torch.dtype) -> Params:
    dim, q = 10, 3
    basis, _ = torch.linalg.qr(torch.randn(dim, q, generator=generator, dtype=torch.float64))
    weight = basis * torch.tensor([3.0, 2.0, 1.5], dtype=torch.float64)
    loc = torch.randn(dim, generator=generator, dtype=torch.float64)
    psi = (torch.tensor(0.25, dtype=torch.float64) if noise == "isotropic"
           else 0.1 + 0.9 * torch.rand(dim, generator=generator, dtype=torch.float64))
    return {k: v.to(dtype) for k, v in {"loc": loc, "weight": weight, "noise": psi}.items()}


def _synthetic(noise: str):
    def synthetic(num_data: int, generator: torch.Generator, dtype: torch.dtype = torch.float32):
        """``num_data`` draws from a known model (D=10, q=3): ``(x, None, true params)``."""
        truth = _true_params(noise, generator, dtype)
        x, _ = sample(PPCAConfig(dim=10, latent_dim=3), truth, num_data, generator)
        return x, None, truth
    return synthetic


# --- registration ---------------------------------------------------------------------------


# SQUAREM on by default (``inference.em``): with PX-EM PPCA needs a handful of updates either
# way, but factor analysis crawls where some psi_d heads for 0 (a Heywood case), and SQUAREM
# cuts the updates to a given gap several-fold.
_EM = EMSteps(init=em_init, e_step=e_step, m_step=m_step, init_methods=("random",),
              accelerate=True, summarize=summarize, combine_summaries=combine_moments)
_COMMON = dict(
    make_model=make_model,
    init_params=em_init, log_marginal=log_marginal, posterior=posterior, sample=sample,
    em=_EM, local_sites=("z",), svi_defaults={"steps": 3000, "lr": 0.03})

register(ModelSpec(
    name="ppca", config_class=PPCAConfig, closed_form=closed_form,
    summary="probabilistic PCA: z ~ N(0, I_q), x | z ~ N(W z + mu, sigma^2 I)",
    default_data="digits", synthetic=_synthetic("isotropic"),
    notes="exact log p(x) and posterior; closed-form maximum likelihood (Tipping & Bishop)",
    **_COMMON))
register(ModelSpec(
    name="fa", config_class=FactorAnalysisConfig,
    summary="factor analysis: z ~ N(0, I_q), x | z ~ N(W z + mu, diag(psi))",
    default_data="synthetic-fa", synthetic=_synthetic("diagonal"),
    notes="exact log p(x) and posterior; no closed form (EM or SVI); constant columns are "
          "rejected (digits has some: use ppca there)",
    **_COMMON))
