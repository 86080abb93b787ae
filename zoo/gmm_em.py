r"""EM for the Gaussian mixture: sufficient statistics, the M-step and two exact E-steps.

The E-step (:func:`e_step`) is EM's hot path, and it streams: one pass over cache-sized row
blocks, each reduced at once to the K x F sufficient statistics, so that its memory depends on
neither N nor (beyond the parameters) K, and no N x K matrix exists. Per block either the
rows' quadratic features are built and an iteration is two GEMMs and a logsumexp, wherever
their rounding error is provably negligible, or the block is whitened against all K
components with a single GEMM. Moments are taken about the data's mean (features) or the
current means (whitened), never about the origin. The M-step (:func:`maximize`; :func:`m_step` from
responsibilities, :func:`from_labels` from hard labels) is scikit-learn's, with ``reg_covar``
on the covariance diagonals.

The per-component constants and the whitened row blocks here are also what the closed forms of
:mod:`zoo.gmm` (``log_marginal``, ``responsibilities``) are computed with. Parameters travel as
the dict described in :mod:`zoo.gmm`; log-likelihoods are in nats (per datapoint where
averaged). Everything public here is re-exported by :mod:`zoo.gmm`.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

import torch

from zoo import em_native
from zoo.errors import InputError
from zoo.gmm_config import SCALE_NAME, GMMConfig, _check_data, _check_params
from zoo.registry import Params

# ---------------------------------------------------------------------------------------------
# Per-component constants and whitened row blocks (the closed forms in zoo.gmm use them too)
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


def _singular_scale(config: GMMConfig) -> InputError:
    return InputError(f"the {SCALE_NAME[config.covariance_type]!r} parameter has a "
                      "non-positive or non-finite scale, i.e. a singular covariance; raise "
                      "reg_covar or start from other parameters")


def _components(config: GMMConfig, params: Params, center: torch.Tensor) -> _Components:
    _check_params(config, params)
    weights, means = params["weights"], params["means"]
    k, d = means.shape
    if config.full_matrices:
        scale_tril = params["scale_tril"]
        diagonal = scale_tril.diagonal(dim1=-2, dim2=-1)
    else:
        scale = params["scale"]
        diagonal = scale if config.covariance_type == "diag" else scale[:, None].expand(k, d)
    if not bool((diagonal > 0).all() & torch.isfinite(diagonal).all()):
        raise _singular_scale(config)
    log_const = (torch.log(weights) - 0.5 * d * math.log(2 * math.pi)
                 - torch.log(diagonal).sum(-1))[:, None]
    shift = center - means  # (K, D)
    if config.full_matrices:
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
    if config.full_matrices:
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
    offset = parts.log_const + (0.5 if config.full_matrices else 0.0)
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
    return _normalize_above(joint, 2 * math.log(torch.finfo(joint.dtype).eps))


def _normalize_above(joint: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_normalize` with its floor given (TorchScript has no ``finfo``)."""
    peak = joint.amax(0)
    weights = joint.sub_(peak).clamp_(min=floor).exp_()
    total = weights.sum(0)
    return peak + total.log(), weights.div_(total)


# ---------------------------------------------------------------------------------------------
# The M-step
# ---------------------------------------------------------------------------------------------


class SingularCovarianceError(InputError):
    """The M-step met a covariance it cannot use (see :func:`maximize`)."""


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
    return weighted_moments(x, resp, full=config.full_matrices)


def weighted_moments(x: torch.Tensor, resp: torch.Tensor, *, full: bool = True
                     ) -> MixtureStatistics:
    """:class:`MixtureStatistics` of ``x : (N, D)`` under any non-negative weights ``resp :
    (N, K)``, about the weighted means; ``full=False`` keeps only the diagonal second moments.
    (Also the statistics of the other mixtures of the zoo.)"""
    counts = resp.sum(0)
    center = (resp.T @ x) / (counts + 10 * torch.finfo(x.dtype).eps)[:, None]
    first = resp.T @ x - counts[:, None] * center
    k, d = center.shape
    second = x.new_zeros((k, d, d) if full else (k, d))
    for rows in _row_blocks(x, k * d):
        diff = x[rows, None, :] - center  # (n, K, D)
        weighted = diff * resp[rows, :, None]
        if full:
            second.baddbmm_(weighted.permute(1, 2, 0), diff.transpose(0, 1))
        else:
            second.add_((weighted * diff).sum(0))
    return MixtureStatistics(counts, first, second, center, x.shape[0])


