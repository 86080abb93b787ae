"""One EM loop for every model with closed-form E and M steps.

In the spirit of scikit-learn's ``BaseMixture.fit``: ``n_init`` restarts, a tolerance on the
change of the mean log-likelihood (nats per datapoint, scikit-learn's unit), ``max_iter``, the
full history, the best restart kept, and a ``ConvergenceWarning`` that says what to try. The
model supplies the numerics (:class:`zoo.registry.EMSteps`); this loop only orders them.

Where EM crawls (factor analysis), it accelerates by SQUAREM (:mod:`inference.em_squarem`), whose
history stays monotone too. One restart's pieces (the E and M steps on the rows in memory, in
chunks or over processes; plain EM's loop) are :mod:`inference.em_restart`'s; this module orders
the restarts and keeps a checkpoint of them.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from inference import distributed, interrupt
from inference.convergence import warn_not_converged
from inference.em_restart import (
    SNAPSHOT_ITERATIONS,
    _em_run,
    _EMData,
    _Paused,
    _Run,
    finite,
)
from inference.em_squarem import _Coordinates, _squarem_run
from inference.results import FitResult
from inference.shards import Rows
from zoo.errors import InputError
from zoo.registry import ModelSpec, Params

TOL = 1e-6  # nats per datapoint: scikit-learn's GaussianMixture stops at 1e-3
MAX_ITER = 500  # EM updates: scikit-learn's GaussianMixture stops at 100

# a restart's snapshots (figures) and its non-finite check are imported from here too
__all__ = ["MAX_ITER", "SNAPSHOT_ITERATIONS", "TOL", "accelerates_by_default", "finite",
           "fit_em"]


def accelerates_by_default(spec: ModelSpec) -> bool:
    """Whether EM on ``spec`` uses SQUAREM unless told otherwise: the model's EM steps say so
    with an ``accelerate`` attribute (off where they do not)."""
    return bool(getattr(spec.em, "accelerate", False))


def fit_em(
    spec: ModelSpec,
    config,
    x: torch.Tensor,
    *,
    n_init: int = 1,
    init: str | Params | None = None,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
    accelerate: bool | None = None,
    seed: int = 0,
    progress: bool = False,
    previous: float | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Fit ``spec`` to ``x : (N, D)`` by EM; returns the best of ``n_init`` restarts.

    ``init`` is one of ``spec.em.init_methods`` (default: the first) or a ``Params`` dict to
    start from (then ``n_init`` must be 1). ``tol`` is in nats per datapoint: EM stops when an
    iteration changes the mean log p(x) by less (scikit-learn's rule and unit); with
    ``accelerate`` an iteration is one SQUAREM step (two EM updates, an extrapolation and a
    stabilizing update). ``max_iter`` bounds the EM updates (M-steps). ``accelerate=None``
    takes the model's default (:func:`accelerates_by_default`). ``previous`` (plain EM, a
    continued fit): the log-likelihood of the E-step before the start's last M-step, against
    which the first iteration's change is measured (scikit-learn's warm start), so that fits
    of ``max_iter=1`` in a row can converge.

    ``history["log_likelihood"]`` is the mean log p(x) at every point EM kept, the start first
    and the returned parameters' last, so it has ``steps + 1`` entries. Without acceleration
    entry ``i`` is the log-likelihood after ``i`` M-steps (EM's ascent: it never decreases but
    by rounding); with it, the points are the EM updates and the extrapolations kept, and it
    never decreases at all. ``info`` counts the EM updates, the E-steps (the cost) and the
    extrapolations kept and rejected.

    ``checkpoint`` (alone, not under a process group): where a SIGINT or SIGTERM saves the fit
    at the next iteration (:mod:`inference.interrupt`); ``resume`` continues from it, to end
    as the uninterrupted fit would.
    """
    method = _checked_init(spec, n_init, max_iter, init)
    if accelerate is None:
        accelerate = accelerates_by_default(spec)
    rows = x if isinstance(x, Rows) else Rows(x, group=distributed.current())
    start = time.perf_counter()
    data = _EMData(spec, config, rows)
    generator = torch.Generator(device=rows.device).manual_seed(seed)
    saved = _Saved(checkpoint, seed=seed, n_init=n_init, tol=tol, max_iter=max_iter,
                   accelerate=bool(accelerate), init=method if isinstance(method, str) else "given")
    if resume and saved.path is not None and saved.path.is_file():
        saved.load(generator, rows.device)
    with interrupt.listening(saved.path is not None and rows.group is None):
        runs = _restarts(data, method, generator, n_init, tol, max_iter, accelerate, progress,
                         previous, saved)
        run, restart, finals = _best_restart(runs)
    if not run.converged and (rows.group is None or rows.group.is_main):
        _warn_unconverged(spec, run.history, max_iter, tol)  # once for a process group
    return _em_result(spec, rows, run, time.perf_counter() - start + saved.seconds, seed,
                      method,
                      n_init=n_init, best_restart=restart, restart_log_likelihoods=finals,
                      tol=tol, max_iter=max_iter, accelerate=accelerate)


def _checked_init(spec: ModelSpec, n_init: int, max_iter: int, init):
    """The start :func:`fit_em` uses (an init method's name or a ``Params`` dict), after
    InputErrors naming a model without EM steps, a bad ``n_init`` or ``max_iter``, restarts
    from given parameters or an unknown init method."""
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
    return method


