"""One SVI step, composed as ``pyro.infer.SVI.step`` composes it: ELBO gradients, one update.

:class:`SVIStep` joins a model, a guide, an ELBO estimator (:class:`Estimator`, with the
JIT-compiled twin's fallback) and one torch Adam over the param store's unconstrained tensors.
It owns a param-store state and torch random streams of its own and swaps them in around each
step (:meth:`SVIStep.owned`), so two fits in one process can be interleaved step by step and
each gives the numbers it gives alone. The loop around it is :mod:`inference.svi_loop`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import pyro
import pyro.infer
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled

from inference.data import random_streams, set_random_streams
from inference.svi_rows import OnRows, rows_fixed_quietly
from zoo.errors import InputError

# The ELBO estimators a user can name; each is Pyro's own class.
ELBOS: dict[str, Callable[..., pyro.infer.ELBO]] = {
    "Trace_ELBO": pyro.infer.Trace_ELBO,
    "TraceMeanField_ELBO": pyro.infer.TraceMeanField_ELBO,
    "TraceGraph_ELBO": pyro.infer.TraceGraph_ELBO,
    "TraceEnum_ELBO": pyro.infer.TraceEnum_ELBO,
    "RenyiELBO": pyro.infer.RenyiELBO,
    "JitTrace_ELBO": pyro.infer.JitTrace_ELBO,
    # JitTraceMeanField_ELBO is left out: in Pyro 1.9.2 it re-traces on every step (~7x slower)
    "JitTraceEnum_ELBO": pyro.infer.JitTraceEnum_ELBO,
}

# ELBO estimators with a JIT-compiled twin: ``jit=True`` uses the twin (Pyro traces model and
# guide once and replays the compiled graph), falling back to the plain one if tracing fails.
JIT_VARIANTS = {"Trace_ELBO": "JitTrace_ELBO", "TraceEnum_ELBO": "JitTraceEnum_ELBO"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept."""


def make_elbo(name: str = "Trace_ELBO", *, num_particles: int = 1, **options) -> pyro.infer.ELBO:
    """Pyro's ELBO estimator called ``name``; particles are vectorized.

    ``RenyiELBO`` takes ``alpha`` (0 gives the IWAE bound); enumeration estimators use
    ``max_plate_nesting=1`` (the data plate) unless told otherwise.
    """
    if name not in ELBOS:
        raise InputError(f"unknown ELBO '{name}'; choose one of: {', '.join(ELBOS)}")
    if num_particles < 1:
        raise InputError(f"num_particles={num_particles} must be at least 1")
    options.setdefault("max_plate_nesting", 1)
    if num_particles > 1:
        options.setdefault("vectorize_particles", True)
    return ELBOS[name](num_particles=num_particles, **options)


def split_params(model, guide, x: torch.Tensor, **kwargs) -> tuple[list[str], list[str]]:
    """Names of the ``pyro.param`` sites of ``model`` and of the guide's own (disjoint)."""
    guide_trace = poutine.trace(guide).get_trace(x, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, **kwargs)
    # A parameter the guide reads from the model (the exact guide does) is the model's.
    model_names = [n for n, s in model_trace.nodes.items() if s["type"] == "param"]
    guide_names = [n for n, s in guide_trace.nodes.items()
                   if s["type"] == "param" and n not in model_names]
    return model_names, guide_names


class Estimator:
    """A fit's ELBO estimator: Pyro's, by name (or an instance). With ``jit=True`` and a name
    in :data:`JIT_VARIANTS` it is the JIT-compiled twin, and if the first step fails to trace
    it falls back for good to the plain one; ``fallback`` then says why."""

    def __init__(self, elbo: str | pyro.infer.ELBO = "Trace_ELBO", *, num_particles: int = 1,
                 jit: bool = False):
        named = isinstance(elbo, str)
        self.loss = make_elbo(elbo, num_particles=num_particles) if named else elbo
        self.plain, self.fallback = None, None
        if jit and named and elbo in JIT_VARIANTS:
            self.plain = self.loss
            self.loss = make_elbo(JIT_VARIANTS[elbo], num_particles=num_particles)

    @property
    def name(self) -> str:
        return self.loss.__class__.__name__

    def loss_and_grads(self, model, guide, *args, first: bool, reset: Callable[[], None],
                       **kwargs) -> float:
        """The loss (minus the ELBO, nats); gradients left on the parameters. ``reset`` clears
        a failed first trace's gradients before the plain estimator runs."""
        try:
            if first and self.plain is not None:  # the JIT twin traces here, once
                with warnings.catch_warnings():
                    # torch 2.9+ deprecates torch.jit.trace, which Pyro's Jit*_ELBO call: the
                    # notice is for Pyro, not for a user of lvm-zoo (it still traces)
                    warnings.filterwarnings("ignore", message=".*torch.jit.trace.* deprecated",
                                            category=FutureWarning)
                    return float(self.loss.loss_and_grads(model, guide, *args, **kwargs))
            return float(self.loss.loss_and_grads(model, guide, *args, **kwargs))
        except (RuntimeError, TypeError, ValueError, NotImplementedError) as error:
            if self.plain is None or not first:
                raise
            self.loss, self.plain = self.plain, None
            self.fallback = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            reset()
            return float(self.loss.loss_and_grads(model, guide, *args, **kwargs))