def label_statistics(config: GMMConfig, x: torch.Tensor,
                     labels: torch.Tensor) -> MixtureStatistics:
    """:func:`sufficient_statistics` for hard labels ``labels : (N,)`` (one-hot
    responsibilities), about each cluster's mean: the rows sorted by cluster once, then per
    cluster its mean, its centred rows and one GEMM of them (full) or their squares (diag), so
    the work is O(N D²), not the O(N K D²) of dense responsibilities."""
    _check_data(config, x)
    k, d = config.components, config.dim
    if labels.shape != (x.shape[0],) or labels.dtype not in (torch.int32, torch.int64):
        raise InputError(f"labels must be an integer tensor of shape ({x.shape[0]},), got "
                         f"{tuple(labels.shape)} of {labels.dtype}")
    sizes = torch.bincount(labels, minlength=k)
    if sizes.numel() > k:
        raise InputError(f"labels must lie in 0..{k - 1}")
    counts = sizes.to(x.dtype)
    # a stable sort of small integers (a radix sort: 1.2 ms against 7.9 ms for argsort of the
    # int64 labels at N = 200,000); stable, so each cluster keeps its rows' order. The rows are
    # gathered by index_select, whole rows at a time: 3 ms against 16-34 ms for x[order], which
    # gathers element by element (N = 200,000, D = 16)
    narrow = torch.uint8 if k <= 256 else torch.int32
    rows = torch.index_select(x, 0, torch.argsort(labels.to(narrow), stable=True))
    full = config.full_matrices
    first, center = x.new_zeros(k, d), x.new_zeros(k, d)
    second = x.new_zeros((k, d, d) if full else (k, d))
    for j, block in enumerate(torch.split(rows, sizes.tolist())):
        if block.shape[0] == 0:
            continue  # an empty cluster: zero statistics, as its one-hot column gives
        center[j] = block.mean(0)
        diff = block.sub_(center[j])  # the sorted copy is ours to overwrite
        first[j] = diff.sum(0)  # rounding only; the M-step adds it back to the mean
        second[j] = diff.T @ diff if full else diff.square_().sum(0)
    return MixtureStatistics(counts, first, second, center, x.shape[0])


def combine(parts, weights=None) -> MixtureStatistics:
    """The statistics of the union of disjoint row sets from theirs: ``Σ_i w_i s_i`` (``w_i = 1``
    by default; stepwise EM weighs its running statistics against a minibatch's).

    Each part's moments are moved to one common centre per component, the pooled weighted
    mean, before they are added (Chan, Golub & LeVeque's update): about it the pooled first
    moments vanish and the between-part scatter enters as the exact, positive term
    ``n_i δ δᵀ``, so parts whose means differ widely (shards sorted by cluster) lose no
    precision. The order of ``parts`` fixes the rounding: ranks that fold the same parts in
    the same order hold bit-identical results."""
    parts = list(parts)
    if weights is None and len(parts) == 1:
        return parts[0]
    weights = [1.0] * len(parts) if weights is None else [float(w) for w in weights]
    if len(weights) != len(parts) or not parts:
        raise InputError(f"combine takes one weight per part; got {len(weights)} weights for "
                         f"{len(parts)} parts")
    counts = sum(w * p.counts for w, p in zip(weights, parts, strict=True))
    sums = sum(w * (p.first + p.counts[:, None] * p.center)
               for w, p in zip(weights, parts, strict=True))
    center = torch.where((counts > 0)[:, None], sums / counts.clamp_min(
        torch.finfo(counts.dtype).tiny)[:, None], parts[0].center)
    first = torch.zeros_like(parts[0].first)
    second = torch.zeros_like(parts[0].second)
    full = second.dim() == 3
    for w, p in zip(weights, parts, strict=True):
        delta = p.center - center  # x - c = (x - c_i) + δ_i
        moved = p.first + p.counts[:, None] * delta
        if full:
            cross = p.first[:, :, None] * delta[:, None, :]
            second = second + w * (p.second + cross + cross.transpose(1, 2)
                                   + p.counts[:, None, None] * delta[:, :, None]
                                   * delta[:, None, :])
        else:
            second = second + w * (p.second + 2 * p.first * delta
                                   + p.counts[:, None] * delta.square())
        first = first + w * moved
    num_data = sum(w * p.num_data for w, p in zip(weights, parts, strict=True))
    if all(w == 1.0 for w in weights):
        num_data = int(num_data)
    return MixtureStatistics(counts, first, second, center, num_data)


