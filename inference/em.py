"""One EM loop for every model with closed-form E and M steps.

In the spirit of scikit-learn's ``BaseMixture.fit``: ``n_init`` restarts, a tolerance on the
change of the mean log-likelihood (nats per datapoint, scikit-learn's unit), ``max_iter``, the
full history, the best restart kept, and a ``ConvergenceWarning`` that says what to try. The
model supplies the numerics (:class:`zoo.registry.EMSteps`); this loop only orders them.

Where EM crawls (factor analysis: thousands of iterations, each gaining almost nothing), the
loop can accelerate it with SQUAREM (Varadhan & Roland 2008, scheme S3): from two EM updates
``θ0 -> θ1 -> θ2`` it extrapolates along ``r = θ1 - θ0`` and ``v = θ2 - 2 θ1 + θ0`` to
``θ' = θ0 - 2 α r + α² v`` with ``α = -|r| / |v|`` (at most -1), takes one stabilizing EM update
from ``θ'``, and keeps the result only if its log-likelihood is at least that of ``θ2``;
otherwise it falls back to ``θ2``. So the history stays monotone, as plain EM's. The
extrapolation runs in unconstrained coordinates read from the model's ``pyro.param``
constraints (log for positive variances, log for simplex weights (back by softmax), log-diagonal for
Cholesky factors), so that every extrapolated point is a valid parameter.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro.poutine.messenger import Messenger
from sklearn.exceptions import ConvergenceWarning
from torch.distributions import constraints, transform_to
from tqdm.auto import tqdm

from inference import distributed, interrupt
from inference.results import FitResult
from inference.shards import Rows
from zoo.errors import InputError
from zoo.registry import ModelSpec, Params

TOL = 1e-6  # nats per datapoint: scikit-learn's GaussianMixture stops at 1e-3
MAX_ITER = 500  # EM updates: scikit-learn's GaussianMixture stops at 100
STEP_GROWTH = 4.0  # SQUAREM's step bound |α| grows (shrinks) by this when it binds (fails)
# history indices whose parameters the fit keeps for figures (Bishop's "L = 1, 2, 5, 20"
# picture), so that no figure re-runs EM; kept only while the parameters are this small
SNAPSHOT_ITERATIONS = (0, 3, 5, 16)
SNAPSHOT_MAX_ELEMENTS = 1 << 22


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
    saved = _Saved(checkpoint, {
        "seed": seed, "n_init": n_init, "tol": tol, "max_iter": max_iter,
        "accelerate": bool(accelerate), "init": method if isinstance(method, str) else "given"})
    if resume and saved.path is not None and saved.path.is_file():
        saved.load(generator, rows.device)
    with interrupt.listening(saved.path is not None and rows.group is None):
        runs = _restarts(data, method, generator, n_init, tol, max_iter, accelerate, progress,
                         previous, saved)
        run, restart, finals = _best_restart(runs)
    if not run.converged:
        _warn_unconverged(spec, run.history, max_iter, tol)
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
    warnings.warn(
        f"EM on {spec.name} did not converge in max_iter={max_iter} iterations (last change "
        f"{change:.3g} nats per datapoint, tol={tol:g}); raise max_iter (--max-iter), loosen "
        "tol, or try more restarts (n_init) / another init", ConvergenceWarning, stacklevel=3)


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

class _Run:
    """One restart's outcome: the parameters, the history and what it cost."""

    def __init__(self, params, history, converged, updates, e_steps, kept=0, rejected=0,
                 snapshots=None):
        self.params, self.history, self.converged = params, history, converged
        self.updates, self.e_steps, self.kept, self.rejected = updates, e_steps, kept, rejected
        self.snapshots = snapshots or {}


def _keep(snapshots: dict, history: list, params: Params) -> None:
    """Keep ``params`` (the point of ``history[-1]``) if its index is a snapshot's and the
    parameters are small: references only, the M-step makes new tensors."""
    index = len(history) - 1
    if index in SNAPSHOT_ITERATIONS and sum(
            v.numel() for v in params.values()) <= SNAPSHOT_MAX_ELEMENTS:
        snapshots[index] = params