class SVIStep:
    """``step(x)`` (or ``step(x, rows)`` with ``on_rows``): the ELBO's gradients, then one torch
    Adam update of every parameter of ``model`` and ``guide``; returns the loss (a float).

    The parameters are registered at construction (lazy initializations run on ``x``, with
    ``kwargs``: ``num_data``, ``subsample_size``), in a param-store state of this step's own,
    from the torch random streams current then; both are swapped in around every step
    (:meth:`owned`) and out after it. ``sync(names, unconstrained, loss) -> loss`` runs between
    the gradients and the update (data parallelism averages there). A non-finite loss or
    gradient raises :class:`TrainingDiverged` before the update. Pyro's validation runs on the
    first step alone (where mistakes show; after that it costs 5-10x per step)."""

    def __init__(self, model, guide, x: torch.Tensor, estimator: Estimator, *, lr: float,
                 on_rows: bool = False, sync=None, label: str = "", **kwargs):
        self.estimator, self.kwargs, self.sync, self.label = estimator, kwargs, sync, label
        self.on_rows = on_rows  # the rows are a positional input, fixed onto the data plate
        self.model, self.guide = (OnRows(model), OnRows(guide)) if on_rows else (model, guide)
        self.device, self.calls, self.grad_norms = x.device, 0, {}
        self.validate = is_validation_enabled()
        self._store: dict = {"params": {}, "constraints": {}}
        self._streams, self._owned = random_streams(x.device), False
        with self.owned():
            store = pyro.get_param_store()
            self.model_names, self.guide_names = split_params(model, guide, x, **kwargs)
            self.unconstrained = dict(store.named_parameters())
            self.registered = len(store)
        self.names = sorted(self.model_names + self.guide_names)  # not those poutine.block hides
        self.whitened = {n: Whitened(self.unconstrained[n], *factor) for n, factor
                         in _preconditioners(guide).items() if n in self.guide_names}
        # one torch Adam over the unconstrained tensors: cheaper per step than pyro.optim's
        # one optimizer per parameter, and the same update (over the whitened coordinates of
        # a parameter the guide preconditions)
        self.optimizer = torch.optim.Adam(
            [self.whitened[n].white if n in self.whitened else self.unconstrained[n]
             for n in self.names], lr=lr)

    @contextmanager
    def owned(self) -> Iterator[None]:
        """This step's param store and random streams as the process's own (re-entrant)."""
        if self._owned:
            yield
            return
        outer = random_streams(self.device)
        set_random_streams(self._streams, self.device)
        self._owned = True
        try:
            with pyro.get_param_store().scope(self._store):
                yield
        finally:
            self._owned = False
            self._streams = random_streams(self.device)
            set_random_streams(outer, self.device)

    def step(self, *args) -> float:
        with self.owned():
            self.optimizer.zero_grad(set_to_none=True)
            first = self.calls == 0
            checked = self.validate and first
            with pyro.validation_enabled(checked), (
                    rows_fixed_quietly() if self.on_rows and checked else nullcontext()):
                value = self.estimator.loss_and_grads(
                    self.model, self.guide, *args, first=first,
                    reset=lambda: self.optimizer.zero_grad(set_to_none=True), **self.kwargs)
            if self.sync is not None:
                value = self.sync(self.names, self.unconstrained, value)
            bad = (f"the loss became {value}" if not math.isfinite(value) else
                   self._nonfinite_gradient())
            if bad:
                raise TrainingDiverged(bad)
            if len(pyro.get_param_store()) != self.registered:
                raise RuntimeError(f"{self.label} created parameters after its first call; "
                                   "create every pyro.param unconditionally")
            for name, whitened in self.whitened.items():
                whitened.pull(self.unconstrained[name])
            self.optimizer.step()
            for name, whitened in self.whitened.items():
                whitened.push(self.unconstrained[name])
            self.calls += 1
        return value

    def _nonfinite_gradient(self) -> str:
        """``nonfinite_gradient``, keeping each gradient's L2 norm (:attr:`grad_norms`)."""
        grads = {n: self.unconstrained[n].grad for n in self.names
                 if self.unconstrained[n].grad is not None}
        self.grad_norms = dict(zip(grads, torch._foreach_norm(list(grads.values()), 2),
                                   strict=True)) if grads else {}
        return nonfinite_gradient(self.names, self.unconstrained, self.grad_norms)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def streams(self) -> dict:
        """The fit's torch random streams as they are now."""
        return random_streams(self.device) if self._owned else self._streams

    def values(self) -> dict[str, torch.Tensor]:
        """A copy of the unconstrained parameters, by name."""
        return {n: self.unconstrained[n].detach().clone() for n in self.names}

    def assign(self, values: dict[str, torch.Tensor]) -> None:
        """Set the unconstrained parameters to ``values`` (a checkpoint's, the best window's)."""
        with torch.no_grad():
            for name in self.names:
                self.unconstrained[name].copy_(values[name])
                if name in self.whitened:
                    self.whitened[name].follow(values[name])

    def whitened_values(self) -> dict[str, torch.Tensor]:
        """A copy of the whitened coordinates Adam steps on (:class:`Whitened`), by name."""
        return {n: w.white.detach().clone() for n, w in self.whitened.items()}

    def load(self, state: dict, streams: dict, path) -> None:
        """A checkpoint's parameters (and the whitened coordinates Adam stepped on, as they
        were: recomputed from the parameters they would differ in the last bit), Adam state
        and random ``streams``; the learning rate stays the one given now."""
        lr = self.lr
        self.assign(state["params"])
        saved = state.get("whitened") or {}
        with torch.no_grad():
            for name, whitened in self.whitened.items():
                if name in saved and saved[name].shape == whitened.white.shape:
                    whitened.white.copy_(saved[name])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as error:
            raise InputError(f"checkpoint {path} holds an optimizer state that does not fit "
                             f"this model and guide ({error}); use a new --out folder") from None
        self.lr = lr  # a resumed fit takes the learning rate it is given now
        if self._owned:
            set_random_streams(streams, self.device)
        else:
            self._streams = streams

    def params(self) -> tuple[dict, dict]:
        """The model's and the guide's parameters, constrained, by param-store name."""
        with self.owned():
            store = pyro.get_param_store()
            return ({n: store[n].detach().clone() for n in self.model_names},
                    {n: store[n].detach().clone() for n in self.guide_names})

    def release(self) -> None:
        """Hand the fit's random streams to the process (a fit run alone leaves the process's
        streams where its last step left them)."""
        set_random_streams(self._streams, self.device)