def mean_variance(spread: MixtureStatistics) -> torch.Tensor:
    """The mean over columns of the rows' unbiased variances (``x.var(0).mean()``), from the
    diagonal moments of unit weights (one component) that :func:`weighted_moments` gives."""
    count = spread.counts[0]
    offset = spread.first[0] / count  # the rows' mean minus the centre
    scatter = spread.second[0] - count * offset.square()
    return (scatter / (count - 1).clamp_min(1)).mean()


def maximize(config: GMMConfig, x: torch.Tensor | None,
             statistics: MixtureStatistics) -> Params:
    """The parameters that maximize the expected complete-data log-likelihood given the
    statistics, with ``reg_covar`` on the covariance diagonals (scikit-learn's M-step).

    Raises :class:`InputError` when a covariance is singular (duplicated points, or a
    component on a lower-dimensional subspace, with too small a ``reg_covar``)."""
    with _one_intra_op_thread(statistics.center.device):  # K x D x D work: see there
        return _maximize(config, statistics)


def _maximize(config: GMMConfig, statistics: MixtureStatistics) -> Params:
    counts, first, second, center, num_data = statistics
    eps = torch.finfo(center.dtype).eps
    totals = counts + 10 * eps  # as scikit-learn: an empty component keeps finite means
    means = (first + counts[:, None] * center) / totals[:, None]  # Σ r x / totals
    weights = totals / num_data
    shift = means - center  # move the second moments from the centres to the new means
    d = center.shape[1]
    if config.full_matrices:
        cross = first[:, :, None] * shift[:, None, :]
        scatter = (second - cross - cross.transpose(1, 2)
                   + counts[:, None, None] * shift[:, :, None] * shift[:, None, :])
        identity = torch.eye(d, dtype=scatter.dtype, device=scatter.device)
        if config.covariance_type == "tied":  # one covariance: the pooled scatter
            covariance = (scatter.sum(0) / totals.sum() + config.reg_covar * identity)[None]
        else:
            covariance = scatter / totals[:, None, None] + config.reg_covar * identity
        scale_tril, info = torch.linalg.cholesky_ex(covariance)
        pivots = scale_tril.diagonal(dim1=-2, dim2=-1).square()
        variances = covariance.diagonal(dim1=-2, dim2=-1)
        positive = torch.isfinite(pivots).all(-1)
    else:
        scatter = second - 2 * first * shift + counts[:, None] * shift.square()
        variances = scatter / totals[:, None] + config.reg_covar
        if config.covariance_type == "spherical":
            variances = variances.mean(1, keepdim=True)
        if config.singular == "cholesky":
            # a populated component's variance at or below zero is rounding noise of a zero
            # spread (one point): scikit-learn's rounding may land either side, and it fits on
            # when positive; an empty component's is exactly zero and stays singular
            noise = (counts > 0)[:, None] & (variances <= 0)
            level = (4 * eps * means.abs().amax(-1, keepdim=True)).square()
            variances = torch.where(noise, level.clamp_min(torch.finfo(center.dtype).tiny),
                                    variances)
        pivots, info = variances, torch.zeros_like(counts, dtype=torch.int32)
        positive = (variances > 0).all(-1) & torch.isfinite(variances).all(-1)
    singular = (info > 0) | ~positive
    if config.singular == "rounding":
        # A pivot at rounding level is a singular covariance even where Cholesky "succeeds":
        # rounding noise of points equal to μ is about (eps |μ|)², of a flat direction
        # eps * var. ("cholesky": only what is not positive definite, as scikit-learn.)
        magnitude = means.abs().amax(-1)
        if config.covariance_type == "tied":
            magnitude = magnitude.amax(0, keepdim=True)
        floor = d * eps * variances.amax(-1) + (4 * eps * magnitude).square()
        singular = singular | ~(pivots > floor[:, None]).all(-1)
    if bool(singular.any()):
        k = int(singular.nonzero()[0, 0])
        which = (f"the tied covariance of the {config.components} components"
                 if config.covariance_type == "tied" else
                 f"component {k} of {config.components}")
        points = float(counts.sum() if config.covariance_type == "tied" else counts[k])
        raise SingularCovarianceError(
            f"{which} has a singular covariance: its {points:.4g} points are duplicates or "
            f"lie on a lower-dimensional subspace, and reg_covar={config.reg_covar:g} does not "
            "lift it; raise reg_covar (e.g. 1e-6 for standardized data), use fewer components, "
            "or remove duplicated points")
    if config.covariance_type == "tied":
        scale = {"scale_tril": scale_tril.expand(config.components, d, d).clone()}
    elif config.full_matrices:
        scale = {"scale_tril": scale_tril}
    elif config.covariance_type == "diag":
        scale = {"scale": variances.sqrt()}
    else:
        scale = {"scale": variances.sqrt()[:, 0]}
    return {"weights": weights, "means": means, **scale}