class _EMData:
    """The E and M steps on the rows as the fit sees them (:class:`inference.shards.Rows`):

    - one tensor: the model's steps as they are;
    - a summary (the model's ``summarize`` hook, PPCA and FA): the shards' and chunks' summaries
      combined once, then the steps on the summary; the rows are read once;
    - chunks and shards (the ``combine`` hook, the mixtures): every E-step passes over the
      chunks, combines their statistics, gathers every rank's and combines those in rank
      order; the log-likelihood is the row-weighted mean; the M-step sees only statistics.

    A start from the data is computed once, on rank 0 (on every row when they are in memory,
    on a seeded subsample of one chunk's size when they are streamed), and broadcast.
    """

    def __init__(self, spec: ModelSpec, config, rows: Rows):
        self.spec, self.config, self.rows, self.em = spec, config, rows, spec.em
        self.x = None  # what the model's steps take in place of the rows, where they can
        if not rows.parted:
            self.x = rows.tensor
        elif self.em.summarize is not None and self.em.combine_summaries is not None:
            local = self.em.combine_summaries(
                [self.em.summarize(config, chunk) for chunk in rows.chunks()])
            self.x = self.em.combine_summaries(rows.gather(local))
        elif self.em.combine is None:
            raise InputError(
                f"EM on {rows.world_size} processes or on chunks of a file needs the model's "
                f"statistics to combine, and '{spec.name}' declares no combine hook (EMSteps"
                ".combine); fit it in one process with its rows in memory")

    def e_step(self, params: Params):
        if self.x is not None:
            return self.em.e_step(self.config, params, self.x)
        parts, total = [], 0.0
        for chunk in self.rows.chunks():
            statistics, mean = self.em.e_step(self.config, params, chunk)
            parts.append(statistics)
            total = total + mean.double() * chunk.shape[0]
        local = (self.em.combine(parts), torch.as_tensor(total, dtype=torch.float64))
        gathered = self.rows.gather(local)
        statistics = self.em.combine([part for part, _ in gathered])
        return statistics, sum(value for _, value in gathered) / self.rows.num_data

    def m_step(self, statistics) -> Params:
        return self.em.m_step(self.config, self.x, statistics)

    def init(self, generator: torch.Generator, method: str) -> Params:
        rows = self.rows
        if self.x is not None and rows.group is None:
            return self.em.init(self.config, self.x, generator, method)
        params = None
        if rows.group is None or rows.group.is_main:
            if self.x is not None:
                source = self.x
            elif rows.streamed:
                source = rows.sample(rows._views[0].shape[0], generator)
            else:
                source = rows.x.to(rows.device)
            params = self.em.init(self.config, source, generator, method)
        if rows.group is not None:
            params = rows.group.broadcast(params, like=rows.probe(1))
        return params


def _evaluate(data: _EMData, params, iteration):
    """The E-step at ``params``: ``(statistics, mean log p(x) as a float)``; one host sync per
    iteration, for the tolerance."""
    statistics, log_likelihood = data.e_step(params)
    return statistics, finite(log_likelihood, f"EM on {data.spec.name}",
                              f"iteration {iteration}")


def finite(log_likelihood, what: str, where: str) -> float:
    """``log_likelihood`` as a float; a non-finite one is a ``FloatingPointError`` naming the
    likely causes and the fixes."""
    value = float(log_likelihood)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{what} reached a non-finite log-likelihood at {where}; the data may have "
            "duplicated points or a constant column: raise reg_covar or standardize the data")
    return value


def _em_run(data: _EMData, params, tol, max_iter, bar, previous: float | None = None,
            going: dict | None = None) -> _Run:
    """Plain EM, scikit-learn's loop: stop when the E-step's log-likelihood changed by less
    than ``tol``, after the M-step that followed it (so ``steps`` is scikit-learn's n_iter_).
    ``going``: the state a resumed run continues from."""
    history: list[float] = list(going["history"]) if going else []
    snapshots: dict = dict(going["snapshots"]) if going else {}
    converged = False
    for _ in range(max_iter - len(history)):
        if interrupt.pending() is not None:  # a signal: save at this iteration's start
            raise _Paused({"params": params, "history": history, "snapshots": snapshots})
        statistics, log_likelihood = _evaluate(data, params, len(history) + 1)
        history.append(log_likelihood)
        _keep(snapshots, history, params)
        params = data.m_step(statistics)
        bar.update()
        bar.set_postfix(log_likelihood=f"{history[-1]:.5f}")
        before = history[-2] if len(history) > 1 else previous
        if before is not None and abs(history[-1] - before) < tol:
            converged = True
            break
    _, final = _evaluate(data, params, len(history) + 1)
    history.append(final)
    _keep(snapshots, history, params)
    return _Run(params, history, converged, len(history) - 1, len(history),
                snapshots=snapshots)


