"""Stochastic variational inference: one small fit loop for any model, guide and ELBO.

The loop only composes a Pyro ELBO estimator (its ``loss_and_grads``) with one torch Adam over
the param store's unconstrained tensors, in a param-store scope of its own so that two fits in
one process never share parameters. It checkpoints atomically (resumable bit for bit) and stops
on a non-finite loss before the bad update is applied.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.infer
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from tqdm.auto import tqdm

from inference.results import FitResult
from inference.runs import load_checkpoint, save_checkpoint
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


STOP_TOL = 1e-4  # nats per datapoint per window: the stopping rule's default
STOP_WINDOW = 100  # steps per window
CHECKPOINT_SECONDS = 60.0  # a long fit with a checkpoint path saves at least this often


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


def fit_svi(
    model,
    guide,
    x: torch.Tensor,
    *,
    elbo: str | pyro.infer.ELBO = "Trace_ELBO",
    steps: int = 1000,
    lr: float = 1e-2,
    batch_size: int | None = None,
    num_particles: int = 1,
    seed: int = 0,
    binarize: str | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    resume: bool = False,
    stop_tol: float = STOP_TOL,
    stop_window: int = STOP_WINDOW,
    progress: bool = False,
    model_name: str = "",
    guide_name: str = "",
) -> FitResult:
    """Maximize the ELBO of ``model``/``guide`` on ``x : (N, D)`` with Adam.

    Each step sees ``batch_size`` rows chosen by the data plate's subsampling (all rows when
    ``None``); the ELBO is scaled to the full data set. ``history["elbo"]`` holds the ELBO
    estimate of every step in mean nats per datapoint. ``binarize="dynamic"`` draws a fresh
    Bernoulli binarization of ``x`` (grayscale in [0, 1]) every epoch. With ``checkpoint`` set,
    the state is written there atomically every ``checkpoint_every`` steps and at the end;
    ``resume=True`` continues from it. A non-finite loss raises :class:`TrainingDiverged`.

    The stopping rule (:class:`StoppingRule`): the ELBO history is cut into windows of
    ``stop_window`` steps; when the mean of a window exceeds the previous window's mean by
    less than ``stop_tol`` nats per datapoint, three windows in a row, the fit has converged
    and stops (``converged=True``). ``steps`` is the cap; ``stop_tol=0`` runs every step.
    """
    num_data = x.shape[0]
    if steps < 1:
        raise InputError(f"steps={steps} must be at least 1")
    if batch_size is not None and not 1 <= batch_size <= num_data:
        raise InputError(f"batch_size={batch_size} must be between 1 and the {num_data} "
                         "training rows")
    batch = None if batch_size is None or batch_size == num_data else batch_size
    steps_per_epoch = math.ceil(num_data / (batch or num_data))
    loss = make_elbo(elbo, num_particles=num_particles) if isinstance(elbo, str) else elbo
    kwargs = {"num_data": num_data, "subsample_size": batch}
    history: list[float] = []
    start_step = 0
    rule = StoppingRule(stop_tol, stop_window)
    pyro.set_rng_seed(seed)
    validate = is_validation_enabled()
    with pyro.get_param_store().scope():
        store = pyro.get_param_store()
        data = _binarized(x, binarize)
        # Register every parameter once (lazy initializations run here), then hand the
        # unconstrained tensors to one torch Adam: cheaper per step than pyro.optim's
        # one-optimizer-per-parameter, and the same update.
        model_names, guide_names = split_params(model, guide, data, **kwargs)
        unconstrained = dict(store.named_parameters())
        names = sorted(model_names + guide_names)  # not those hidden by poutine.block
        registered = len(store)
        optimizer = torch.optim.Adam([unconstrained[n] for n in names], lr=lr)
        if resume and checkpoint is not None and Path(checkpoint).exists():
            start_step, history = _restore(checkpoint, names, unconstrained, optimizer)
            data = _binarized(x, binarize)
        start = last_save = time.perf_counter()
        step = start_step - 1
        bar = tqdm(range(start_step, steps), desc=f"SVI {model_name} {guide_name}".rstrip(),
                   disable=not progress, leave=False)
        for step in bar:
            if binarize == "dynamic" and step % steps_per_epoch == 0 and step > start_step:
                data = _binarized(x, binarize)
            optimizer.zero_grad(set_to_none=True)
            # Pyro's validation (shapes, supports) runs on the first step, where mistakes show;
            # after that it only costs time (5-10x per step on small models).
            with pyro.validation_enabled(validate and step == start_step):
                value = float(loss.loss_and_grads(model, guide, data, **kwargs))
            if not math.isfinite(value):
                kept = f"; the last good checkpoint is {checkpoint}" if checkpoint else ""
                raise TrainingDiverged(
                    f"the loss became {value} at step {step + 1} of {model_name} with guide "
                    f"{guide_name}{kept}; lower the learning rate (--lr) or check the data")
            if len(store) != registered:
                raise RuntimeError(f"{model_name}/{guide_name} created parameters after its "
                                   "first call; create every pyro.param unconditionally")
            optimizer.step()
            history.append(-value / num_data)
            if step % 25 == 0:
                bar.set_postfix(elbo=f"{history[-1]:.4f}")
            if checkpoint is not None and _due(step + 1, checkpoint_every, last_save,
                                               checkpoint_seconds):
                _save(checkpoint, step + 1, history, names, unconstrained, optimizer)
                last_save = time.perf_counter()
            if rule.converged(history):
                break
        bar.close()
        seconds = time.perf_counter() - start
        taken = step + 1
        if checkpoint is not None:
            _save(checkpoint, taken, history, names, unconstrained, optimizer)
        params = {n: store[n].detach().clone() for n in model_names}
        guide_params = {n: store[n].detach().clone() for n in guide_names}
    return FitResult(
        model=model_name, inference="svi", guide=guide_name or None, params=params,
        guide_params=guide_params, history={"elbo": history}, seconds=seconds, steps=taken,
        converged=rule.converged(history), device=str(x.device), seed=seed,
        info={"elbo_estimator": loss.__class__.__name__, "lr": lr, "batch_size": batch_size,
              "num_particles": num_particles, "max_steps": steps, "stop_tol": stop_tol,
              "stop_window": stop_window})


class StoppingRule:
    """Converged when the mean ELBO of each of the last ``patience`` windows of ``window``
    steps exceeds the window before it by less than ``tol`` nats per datapoint. Window means
    smooth the step-to-step Monte Carlo noise; needing several flat windows in a row keeps one
    noisy window from stopping a fit that still climbs. ``tol=0`` never stops."""

    def __init__(self, tol: float = 1e-4, window: int = 100, patience: int = 3):
        self.tol, self.window, self.patience = tol, window, patience

    def converged(self, history: list[float]) -> bool:
        needed = self.window * (self.patience + 1)
        if self.tol <= 0 or len(history) < needed or len(history) % self.window:
            return False
        recent = torch.tensor(history[-needed:], dtype=torch.float64)
        means = recent.view(self.patience + 1, self.window).mean(1)
        return bool(((means[1:] - means[:-1]) < self.tol).all())


def _due(step: int, every: int, last: float, seconds: float) -> bool:
    """A checkpoint every ``every`` steps when set, else every ``seconds`` of training."""
    if every:
        return step % every == 0
    return seconds > 0 and time.perf_counter() - last >= seconds


def _binarized(x: torch.Tensor, binarize: str | None) -> torch.Tensor:
    return torch.bernoulli(x) if binarize == "dynamic" else x


def _save(path, step, history, names, unconstrained, optimizer) -> None:
    save_checkpoint(path, {
        "step": step,
        "history": torch.tensor(history, dtype=torch.float64),
        # unconstrained values: the constraints are re-created by running model and guide
        "params": {n: unconstrained[n].detach().clone() for n in names},
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
    })


def _restore(path, names, unconstrained, optimizer) -> tuple[int, list[float]]:
    state = load_checkpoint(path)
    if sorted(state["params"]) != names:
        raise InputError(f"checkpoint {path} holds parameters {sorted(state['params'])}, not "
                         f"this model and guide's {names}; use a new --out folder")
    with torch.no_grad():
        for name in names:
            unconstrained[name].copy_(state["params"][name])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), state["history"].tolist()