def m_step(config: GMMConfig, x: torch.Tensor, resp: torch.Tensor) -> Params:
    """Weighted means, covariances (+ ``reg_covar``) and weights given ``resp : (N, K)``."""
    return maximize(config, x, sufficient_statistics(config, x, resp))


def from_labels(config: GMMConfig, x: torch.Tensor, labels: torch.Tensor) -> Params:
    """:func:`m_step` from hard labels ``labels : (N,)``, as from their one-hot
    responsibilities, at the cost of one pass over the sorted rows."""
    return maximize(config, x, label_statistics(config, x, labels))


def e_step(config: GMMConfig, params: Params,
           x: torch.Tensor) -> tuple[MixtureStatistics, torch.Tensor]:
    """EM's E-step, fused with the statistics the M-step needs.

    Returns the posterior-weighted statistics of ``x : (N, D)`` (see :class:`MixtureStatistics`)
    and the mean ``log p(x)`` at ``params`` (nats per datapoint, a 0-dim tensor).

    Two exact routes, both streaming over row blocks. Where the quadratic features are at most
    :data:`FEATURE_VALUES` per row and their rounding error is provably below
    :data:`QUADRATIC_ERROR` nats, each block's features are built in cache and the block costs
    two GEMMs and a logsumexp (:func:`_e_step_quadratic`; the data's mean and radius are
    computed once per data tensor). Otherwise every row block is whitened against the
    components (:func:`_e_step_whitened`), which is float32-safe at any offset or conditioning.
    """
    _check_data(config, x)
    features = _quadratic_features(config, x)  # a pass over x, once per data tensor
    with _one_intra_op_thread(x.device) as threads:
        if features is not None:
            weights, bound = _quadratic_weights(config, params, features)
            if bound <= QUADRATIC_ERROR:
                return _e_step_quadratic(config, params, x, features, weights, threads)
    return _e_step_whitened(config, params, x)


def mean_log_likelihood(config: GMMConfig, params: Params, x: torch.Tensor) -> torch.Tensor:
    """:func:`e_step`'s mean ``log p(x)`` alone, by the same route and the same rounding: on
    the quadratic route each block skips the statistics' GEMM and the responsibilities (EM's
    last evaluation, about a third of a pass less)."""
    _check_data(config, x)
    features = _quadratic_features(config, x)
    with _one_intra_op_thread(x.device) as threads:
        if features is not None:
            weights, bound = _quadratic_weights(config, params, features)
            if bound <= QUADRATIC_ERROR:
                return _e_step_quadratic(config, params, x, features, weights, threads,
                                         statistics=False)
    return _e_step_whitened(config, params, x)[1]


