"""Coordinate-ascent variational inference (CAVI, variational Bayes) for conjugate models.

For a model that offers :data:`zoo.registry.CONJUGATE_UPDATES` (a
:class:`zoo.bayesian_gmm.CoordinateAscent`), each iteration updates q(local) given q(global)
(the softmax of log ρ) and then q(global) given q(local), both in closed form, and computes the
WHOLE ELBO, every constant kept, in nats. Every update maximizes the ELBO over its block, so
the ELBO never decreases: :func:`run_cavi` checks that after every iteration, and a decrease
beyond rounding (:func:`rounding_slack`) is reported with :class:`ElboDecreaseWarning` (a bug)
and recorded in ``decreases``. A model whose global update is regularized (scikit-learn's
``reg_covar``: the update maximizes ELBO - R) says so with ``update_penalty``; the E-step
raises the ELBO and the update raises ELBO - R, so an iteration may lower the ELBO by at most
R's fall during the update, and only a fall beyond that (plus rounding) is reported.

The loop is scikit-learn's (``BaseMixture.fit_predict``): from a start of q(local), first the
update of q(global), then per iteration q(local), q(global) and the bound at (q(local),
q(global)); stop when the bound changes by less than ``tol``; restarts keep the best bound.
``inference.estimators_sklearn.bayesian_mixture`` runs the same loop.

A model whose hook has ``updates`` (a :class:`zoo.bayesian_ppca.BlockCoordinateAscent`: Bayesian
PPCA with ARD) is fitted by :func:`run_blocks` instead: each sweep updates every block of q in
turn, each in closed form, and the whole ELBO is checked after every sweep (or every block).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from inference.convergence import warn_not_converged
from inference.results import FitResult
from inference.strategies import DEFAULT_CONTEXT, FitContext, Strategy, register
from zoo.errors import InputError
from zoo.registry import CONJUGATE_UPDATES

TOL = 1e-6  # nats per datapoint (the house unit; scikit-learn's 1e-3 is on the total bound)
MAX_ITER = 500


class ElboDecreaseWarning(RuntimeWarning):
    """The whole ELBO fell between two coordinate-ascent iterations by more than rounding."""


class CaviRun(NamedTuple):
    """One coordinate-ascent run from one start."""

    posterior: Any  # q(global), the model's own type
    resp: torch.Tensor  # q(local) of the last iteration, (N, K)
    elbo: float  # the whole ELBO at (resp, posterior), nats (-inf when no iteration ran)
    history: list  # the whole ELBO after every iteration, nats
    bounds: list  # the bound the stopping rule watched (the ELBO, or scikit-learn's)
    n_iter: int
    converged: bool
    decreases: list  # (iteration, amount in nats) of each decrease beyond rounding
    log_rho: Any = None  # log ρ at the final q(global): a final E-step's, (N, K)


def rounding_slack(value: float, num_data: int, dtype: torch.dtype) -> float:
    """How far an ELBO of magnitude ``value`` over ``num_data`` rows may move by rounding
    alone: 1000 ulps of the sum's terms, |ELBO| + N (each row's term is O(1) nats)."""
    return 1e3 * torch.finfo(dtype).eps * (abs(value) + num_data)


def run_cavi(steps, config, priors, x: torch.Tensor, resp: torch.Tensor | None, *,
             max_iter: int, tol: float, posterior=None, previous_elbo: float = -math.inf,
             bound=None, previous_bound: float = -math.inf, verbose: int = 0) -> CaviRun:
    """Coordinate ascent from q(local) = ``resp`` (or, a warm start, from q(global) =
    ``posterior``): at most ``max_iter`` iterations, stopping when the bound changes by less
    than ``tol`` (total nats, scikit-learn's rule). The bound is the whole ELBO, or
    ``bound(posterior, elbo)`` where given (scikit-learn's ``lower_bound_``); ``previous_*``
    are the values before the first iteration (a warm start's). The whole ELBO is checked
    never to fall, from ``previous_elbo`` on."""
    rows = steps.prepare(config, x)
    post = posterior if posterior is not None else steps.update_globals(config, priors, rows,
                                                                         resp)
    log_rho = steps.expected_log_joint(config, priors, post, rows)
    history, bounds, decreases = [], [], []
    value, converged, n_iter = previous_elbo, False, 0
    for n_iter in range(1, max_iter + 1):
        resp, entropy = _softmax_rows(log_rho)  # log_rho is spent: shifted in place
        before, post = post, steps.update_globals(config, priors, rows, resp)
        allowed = 0.0  # a regularized update may give back R's fall
        if steps.update_penalty is not None:
            allowed = max(0.0, float(steps.update_penalty(config, priors, before, post)))
        log_rho = steps.expected_log_joint(config, priors, post, rows)
        value = float(steps.elbo(config, priors, post, resp, log_rho, entropy))
        if not math.isfinite(value):
            raise FloatingPointError(f"the ELBO is {value} at iteration {n_iter}; increase "
                                     "reg_covar or check the data for constant columns")
        fall = previous_elbo - value
        if fall > rounding_slack(value, x.shape[0], x.dtype) + allowed:
            decreases.append((n_iter, fall))
            warnings.warn(f"CAVI: the whole ELBO fell by {fall:.3g} nats at iteration "
                          f"{n_iter} ({previous_elbo:.10g} -> {value:.10g}); coordinate ascent "
                          "cannot do that, so this is a bug: please report it",
                          ElboDecreaseWarning, stacklevel=2)
        history.append(value)
        previous_elbo = value
        current = value if bound is None else float(bound(post, value))
        bounds.append(current)
        change = current - previous_bound
        previous_bound = current
        if verbose >= 2:
            print(f"  Iteration {n_iter}\t ELBO {value:.6f}\t change {change:.3g}")
        if abs(change) < tol:
            converged = True
            break
    # row by row (a model may store log ρ by component; a row's argmax reads a row)
    return CaviRun(post, resp, value, history, bounds, n_iter, converged, decreases,
                   log_rho.contiguous())


def _softmax_rows(log_rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(torch.softmax(log_rho, 1), its entropy -Σ r log r)`` for an ``(N, K)`` table with
    few columns, in a few passes over it (PyTorch's CPU softmax along a short last dimension
    took 2.3x as long; the entropy comes from the shifted table and the row sums, without a
    logarithm of every entry). ``log_rho`` is overwritten (shifted by each row's maximum).
    log ρ - max is raised to at least log(smallest normal number) + 10: its exponential, at
    most 5e-304 of the row's largest term in float64, is then a normal number, no digit of
    any sum it enters, and the CPU's exp stays on its fast path (near and below the smallest
    normal number it took 7-100x as long per entry)."""
    shifted = log_rho.sub_(log_rho.amax(1, keepdim=True))
    shifted.clamp_(min=math.log(torch.finfo(log_rho.dtype).tiny) + 10.0)
    resp = shifted.exp()
    totals = resp.sum(1)
    resp.div_(totals[:, None])
    if not resp.is_contiguous() and resp.T.is_contiguous():  # stored as (K, N)
        entropy = totals.log().sum() - torch.dot(resp.T.reshape(-1), shifted.T.reshape(-1))
    else:
        entropy = totals.log().sum() - torch.dot(resp.reshape(-1), shifted.reshape(-1))
    return resp, entropy


def fit_cavi(steps, config, x: torch.Tensor, *, n_init: int = 1, init: str | None = None,
             max_iter: int = MAX_ITER, tol: float = TOL, generator: torch.Generator | None = None,
             priors=None) -> tuple[CaviRun, Any]:
    """The best of ``n_init`` coordinate-ascent runs, each from ``steps.initial_local`` with
    method ``init`` (default: the model's first). ``tol`` is in nats per datapoint. Returns
    ``(best run, priors)``."""
    init = init or steps.init_methods[0]
    if init not in steps.init_methods:
        raise InputError(f"--init {init!r} is not one of: " + ", ".join(steps.init_methods))
    priors = priors if priors is not None else steps.priors(config, x)
    best = None
    for _ in range(n_init):
        resp = steps.initial_local(config, x, generator, init)
        run = run_cavi(steps, config, priors, x, resp, max_iter=max_iter,
                       tol=tol * x.shape[0])
        if best is None or run.elbo > best.elbo:
            best = run
    return best, priors


class BlockRun(NamedTuple):
    """One coordinate-ascent run of a model whose blocks are all updated in turn."""

    posterior: Any  # q, the model's own type
    elbo: float  # the whole ELBO after the last sweep, nats
    history: list  # the whole ELBO after every sweep, nats
    n_iter: int
    converged: bool
    decreases: list  # (iteration, block, amount in nats) of each decrease beyond rounding


def run_blocks(steps, config, x: torch.Tensor, posterior, *, max_iter: int, tol: float,
               check_blocks: bool = False) -> BlockRun:
    """Sweeps of ``steps.updates`` (each block's closed-form optimum given the rest) from
    ``posterior`` until a sweep changes the whole ELBO by less than ``tol`` (total nats).
    The ELBO is checked never to fall after every sweep, or after every block update where
    ``check_blocks`` (one ELBO per block: slower)."""
    previous = float(steps.elbo(config, x, posterior))
    history, decreases = [], []
    value, converged, n_iter = previous, False, 0
    slack = rounding_slack(previous, x.shape[0], x.dtype)

    def checked(value, before, iteration, block):
        fall = before - value
        if not math.isfinite(value):
            raise FloatingPointError(f"the ELBO is {value} at iteration {iteration} "
                                     f"(block {block}); check the data for constant columns")
        if fall > slack:
            decreases.append((iteration, block, fall))
            warnings.warn(f"CAVI: the whole ELBO fell by {fall:.3g} nats at iteration "
                          f"{iteration}, block {block} ({before:.10g} -> {value:.10g}); "
                          "coordinate ascent cannot do that, so this is a bug: please report "
                          "it", ElboDecreaseWarning, stacklevel=3)

    for n_iter in range(1, max_iter + 1):
        start = previous
        for block, update in steps.updates:
            posterior = update(config, x, posterior)
            if check_blocks:
                value = float(steps.elbo(config, x, posterior))
                checked(value, previous, n_iter, block)
                previous = value
        if not check_blocks:
            value = float(steps.elbo(config, x, posterior))
            checked(value, previous, n_iter, "sweep")
        previous = value
        slack = rounding_slack(value, x.shape[0], x.dtype)
        history.append(value)
        if abs(value - start) < tol:
            converged = True
            break
    return BlockRun(posterior, value, history, n_iter, converged, decreases)


def fit_blocks(steps, config, x: torch.Tensor, *, n_init: int = 1, init: str | None = None,
               max_iter: int = MAX_ITER, tol: float = TOL,
               generator: torch.Generator | None = None) -> BlockRun:
    """The best of ``n_init`` block coordinate-ascent runs from ``steps.initial``;
    ``tol`` in nats per datapoint."""
    init = init or steps.init_methods[0]
    if init not in steps.init_methods:
        raise InputError(f"--init {init!r} is not one of: " + ", ".join(steps.init_methods))
    best = None
    for _ in range(n_init):
        start = steps.initial(config, x, generator, init)
        run = run_blocks(steps, config, x, start, max_iter=max_iter, tol=tol * x.shape[0])
        if best is None or run.elbo > best.elbo:
            best = run
    return best


@dataclass(frozen=True)
class CAVIOptions:
    n_init: int | None = field(default=None, metadata={
        "help": "CAVI restarts; the best whole ELBO is kept (default 1)", "min": 1})
    init: str | None = field(default=None, metadata={
        "help": "start of q: for a mixture, q(z) from kmeans (Lloyd from k-means++ seeds, the "
                "default), k-means++, random or random_from_data (scikit-learn's init_params); "
                "for bayesian-ppca, W from pca (the default) or random"})
    tol: float | None = field(default=None, metadata={
        "help": "CAVI stops when an iteration changes the whole ELBO by less than this, in "
                f"nats per datapoint (default {TOL:g})", "positive": True})
    max_iter: int | None = field(default=None, metadata={
        "help": f"CAVI iterations at most (default {MAX_ITER})", "min": 1})


class CoordinateAscentVI(Strategy):
    name = "cavi"
    summary = ("coordinate-ascent variational inference (variational Bayes): closed-form "
               "updates of a conjugate model's mean-field posterior, with the whole ELBO")
    Options = CAVIOptions
    requires = (CONJUGATE_UPDATES,)

    def fit(self, spec, config, x, options: CAVIOptions, *, guide=None,
            context: FitContext = DEFAULT_CONTEXT) -> FitResult:
        steps = spec.capability(CONJUGATE_UPDATES)
        if context.chunk_rows is not None:
            raise InputError("--inference cavi keeps the rows in memory; drop --chunk-rows")
        started = time.perf_counter()
        generator = torch.Generator(device=x.device).manual_seed(context.seed)
        if hasattr(steps, "updates"):  # every block in turn (zoo.bayesian_ppca)
            return self._fit_blocks(spec, steps, config, x, options, generator, context,
                                    started)
        run, _ = fit_cavi(steps, config, x, n_init=options.n_init or 1, init=options.init,
                          max_iter=options.max_iter or MAX_ITER, tol=options.tol or TOL,
                          generator=generator)
        return self._result(spec, steps, config, x, run, context, started, {})

    def _fit_blocks(self, spec, steps, config, x, options, generator, context,
                    started) -> FitResult:
        run = fit_blocks(steps, config, x, n_init=options.n_init or 1, init=options.init,
                         max_iter=options.max_iter or MAX_ITER, tol=options.tol or TOL,
                         generator=generator)
        return self._result(spec, steps, config, x, run, context, started,
                            steps.summary(config, run.posterior))

    def _result(self, spec, steps, config, x, run, context, started, extra) -> FitResult:
        """The fit's record: q is the guide's parameters (the model has no pyro.param of its
        own); the ELBO per iteration, per datapoint."""
        if not run.converged:
            warn_not_converged(f"CAVI did not converge in {run.n_iter} iterations; increase "
                               "max_iter or tol, or try more restarts (n_init)", stacklevel=4)
        n = x.shape[0]
        return FitResult(
            model=spec.name, inference=self.name, guide=steps.guide, params={},
            guide_params={k: v.detach() for k, v in
                          steps.to_params(config, run.posterior).items()},
            history={"elbo": [v / n for v in run.history]},
            seconds=time.perf_counter() - started, steps=run.n_iter, converged=run.converged,
            device=str(x.device), seed=context.seed,
            info={"elbo": run.elbo, "elbo_per_datapoint": run.elbo / n,
                  "elbo_decreases": run.decreases, **extra})


register(CoordinateAscentVI())