def _squarem_run(data: _EMData, params, tol, max_iter, bar, coordinates,
                 going: dict | None = None) -> _Run:
    """SQUAREM (scheme S3) with the step bound of Varadhan & Roland's ``squarem``: ``|α|`` is
    at most ``bound``, which grows by :data:`STEP_GROWTH` each time it binds and the step is
    kept, and shrinks (to no less than 1) when a bound step is rejected.

    One iteration, for ``tol``, is one SQUAREM step: its gain in log p(x) from ``θ0`` to the
    point kept. An EM update cannot lower log p(x); one that does is rounding, so the run
    stops there, at the better point before it."""
    run = _Squarem(data, params, tol, max_iter, bar, coordinates)
    if going is not None:
        run.restore(going)
    while run.updates < max_iter and not run.converged:
        if interrupt.pending() is not None:  # a signal: save at this step's start
            raise _Paused(run.state())
        run.iterate()
    return _Run(run.point[0], run.history, run.converged, run.updates, run.e_steps, run.kept,
                run.rejected, run.snapshots)


class _Squarem:
    """One SQUAREM run in progress: the point kept, ``(params, statistics, log p(x))``, the
    history of the points kept, the step bound, and the cost so far (EM updates, E-steps,
    extrapolations kept and rejected)."""

    def __init__(self, data: _EMData, params, tol, max_iter, bar, coordinates):
        self.data, self.tol, self.max_iter = data, tol, max_iter
        self.bar, self.coordinates = bar, coordinates
        statistics, current = _evaluate(data, params, 0)
        self.point = (params, statistics, current)
        self.history = [current]
        self.snapshots: dict = {}
        _keep(self.snapshots, self.history, params)
        self.updates, self.e_steps, self.kept, self.rejected = 0, 1, 0, 0
        self.bound = 1.0
        self.converged = False

    COUNTS = ("updates", "e_steps", "kept", "rejected", "bound")

    def state(self) -> dict:
        """What a resumed run needs: the point's parameters (its statistics are the E-step
        at them), the history, the snapshots, the counts and the step bound."""
        return {"params": self.point[0], "history": self.history, "snapshots": self.snapshots,
                **{name: getattr(self, name) for name in self.COUNTS}}

    def restore(self, state: dict) -> None:
        self.history, self.snapshots = list(state["history"]), dict(state["snapshots"])
        for name in self.COUNTS:
            setattr(self, name, type(getattr(self, name))(state[name]))

    def iterate(self) -> None:
        """One SQUAREM step: two EM updates, then (if both were made and gained) the
        extrapolation; converged when the step gained less than ``tol``."""
        start = self.point
        points = self.em_updates()
        if len(points) == 3 and not self.converged and self.updates < self.max_iter:
            self.extrapolate(points)
        self.bar.set_postfix(log_likelihood=f"{self.point[2]:.5f}")
        if abs(self.point[2] - start[2]) < self.tol:
            self.converged = True

    def em_updates(self) -> list:
        """Up to two EM updates from the point kept (within ``max_iter``): the points, the
        start first; an update that lowers log p(x) is rounding: the run stops before it."""
        points = [self.point]
        for _ in range(2):
            if self.updates == self.max_iter:
                break
            point = self.em_update(points[-1][1])
            if point[2] < points[-1][2]:  # rounding: stop at the better point
                self.converged = True
                break
            points.append(point)
            self.accept(point)
        return points

    def em_update(self, statistics):
        """The M-step from ``statistics`` and the E-step at its parameters."""
        new = self.data.m_step(statistics)
        self.updates += 1
        self.e_steps += 1
        self.bar.update()
        return (new, *_evaluate(self.data, new, self.updates))

    def accept(self, point) -> None:
        """Keep ``point``: it is the run's, and the history's last entry."""
        self.point = point
        self.history.append(point[2])
        _keep(self.snapshots, self.history, point[0])

    def extrapolate(self, points: list) -> None:
        """S3's extrapolation from ``θ0, θ1, θ2`` and its stabilizing update, kept if no worse
        than ``θ2``; the step bound grows where it bound and the step was kept (or was the
        EM update itself, ``α = -1``), and shrinks where it bound and the step was rejected."""
        step = _squarem_step(self.coordinates, *(p[0] for p in points), self.bound)
        if step is None:
            return
        alpha, jumped = step
        kept = jumped is None or self.stabilize(jumped)
        if alpha <= -self.bound:
            self.bound = self.bound * STEP_GROWTH if kept else max(
                1.0, self.bound / STEP_GROWTH)

    def stabilize(self, jumped: Params) -> bool:
        """The stabilizing EM update from the extrapolated point (made or not, it counts as
        one update); whether its result was kept (no worse than the point kept)."""
        self.updates += 1
        self.bar.update()
        stabilized, used = _stabilized(self.data, jumped)
        self.e_steps += used
        if stabilized is not None and stabilized[2] >= self.point[2]:
            self.accept(stabilized)
            self.kept += 1
            return True
        self.rejected += 1
        return False