def row_log_likelihoods(config: GMMConfig, params: Params,
                        x: torch.Tensor) -> torch.Tensor | None:
    """Each row's ``log p(x_n)`` (float64, ``(N,)``) by the compiled kernel, in the E-step's
    shares and threads and with its rounding; ``None`` where the kernel does not run on ``x``
    (see :func:`_native`) or the quadratic route's error bound does not hold. The yardstick's
    route for float32 rows on a CPU: 0.3 s against 2.2 s for the whitened blocks over 10⁷
    rows (D = 16, K = 8, one thread)."""
    if not _native(x):
        return None
    _check_data(config, x)
    features = _quadratic_features(config, x)
    if features is None:
        return None
    with _one_intra_op_thread(x.device) as threads:
        weights, bound = _quadratic_weights(config, params, features)
        if bound > QUADRATIC_ERROR:
            return None
        rows = torch.empty(x.shape[0], dtype=torch.float64)
        _e_step_quadratic(config, params, x, features, weights, threads, statistics=False,
                          rows=rows)
    return rows


@contextmanager
def _one_intra_op_thread(device: torch.device):
    """Run the block on one intra-op thread (on a CPU), and yield how many there were.

    Why: EM's small K x D x D work (the E-step's weights, a triangular solve and a few batched
    products; the M-step's Cholesky factors; Lloyd's centre updates) would otherwise open
    OpenMP regions of T threads just before the E-step's own threads start, and GNU OpenMP's
    idle workers spin for a while after a region (unless ``OMP_WAIT_POLICY=passive``), on the
    very cores those threads need. Measured at N = 200,000, D = 16, K = 8 on 2 threads,
    alternating: an E-step 15.3-16.0 ms against 22.4-23.5 ms (the fastest of 25), and an EM
    iteration 17.2-18.2 ms against 23.9-24.2 ms once the M-step runs so too (of 5 x 30). The
    E-step's threads then run as ``OMP_WAIT_POLICY=passive`` made them run, without asking
    the user for that setting, which slows Pyro's SVI steps."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        yield threads
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# The E-step on quadratic features, built block by block
# ---------------------------------------------------------------------------------------------

# Most quadratic features per row (D(D+1)/2 + D + 1 for full covariances, 2D + 1 otherwise) for
# which the E-step takes them; 0 makes every E-step whiten. They are built block by block, so
# this bounds nothing that grows with N.
FEATURE_VALUES = 2**16
# Largest worst-case rounding error of a log-density through the quadratic features, in nats;
# beyond it (float32 data far from their mean, or nearly singular covariances) E-steps whiten.
QUADRATIC_ERROR = 1e-3


class _Features(NamedTuple):
    """What the quadratic features ``φ(x - m) = [c_i c_j (i ≤ j; only c_i² for diagonal
    covariances), c, 1]`` of ``c = x - m`` need from the data, computed once per data tensor:
    the centre ``m`` and the radius that bounds their rounding. The features themselves are
    built per row block inside each E-step (:func:`_e_step_quadratic`), never for all N."""

    data: weakref.ref  # the tensor they belong to
    version: int  # its in-place version counter when they were built
    full: bool
    size: int  # F, features per row
    center: torch.Tensor  # (D,) m
    radius: float  # max_n |x_n - m|²


_FEATURES: list[_Features] = []  # at most one entry: the data of the EM run in progress


def _quadratic_features(config: GMMConfig, x: torch.Tensor) -> _Features | None:
    full = config.full_matrices
    d = x.shape[1]
    size = (d * (d + 1) // 2 if full else d) + d + 1
    if size > FEATURE_VALUES:
        return None
    if _FEATURES:
        cached = _FEATURES[0]
        if cached.data() is x and cached.version == x._version and cached.full == full:
            return cached
    center = x.mean(0)
    radius = x.new_zeros(())
    for rows in _row_blocks(x, d):  # one pass, no N x D temporary
        radius = torch.maximum(radius, (x[rows] - center).square_().sum(1).max())
    features = _Features(weakref.ref(x), x._version, full, size, center, float(radius))
    _FEATURES[:] = [features]
    weakref.finalize(x, _forget_dead_features)  # forget them with the data
    return features


def _forget_dead_features() -> None:
    _FEATURES[:] = [features for features in _FEATURES if features.data() is not None]


def _quadratic_weights(config: GMMConfig, params: Params,
                       features: _Features) -> tuple[torch.Tensor, float]:
    """``W : (K, F)`` with ``W φ(c) = log λ_k N(x | μ_k, S_k)`` and an estimate of its largest
    rounding error, in nats: ``eps * max(|c|², |δ|²) * max_k |Λ_k|_F`` with ``c = x - m``,
    ``δ = μ - m``, which bounds ``eps Σ_ij |Λ_ij c_i c_j|``, the size of the terms that cancel.

    ``-½ (c - δ)ᵀ Λ (c - δ) = -½ cᵀΛc + cᵀΛδ - ½ δᵀΛδ``, and ``cᵀΛc`` counts each ``c_i c_j``
    with i < j twice.

    ``W`` is computed in float64 (K x F work), so that it carries no rounding of its own
    beyond the one to the data's precision that the E-step makes; the E-step also takes the
    largest constant out of it (see :func:`_e_step_quadratic`)."""
    eps = torch.finfo(params["means"].dtype).eps
    if config.full_matrices and features.center.dtype == torch.float32 \
            and features.center.device.type == "cpu" and em_native.kernel() is not None:
        # the same numbers in the kernel's library: between two E-steps, after the kernel has
        # streamed the rows through the caches, the torch form's fifty small operations took
        # 0.55-0.8 ms (0.15-0.25 ms in a warm loop), 6-9% of an EM iteration at N = 200,000,
        # D = 16, K = 8
        _check_params(config, params)
        made = em_native.full_weights(params["scale_tril"], params["means"],
                                      params["weights"], features.center)
        if made is None:
            raise _singular_scale(config)
        weights, norm, spread = made
        return weights, eps * max(features.radius, spread) * norm
    params = {name: value.double() for name, value in params.items()}
    parts = _components(config, params, features.center.double())
    means = params["means"]
    k, d = means.shape
    delta = means - features.center.double()
    if config.full_matrices:
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
    bound = eps * scale * float(norm.max())
    return weights, bound


_POOL: list[ThreadPoolExecutor] = []  # the E-step's worker threads, kept between E-steps


def _forget_pool() -> None:
    _POOL.clear()  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_forget_pool)


def _workers(count: int) -> ThreadPoolExecutor:
    """A pool of ``count`` threads, made once and kept: starting threads every E-step cost
    several milliseconds of a 30 ms E-step."""
    if not _POOL or _POOL[0]._max_workers != count:
        for pool in _POOL:
            pool.shutdown(wait=False)
        _POOL[:] = [ThreadPoolExecutor(count, thread_name_prefix="lvm-zoo-e-step")]
    return _POOL[0]


def _in_threads(reduce, x: torch.Tensor, block: int, threads: int | None = None):
    """``reduce(begin, end, scripted) -> (sums, ...)`` over all rows of ``x``; on a CPU with
    T > 1 intra-op threads, T threads each reduce one contiguous share of whole blocks with one
    intra-op thread and TorchScript's form of the reduction (:func:`_script`; the caller's
    thread takes the first share, a kept pool the others), and the shares' sums are added in
    order (deterministic for a given T). A pass too short to share runs on the caller's thread
    with one intra-op thread; where it has :data:`SCRIPT_BLOCKS` blocks or more, in the
    scripted form. ``threads`` is T where the caller has already set one intra-op thread
    (default: the intra-op threads now); the caller's setting is restored at the end.

    Why: a block's GEMMs are small, and a GEMM that sums over a block's rows is ten times
    slower on 2 intra-op threads than on one on this busy machine (each one waits for every
    thread of the team); whole shares per thread wait once per E-step. For the same reason a
    short pass runs on one thread: Lloyd's iterations on the start's sample of 20,000 rows
    (three blocks) took 0.77 ms each so, against 0.93-1.45 ms with a team of two.

    (Shares taken from a queue, four per thread, gained nothing here, on the quiet machine or
    beside a busy loop on one core: the two threads' shares ran at the same rate.)"""
    num_data = x.shape[0]
    current = torch.get_num_threads()
    threads = (current if threads is None else threads) if x.device.type == "cpu" else 1
    blocks = -(-num_data // block)
    if threads < 2 or blocks < 2 * threads:
        # one share: TorchScript's form where the pass has blocks enough to repay compiling
        scripted = x.device.type == "cpu" and blocks >= SCRIPT_BLOCKS
        if current < 2:
            return reduce(0, num_data, scripted=scripted)
        try:
            torch.set_num_threads(1)
            return reduce(0, num_data, scripted=scripted)
        finally:
            torch.set_num_threads(current)
    per_share = -(-blocks // threads) * block
    bounds = [(begin, min(begin + per_share, num_data))
              for begin in range(0, num_data, per_share)]

    def share(bound):
        torch.set_num_threads(1)  # this thread's team: itself
        return reduce(*bound, scripted=True)

    try:
        others = [_workers(len(bounds) - 1).submit(share, bound) for bound in bounds[1:]]
        parts = [share(bounds[0])] + [other.result() for other in others]
    finally:
        torch.set_num_threads(current)
    return tuple(sum(values[1:], values[0]) for values in zip(*parts, strict=True))


def _feature_buffer(x: torch.Tensor, size: int, width: int, full: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]]]:
    """A feature-major ``(F, width)`` buffer with its trailing row of ones, and the views that
    fill it: the centred rows, and ``(factor, factor, out)`` per product op, made once per
    buffer so that a block costs a handful of calls however large D is."""
    d = x.shape[1]
    quadratic = size - d - 1
    phi = torch.empty(size, width, dtype=x.dtype, device=x.device)
    phi[-1] = 1.0
    centred = phi[quadratic:-1]
    products: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    if not full:
        products.append((centred, centred, phi[:quadratic]))
        return phi, centred, products
    offset = 0
    for i in range(d):  # row i times rows i..D-1: the pairs i <= j in triu_indices order
        products.append((centred[i:], centred[i], phi[offset:offset + d - i]))
        offset += d - i
    return phi, centred, products


def _quadratic_share(x: torch.Tensor, weights: torch.Tensor, center: torch.Tensor, begin: int,
                     end: int, block: int, full: bool, floor: float, statistics: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The quadratic E-step's K x F sums and float64 total of log p(x) over rows begin..end,
    block by block (see :func:`_e_step_quadratic`); without ``statistics`` the sums stay zero
    and a block costs one GEMM. Written for TorchScript too (:func:`_script`): a scripted
    share runs without the GIL."""
    k, size = weights.shape[0], weights.shape[1]
    width = min(block, end - begin)
    phi, centred, products = _feature_buffer(x, size, width, full)
    sums = torch.zeros(k, size, dtype=x.dtype, device=x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    mean = center.unsqueeze(1)
    for start in range(begin, end, block):
        stop = min(start + block, end)
        if stop - start != width:  # the last, shorter block
            width = stop - start
            phi, centred, products = _feature_buffer(x, size, width, full)
        torch.sub(x[start:stop].t(), mean, out=centred)
        for factors in products:
            torch.mul(factors[0], factors[1], out=factors[2])
        joint = torch.mm(weights, phi)  # (K, n)
        if statistics:
            log_px, resp = _normalize_above(joint, floor)
            sums.addmm_(resp, phi.t())
        else:
            peak = joint.amax(0)
            log_px = peak + joint.sub_(peak).clamp_(min=floor).exp_().sum(0).log_()
        total += log_px.sum(dtype=torch.float64)
    return sums, total


_SCRIPTED: dict = {}  # function -> its TorchScript form, or None where scripting failed
# a pass of this many blocks or more runs the scripted loop on one thread too: its operations
# dispatch from C++ without Python's overhead (an E-step over 5 million rows, D = 16, K = 8, on
# one thread: 0.50-0.55 s against 0.58-0.69 s eager), which repays the ~50 ms of compiling
SCRIPT_BLOCKS = 64
_SCRIPTING = threading.Lock()


def _script(function):
    """``function`` compiled by TorchScript once per process, or ``function`` itself where
    TorchScript fails (it is deprecated, and may go).

    Why: each of a block's small operations holds the GIL while Python dispatches it, so
    Python threads running an eager block loop mostly wait for each other (the E-step's two
    threads took as long as one, 19 against 21 ms for N = 200,000, D = 16, K = 8 on 2 cores;
    two threads of 5 µs ops in a loop took 3x as long as one); a scripted loop calls its
    operations from C++ with the GIL released (the E-step: 11 ms on 2 threads). It costs
    ~50 ms once per process (compiling and the profiling executor's first runs), so only the
    threaded paths use it."""
    with _SCRIPTING:  # the threads of the first threaded E-step ask at once
        if function not in _SCRIPTED:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation
                    _SCRIPTED[function] = torch.jit.script(function)
            except Exception:  # noqa: BLE001 - any failure to script leaves the eager function
                _SCRIPTED[function] = None
    return _SCRIPTED[function] or function


def _native(x: torch.Tensor) -> bool:
    """Whether the E-step runs the compiled kernel (:mod:`zoo.em_native`): float32 rows,
    contiguous, on a CPU where a fast build of it runs."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()
            and em_native.kernel() is not None)


def _e_step_quadratic(config: GMMConfig, params: Params, x: torch.Tensor,
                      features: _Features, weights: torch.Tensor, threads: int | None = None,
                      statistics: bool = True, rows: torch.Tensor | None = None):
    """One pass over ``x`` in cache-sized row blocks, fused: per block its features ``φ`` are
    built in one reused buffer, one GEMM ``W φᵀ`` gives every log joint (K x rows), a
    logsumexp normalizes, and one GEMM ``R φ`` adds every responsibility-weighted sum of
    ``c_i c_j``, ``c`` and 1, i.e. all statistics about ``m``. Nothing of size N is kept:
    the memory is a block's features and joint, and the K x F sums. Without ``statistics``,
    the mean log p(x) alone (the second GEMM skipped). ``rows`` (float64, one per row; the
    compiled kernel only) receives each row's log p(x)."""
    k, d = config.components, config.dim
    size, full = features.size, config.full_matrices
    quadratic = size - d - 1
    # the largest constant, kept apart in float64: the float32 log joints then carry only
    # their differences from it, whose rounding is smaller (a few 1e-6 nats at D = 128)
    shift = weights[:, -1].max()
    weights = torch.cat([weights[:, :-1], weights[:, -1:] - shift], 1).to(x.dtype)
    if full:
        left, right = torch.triu_indices(d, d, device=x.device)
    budget = BLOCK_VALUES.get(x.device.type, BLOCK_VALUES["cuda"])
    # a multiple of 64 rows: every feature row of the buffer then starts 256-byte aligned, and
    # the products run twice as fast as at an odd width (measured: 29 against 50 ns a row)
    block = min(x.shape[0], max(256, budget // size // 64 * 64))

    floor = 2 * math.log(torch.finfo(x.dtype).eps)
    native = _native(x)
    if native:  # the features' pairs, in the order of the weights' quadratic columns
        if full:
            pairs = (left, right)
        else:
            pairs = (torch.arange(d), torch.arange(d))

    def reduce(begin: int, end: int, scripted: bool = False):
        """The K x F sums and the float64 total of log p(x) over rows begin..end."""
        if native:
            return em_native.share(x, weights, features.center, *pairs, begin, end, floor,
                                   statistics, rows=rows)
        share = _script(_quadratic_share) if scripted else _quadratic_share
        return share(x, weights, features.center, begin, end, block, full, floor, statistics)

    sums, total = _in_threads(reduce, x, block, threads)
    if rows is not None:
        rows += shift
    sums = sums.to(x.dtype)
    mean = (total / x.shape[0] + shift).to(x.dtype)
    if not statistics:
        return mean
    first, counts = sums[:, quadratic:-1], sums[:, -1]
    if full:
        second = sums.new_zeros(k, d, d)
        second[:, left, right] = sums[:, :quadratic]
        second[:, right, left] = sums[:, :quadratic]
    else:
        second = sums[:, :quadratic]
    center = features.center.expand(k, d)
    return MixtureStatistics(counts, first, second, center, x.shape[0]), mean


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
    full = config.full_matrices
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