class Whitened:
    """Adam over whitened coordinates w of a parameter θ = anchor + F w (F a vector of scales
    or a lower-triangular matrix, from the guide's :meth:`preconditioners`): the same
    reparametrization as writing the guide in units of the posterior's sds, done in the
    optimizer so that the guide's parameters keep their names and meaning. Adam's steps are
    about ``lr`` per coordinate whatever the gradient's scale, so in θ's own units a step of
    0.01 can be ten posterior sds of a tight coefficient; in w's it is a hundredth of one."""

    def __init__(self, param: torch.Tensor, anchor: torch.Tensor, factor: torch.Tensor):
        self.anchor = anchor.detach().reshape(-1).to(param).clone()
        self.factor = factor.detach().to(param)
        self.white = torch.zeros_like(self.anchor, requires_grad=True)
        self.follow(param)

    def pull(self, param: torch.Tensor) -> None:
        """dL/dw = Fᵀ dL/dθ, for Adam to step on (θ's own gradient is taken away: Adam's
        ``zero_grad`` does not reach it)."""
        grad, param.grad = param.grad, None
        if grad is None:
            self.white.grad = None
            return
        flat = grad.reshape(-1)
        self.white.grad = (self.factor * flat if self.factor.dim() == 1
                           else self.factor.T @ flat)

    def push(self, param: torch.Tensor) -> None:
        """θ = anchor + F w after Adam's step on w."""
        with torch.no_grad():
            step = (self.factor * self.white if self.factor.dim() == 1
                    else self.factor @ self.white)
            param.copy_((self.anchor + step).reshape(param.shape))

    def follow(self, param: torch.Tensor) -> None:
        """w for a θ set from outside (a checkpoint, the averaged iterate)."""
        with torch.no_grad():
            offset = (param.detach().reshape(-1) - self.anchor)
            self.white.copy_(offset / self.factor if self.factor.dim() == 1 else
                             torch.linalg.solve_triangular(
                                 self.factor, offset[:, None], upper=False)[:, 0])


def _preconditioners(guide) -> dict:
    """``{param-store name: (anchor, factor)}`` from a guide that offers them."""
    offer = getattr(guide, "preconditioners", None)
    return offer() if callable(offer) else {}


def nonfinite_gradient(names: list[str], unconstrained: dict, norms: dict | None = None) -> str:
    """A phrase naming the parameters whose gradient is NaN or infinite ("" when none is);
    ``norms``: the gradients' L2 norms by name, when already taken."""
    grads = {n: unconstrained[n].grad for n in names if unconstrained[n].grad is not None}
    if not grads:
        return ""
    # one fused reduction per step: the L2 norms are finite exactly when every entry is (a NaN
    # or an infinity propagates); 20x cheaper than the max-norm or isfinite() on the CPU
    norms = list(norms.values()) if norms else torch._foreach_norm(list(grads.values()), 2)
    if math.isfinite(float(torch.stack(norms).sum())):
        return ""
    bad = [n for n, g in grads.items() if not g.isfinite().all()]
    if not bad:  # the norm overflowed on huge but finite gradients: not this check's business
        return ""
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"the gradient of {', '.join(bad[:3])}{more} became non-finite"