def _squarem_step(coordinates, first: Params, middle: Params, last: Params, bound: float):
    """S3's ``α = -|r| / |v|``, clipped to ``[-bound, -1]``, and the extrapolated point
    ``θ' = θ0 - 2 α r + α² v`` in unconstrained coordinates: ``(α, θ')``, with ``θ' = None``
    where ``α = -1`` (then ``θ' = θ2``); ``None`` where ``v`` vanishes (EM has converged to
    rounding)."""
    u0, u1, u2 = (coordinates.flatten(p) for p in (first, middle, last))
    r, v = u1 - u0, u2 - 2 * u1 + u0
    r_norm, v_norm = float(torch.linalg.vector_norm(r)), float(torch.linalg.vector_norm(v))
    if not (math.isfinite(r_norm) and math.isfinite(v_norm)) or v_norm == 0.0:
        return None
    alpha = max(-bound, min(-r_norm / v_norm, -1.0))
    if alpha == -1.0:
        return alpha, None
    return alpha, coordinates.unflatten(u0 - 2 * alpha * r + alpha**2 * v, last)


def _stabilized(data: _EMData, jumped: Params):
    """One EM update from the extrapolated point: ``((params, statistics, log p(x)) or None,
    E-steps spent)``, ``None`` where the point or its update is no valid parameter (a
    singular covariance, a non-finite log-likelihood)."""
    try:
        statistics, log_likelihood = data.e_step(jumped)
        if not math.isfinite(float(log_likelihood)):
            return None, 1
        stabilized = data.m_step(statistics)
        statistics, log_likelihood = data.e_step(stabilized)
    except (ValueError, RuntimeError, ArithmeticError):
        # InputError (a ValueError) for a singular covariance, LinAlgError (a RuntimeError)
        return None, 2
    log_likelihood = float(log_likelihood)
    if not math.isfinite(log_likelihood):
        return None, 2
    return (stabilized, statistics, log_likelihood), 2


class _Paused(Exception):
    """A signal came: the restart in progress stops at an iteration boundary with ``state``."""

    def __init__(self, state: dict):
        super().__init__("paused")
        self.state = state


class _Saved:
    """An EM fit's checkpoint (``path=None``: none): the restarts finished (``done``), the one
    going on (``going``: its state at an iteration boundary), the restart stream's state, the
    seconds spent; ``settings`` must match on a resume."""

    def __init__(self, path, settings: dict):
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


class _Stop(Exception):
    """Raised at the model's first sample site: its parameters are known by then."""


class _ReadConstraints(Messenger):
    """Records the constraint of every ``pyro.param`` site up to the first sample site."""

    def __init__(self):
        super().__init__()
        self.found: dict = {}

    def _pyro_param(self, msg) -> None:
        self.found[msg["name"]] = msg["kwargs"].get("constraint", constraints.real)

    def _pyro_sample(self, msg) -> None:
        raise _Stop


class _Coordinates:
    """``Params`` <-> one flat float64 vector of unconstrained coordinates, through
    ``transform_to`` of each parameter's constraint (the identity where the model declares
    none)."""

    def __init__(self, transforms: dict):
        self.transforms = transforms

    @classmethod
    def of(cls, spec: ModelSpec, config, params: Params, x: torch.Tensor) -> _Coordinates:
        """The constraints the model gives its ``pyro.param`` sites, read by running it up to
        its first sample site, in a parameter store of its own."""
        reader = _ReadConstraints()
        try:
            with pyro.get_param_store().scope(), reader:
                spec.make_model(config, params)(x)
        except _Stop:
            pass
        return cls({name: transform_to(reader.found.get(name, constraints.real))
                    for name in params})

    def flatten(self, params: Params) -> torch.Tensor:
        return torch.cat([self.transforms[name].inv(value.double()).reshape(-1)
                          for name, value in params.items()])

    def unflatten(self, flat: torch.Tensor, like: Params) -> Params:
        out, offset = {}, 0
        for name, value in like.items():
            transform = self.transforms[name]
            shape = transform.inverse_shape(value.shape)
            size = math.prod(shape)
            out[name] = transform(flat[offset:offset + size].reshape(shape)).to(value.dtype)
            offset += size
        return out
