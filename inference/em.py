"""One EM loop for every model with closed-form E and M steps.

In the spirit of scikit-learn's ``BaseMixture.fit``: ``n_init`` restarts, a tolerance on the
change of the mean log-likelihood, ``max_iter``, the full history, the best restart kept, and a
``ConvergenceWarning`` that says what to try. The model supplies the numerics
(:class:`zoo.registry.EMSteps`); this loop only orders them.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

from inference.results import FitResult
from zoo.errors import InputError
from zoo.registry import ModelSpec, Params


def fit_em(
    spec: ModelSpec,
    config,
    x: torch.Tensor,
    *,
    n_init: int = 1,
    init: str | Params | None = None,
    tol: float = 1e-6,
    max_iter: int = 500,
    seed: int = 0,
    progress: bool = False,
) -> FitResult:
    """Fit ``spec`` to ``x : (N, D)`` by EM; returns the best of ``n_init`` restarts.

    ``init`` is one of ``spec.em.init_methods`` (default: the first) or a ``Params`` dict to
    start from (then ``n_init`` must be 1). ``tol`` is in nats per datapoint.
    ``history["log_likelihood"][i]`` is the mean log p(x) after ``i`` M-steps, so it has
    ``steps + 1`` entries and its last is the returned parameters' log-likelihood.
    """
    if spec.em is None:
        raise InputError(f"model '{spec.name}' has no EM steps; `lvm-zoo list` shows the "
                         "inference methods that apply to it")
    if n_init < 1:
        raise InputError(f"n_init={n_init} must be at least 1")
    if max_iter < 1:
        raise InputError(f"max_iter={max_iter} must be at least 1")
    if isinstance(init, dict) and n_init != 1:
        raise InputError("given initial parameters make restarts identical; use n_init=1")
    method = init if init is not None else spec.em.init_methods[0]
    if isinstance(method, str) and method not in spec.em.init_methods:
        raise InputError(f"unknown EM init '{method}' for {spec.name}; choose one of: "
                         + ", ".join(spec.em.init_methods))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    start = time.perf_counter()
    best = None
    finals = []
    for restart in range(n_init):
        params = (dict(method) if isinstance(method, dict)
                  else spec.em.init(config, x, generator, method))
        params, history, converged = _em_run(spec, config, x, params, tol, max_iter,
                                             progress and restart == 0)
        finals.append(history[-1])
        if best is None or history[-1] > best[1][-1]:
            best = (params, history, converged, restart)
    params, history, converged, restart = best
    if not converged:
        change = abs(history[-1] - history[-2]) if len(history) > 1 else math.inf
        warnings.warn(
            f"EM on {spec.name} did not converge in max_iter={max_iter} iterations (last change "
            f"{change:.3g} nats per datapoint, tol={tol:g}); raise max_iter (--max-iter), loosen "
            "tol, or try more restarts (n_init) / another init", ConvergenceWarning, stacklevel=2)
    return FitResult(
        model=spec.name, inference="em", guide=None, params=params,
        history={"log_likelihood": history}, seconds=time.perf_counter() - start,
        steps=len(history) - 1, converged=converged, device=str(x.device), seed=seed,
        info={"n_init": n_init, "best_restart": restart, "restart_log_likelihoods": finals,
              "tol": tol, "max_iter": max_iter,
              "init": method if isinstance(method, str) else "given"})


def _em_run(spec, config, x, params, tol, max_iter, progress):
    history: list[float] = []
    converged = False
    bar = tqdm(total=max_iter, desc=f"EM {spec.name}", disable=not progress, leave=False)
    for _ in range(max_iter):
        statistics, log_likelihood = spec.em.e_step(config, params, x)
        params = spec.em.m_step(config, x, statistics)
        history.append(float(log_likelihood))  # one host sync per iteration, for the tolerance
        bar.update()
        bar.set_postfix(log_likelihood=f"{history[-1]:.5f}")
        if not math.isfinite(history[-1]):
            bar.close()
            raise FloatingPointError(
                f"EM on {spec.name} reached a non-finite log-likelihood at iteration "
                f"{len(history)}; the data may have duplicated points or a constant column: "
                "raise reg_covar or standardize the data")
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            converged = True
            break
    bar.close()
    _, final = spec.em.e_step(config, params, x)
    history.append(float(final))
    return params, history, converged
