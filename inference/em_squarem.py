"""SQUAREM for :mod:`inference.em`: EM accelerated where it crawls.

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

import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints, transform_to

from inference import interrupt
from inference.em_restart import _EMData, _evaluate, _keep, _Paused, _Run
from zoo.registry import ModelSpec, Params

STEP_GROWTH = 4.0  # SQUAREM's step bound |α| grows (shrinks) by this when it binds (fails)


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