def _restarts(data: _EMData, method, generator: torch.Generator, n_init: int, tol: float,
              max_iter: int, accelerate: bool, progress: bool, previous: float | None,
              saved: _Saved):
    """Each restart's :class:`_Run`, in order: a start (``method``, drawn from ``generator``)
    and EM or SQUAREM from it. The progress bar shows the first restart; ``previous`` applies
    to the first restart only; SQUAREM's coordinates are read once, at the first start.
    ``saved``: the restarts a resumed fit had finished (yielded as they were) and the one it
    continues; a signal saves them all there and stops the fit."""
    coordinates = None
    yield from saved.done
    for restart in range(len(saved.done), n_init):
        going = saved.going
        saved.going = None
        params = (going["params"] if going is not None else dict(method)
                  if isinstance(method, dict) else data.init(generator, method))
        bar = tqdm(total=max_iter, desc=f"EM {data.spec.name}", leave=False,
                   disable=not (progress and restart == 0))
        try:
            if accelerate:
                if coordinates is None:
                    coordinates = _Coordinates.of(data.spec, data.config, params,
                                                  data.rows.probe())
                run = _squarem_run(data, params, tol, max_iter, bar, coordinates, going)
            else:
                run = _em_run(data, params, tol, max_iter, bar,
                              previous if restart == 0 else None, going)
        except _Paused as paused:
            saved.save(generator, paused.state)
            raise interrupt.Interrupted(
                interrupt.take(), checkpoint=saved.path,
                where=f"EM iteration {len(paused.state['history'])}"
                      + (f" of restart {restart + 1} of {n_init}" if n_init > 1 else "")
            ) from None
        finally:
            bar.close()
        saved.done.append(run)
        yield run



def _best_restart(runs) -> tuple[_Run, int, list]:
    """The run of highest final log p(x) (the first of equals), its index, and every run's
    final log p(x), in order."""
    best, finals = None, []
    for restart, run in enumerate(runs):
        finals.append(run.history[-1])
        if best is None or run.history[-1] > best[0].history[-1]:
            best = (run, restart)
    return (*best, finals)

def _warn_unconverged(spec: ModelSpec, history: list, max_iter: int, tol: float) -> None:
    """The ``ConvergenceWarning`` of a best restart that did not converge, raised at the
    caller of :func:`fit_em`."""
    change = abs(history[-1] - history[-2]) if len(history) > 1 else math.inf
    warn_not_converged(
        f"EM on {spec.name} did not converge in max_iter={max_iter} iterations (last change "
        f"{change:.3g} nats per datapoint, tol={tol:g}); raise max_iter (--max-iter), loosen "
        "tol, or try more restarts (n_init) / another init", stacklevel=3)


def _em_result(spec: ModelSpec, rows: Rows, run: _Run, seconds: float, seed: int, method,
               **settings) -> FitResult:
    """The :class:`FitResult` of :func:`fit_em` from its best run; ``settings`` (the restarts
    and the stopping rule) go into ``info``, before the run's cost."""
    return FitResult(
        model=spec.name, inference="em", guide=None, params=run.params,
        history={"log_likelihood": run.history}, seconds=seconds,
        steps=len(run.history) - 1, converged=run.converged, device=str(rows.device),
        seed=seed, snapshots=run.snapshots,
        info={**rows.describe(), **settings,
              "em_updates": run.updates, "e_steps": run.e_steps,
              "extrapolations_kept": run.kept, "extrapolations_rejected": run.rejected,
              "init": method if isinstance(method, str) else "given"})


class _Saved:
    """An EM fit's checkpoint (``path=None``: none): the restarts finished (``done``), the one
    going on (``going``: its state at an iteration boundary), the restart stream's state, the
    seconds spent; ``settings`` must match on a resume."""

    def __init__(self, path, **settings):
        self.path = None if path is None else Path(path)
        self.settings = settings
        self.done: list[_Run] = []
        self.going: dict | None = None
        self.seconds = 0.0
        self.start = time.perf_counter()

    def save(self, generator: torch.Generator, going: dict) -> None:
        interrupt.save_state(self.path, "em", self.settings, {
            "generator": generator.get_state(), "going": _stored(going),
            "seconds": self.seconds + time.perf_counter() - self.start,
            "done": [_stored({**vars(run), "history": run.history}) for run in self.done]})

    def load(self, generator: torch.Generator, device: torch.device) -> None:
        state = interrupt.load_state(self.path, "em", self.settings, device=device,
                                     streams=("generator",))
        generator.set_state(state["generator"])
        self.going = _loaded(state["going"])
        self.done = [_Run(**_loaded(run)) for run in state["done"]]
        self.seconds = float(state["seconds"])
        print(f"lvm-zoo: resuming EM from iteration {len(self.going['history'])}"
              + (f" of restart {len(self.done) + 1}" if self.done else "")
              + f" (checkpoint {self.path})", file=sys.stderr, flush=True)


def _stored(state: dict) -> dict:
    """``state`` with its history as a float64 tensor (exact), ready for a tensor file."""
    return {**state, "history": torch.tensor(state["history"], dtype=torch.float64)}


def _loaded(state: dict) -> dict:
    return {**state, "history": state["history"].tolist()}
