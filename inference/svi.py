"""Stochastic variational inference: one small fit loop for any model, guide and ELBO.

The loop only composes a Pyro ELBO estimator (its ``loss_and_grads``) with one torch Adam over
the param store's unconstrained tensors, in a param-store scope of its own so that two fits in
one process never share parameters. It checkpoints atomically (resumable bit for bit, the time
and history of the whole run kept), returns the best window's parameters when the ELBO
collapsed late, and stops on a non-finite loss or gradient before the bad update is applied.

Minibatches are drawn by the loop itself (:class:`RowDraw`: a seeded generator of its own, its
state in the checkpoint) and fixed onto the data plate by conditioning its subsample site, the
way :mod:`inference.evaluate` chooses rows. Under a ``torch.distributed`` process group
(:func:`inference.distributed.current`) the same loop is data-parallel with
``DistributedDataParallel``'s semantics: every rank draws the same ``W B`` rows and takes its
own ``B`` of them, the gradients are averaged over the ranks before Adam's step, so that every
rank takes the update a single process takes on the global batch.
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import pyro
import pyro.infer
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from tqdm.auto import tqdm

from inference import distributed
from inference.results import FitResult
from inference.runs import load_checkpoint, save_checkpoint
from inference.svi_rows import (
    OnRows,
    RowDraw,
    all_reduce,
    broadcast_params,
    checkpoint_exists,
    rows_fixed_quietly,
)
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
    jit: bool = False,
    stop_tol: float = STOP_TOL,
    stop_window: int = STOP_WINDOW,
    progress: bool = False,
    model_name: str = "",
    guide_name: str = "",
    restart: int | None = None,
) -> FitResult:
    """Maximize the ELBO of ``model``/``guide`` on ``x : (N, D)`` with Adam.

    Each step sees ``batch_size`` rows chosen by the data plate's subsampling (all rows when
    ``None``); the ELBO is scaled to the full data set. ``history["elbo"]`` holds the ELBO
    estimate of every step in mean nats per datapoint. ``binarize="dynamic"`` draws a fresh
    Bernoulli binarization of ``x`` (grayscale in [0, 1]) every epoch.

    Checkpoints: with ``checkpoint`` set, the state (unconstrained parameters, Adam, the random
    streams, the history, the seconds trained, the best window's parameters) is written there
    atomically every ``checkpoint_every`` steps (when set, else every ``checkpoint_seconds`` of
    training) and at the end. ``resume=True`` continues from it bit for bit: ``history``,
    ``seconds`` and ``steps`` then cover the whole run, ``info["resumed_from_step"]`` says where
    it picked up (``None`` for a fresh fit), and one line on stderr says so. A checkpoint whose
    fit had already ended (the cap, or the stopping rule) is returned as it was, without a step.
    ``restart`` only names the restart in that line.

    The stopping rule (:class:`StoppingRule`): the ELBO history is cut into windows of
    ``stop_window`` steps; when the mean of a window exceeds the previous window's mean by
    less than ``stop_tol`` nats per datapoint, three windows in a row, the fit has converged
    and stops. ``steps`` is the cap; ``stop_tol=0`` runs every step.

    The best state: the parameters at the end of the window with the highest mean are kept
    aside. If the last ``stop_window`` steps average worse than that window by more than
    :func:`collapse_tolerance` (three standard deviations of the difference of two window means
    beyond what being the best of many windows gains from noise, and at least 1e-3 of the
    ELBO's size, 1e-3 nats per datapoint at the least), the fit collapsed:
    the best window's parameters are returned, ``info["kept"] = "best"`` with ``best_step``
    (the steps taken when they were current) and ``collapsed_at`` (the end of the first window
    after it that is worse by that much); otherwise ``info["kept"] = "last"``. ``converged`` is
    ``True`` only when the stopping rule was met and the returned parameters are the last ones
    (``info["stopping_rule_met"]`` says whether the rule was met at all).

    A non-finite loss or gradient raises :class:`TrainingDiverged` before the bad update is
    applied; no checkpoint is written after it, so the file on disk (its step is named in the
    message) holds a state whose loss was finite.

    Minibatches: :class:`RowDraw` draws each step's rows from a generator of the loop's own,
    seeded from ``seed`` (its state is in the checkpoint), and :class:`OnRows` fixes them onto
    the data plate's subsample site, so a JIT-compiled estimator takes them as an input of its
    graph. A full-batch fit in one process runs the model on ``x`` as it is.

    Data parallelism (a process group of ``W`` ranks, :func:`inference.distributed.current`):
    every rank holds all of ``x`` and indexes only its rows. ``batch_size`` is per rank
    (``B``, as ``DistributedDataParallel``'s): each step draws one set of ``W B`` rows, the same
    on every rank, rank ``r`` fits rows ``[r B, (r + 1) B)`` of it (the plate scales its ELBO by
    ``N / B``), and the gradients are all-reduced and divided by ``W``: the update of one
    process on all ``W B`` rows. A full-batch fit shards the rows
    (:func:`~inference.distributed.shard`) and weights rank ``r``'s ELBO by its share
    ``n_r / N``, so the sum over ranks is the full ELBO. The loss, the non-finite check and the
    checkpoint clock are reduced with the gradients, so ``history`` and every decision are the
    same on every rank. Rank 0's initial parameters are broadcast; each rank's own random
    stream (the ELBO's noise) is seeded ``seed + rank``. Only rank 0 writes the checkpoint, with
    every rank's random streams in it; a resume reads it on every rank, and refuses (an
    :class:`InputError`) a checkpoint of another world size. ``info`` records ``world_size``
    and ``backend`` (1 and ``None`` alone).
    """
    num_data = x.shape[0]
    group = distributed.current()
    rank, world = (group.rank, group.world_size) if group is not None else (0, 1)
    main = rank == 0
    if steps < 1:
        raise InputError(f"steps={steps} must be at least 1")
    if batch_size is not None and world == 1 and not 1 <= batch_size <= num_data:
        raise InputError(f"batch_size={batch_size} must be between 1 and the {num_data} "
                         "training rows")
    if batch_size is not None and world > 1 and not 1 <= batch_size * world <= num_data:
        raise InputError(f"batch_size={batch_size} rows per process times {world} processes "
                         f"must be between 1 and the {num_data} training rows; use a smaller "
                         "--batch-size or fewer processes")
    if stop_window < 1:
        raise InputError(f"stop_window={stop_window} must be at least 1")
    batch = None if batch_size is None or (world == 1 and batch_size == num_data) else batch_size
    shard = distributed.shard(num_data, group) if group is not None and batch is None else None
    # the rows one rank fits per step (None: all of x, alone) and its share of the global batch
    size = batch if batch is not None else (shard.stop - shard.start if shard else None)
    weight = 1.0 / world if batch is not None else (size / num_data if shard else 1.0)
    steps_per_epoch = math.ceil(num_data / (world * batch)) if batch is not None else 1
    loss = make_elbo(elbo, num_particles=num_particles) if isinstance(elbo, str) else elbo
    plain = None  # the estimator to fall back to when the JIT-compiled one cannot trace
    if jit and isinstance(elbo, str) and elbo in JIT_VARIANTS:
        plain, loss = loss, make_elbo(JIT_VARIANTS[elbo], num_particles=num_particles)
    kwargs = {"num_data": num_data, "subsample_size": size}
    on_rows = size is not None  # the rows are chosen here, not by the plate
    model_fn, guide_fn = (OnRows(model), OnRows(guide)) if on_rows else (model, guide)
    history: list[float] = []
    start_step, trained_before, resumed_from = 0, 0.0, None
    rule = StoppingRule(stop_tol, stop_window)
    best = _BestWindow(stop_window)
    jit_fallback = None
    dynamic = binarize == "dynamic"
    pyro.set_rng_seed(seed + rank)  # each rank its own noise; rank 0 as a fit alone
    validate = is_validation_enabled()
    with pyro.get_param_store().scope():
        store = pyro.get_param_store()
        epoch_rng = _rng_state(x.device)  # the streams as they were when this epoch was drawn
        data = _binarized(x, binarize)
        # Register every parameter once (lazy initializations run here), then hand the
        # unconstrained tensors to one torch Adam: cheaper per step than pyro.optim's
        # one-optimizer-per-parameter, and the same update.
        model_names, guide_names = split_params(model, guide, data, **kwargs)
        unconstrained = dict(store.named_parameters())
        names = sorted(model_names + guide_names)  # not those hidden by poutine.block
        registered = len(store)
        optimizer = torch.optim.Adam([unconstrained[n] for n in names], lr=lr)
        if group is not None and names:  # every rank starts where rank 0 does
            broadcast_params(group, names, unconstrained)
        draw = RowDraw(num_data, batch, world=world, rank=rank, seed=seed,
                       device=x.device) if batch is not None else None
        fixed_rows = (torch.arange(shard.start, shard.stop, device=x.device)
                      if shard is not None else None)
        if resume and checkpoint is not None and checkpoint_exists(checkpoint, group):
            state = _restore(checkpoint, names, unconstrained, optimizer, seed, x.device,
                             rank=rank, world=world)
            start_step, history = int(state["step"]), state["history"].tolist()
            trained_before = float(state.get("seconds", 0.0))
            resumed_from = start_step
            best.restore(history, state)
            if draw is not None:
                draw.restore(state)
            if dynamic:  # the same binarization as the uninterrupted run, then its streams
                streams = _rank_streams(state, rank, world, checkpoint)
                epoch_rng = streams.get("epoch_rng", epoch_rng)
                _set_rng_state(epoch_rng, x.device)
                data = _binarized(x, binarize)
                _set_rng_state(streams, x.device)
        finished = start_step >= steps or rule.converged(history)
        if resumed_from is not None and main:
            _announce(checkpoint, restart, start_step, steps, finished)
        saved_step = resumed_from  # the step the file at ``checkpoint`` holds, for this fit
        start = last_save = time.perf_counter()

        def save(taken: int) -> None:
            streams = {**_rng_state(x.device), **({"epoch_rng": epoch_rng} if dynamic else {})}
            every_rank = group.gather(streams) if group is not None else None
            if not main:
                return
            _save(checkpoint, {
                "step": taken, "seed": seed, "world_size": world,
                "seconds": trained_before + time.perf_counter() - start,
                "history": torch.tensor(history, dtype=torch.float64),
                # unconstrained values: the constraints are re-created by running model, guide
                "params": {n: unconstrained[n].detach().clone() for n in names},
                "optimizer": optimizer.state_dict(), **streams,
                **({"rank_streams": every_rank} if every_rank is not None else {}),
                **(draw.state() if draw is not None else {}), **best.state()})

        step = start_step - 1
        bar = tqdm(range(start_step, start_step if finished else steps),
                   desc=f"SVI {model_name} {guide_name}".rstrip(),
                   disable=not (progress and main), leave=False)
        for step in bar:
            if dynamic and step % steps_per_epoch == 0 and step > start_step:
                epoch_rng = _rng_state(x.device)
                data = _binarized(x, binarize)
            rows = draw() if draw is not None else fixed_rows
            args = (data,) if rows is None else (data, rows)
            optimizer.zero_grad(set_to_none=True)
            # Pyro's validation (shapes, supports) runs on the first step, where mistakes show;
            # after that it only costs time (5-10x per step on small models).
            checked = validate and step == start_step
            with pyro.validation_enabled(checked), (
                    rows_fixed_quietly() if on_rows and checked else nullcontext()):
                try:
                    value = float(loss.loss_and_grads(model_fn, guide_fn, *args, **kwargs))
                except (RuntimeError, TypeError, ValueError, NotImplementedError) as error:
                    if plain is None or step != start_step:
                        raise
                    # the model or guide does not trace: the plain estimator from here on
                    loss, plain = plain, None
                    jit_fallback = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                    optimizer.zero_grad(set_to_none=True)
                    value = float(loss.loss_and_grads(model_fn, guide_fn, *args, **kwargs))
            if group is not None:  # the global batch's loss and mean gradient on every rank
                clock = (checkpoint is not None and not checkpoint_every
                         and _due(step + 1, 0, last_save, checkpoint_seconds))
                value, clock = all_reduce(group, names, unconstrained, value, weight, clock)
            bad = (f"the loss became {value}" if not math.isfinite(value) else
                   _nonfinite_gradient(names, unconstrained))
            if bad:
                fitted = f" of {model_name or 'the fit'}" + (
                    f" with guide {guide_name}" if guide_name else "")
                raise TrainingDiverged(
                    f"{bad} at step {step + 1}{fitted}{_kept_message(checkpoint, saved_step)}; "
                    "lower the learning rate (--lr) or check the data")
            if len(store) != registered:
                raise RuntimeError(f"{model_name}/{guide_name} created parameters after its "
                                   "first call; create every pyro.param unconditionally")
            optimizer.step()
            history.append(-value / num_data)
            best.update(history, names, unconstrained)
            if step % 25 == 0:
                bar.set_postfix(elbo=f"{history[-1]:.4f}")
            if group is None:
                due = checkpoint is not None and _due(step + 1, checkpoint_every, last_save,
                                                      checkpoint_seconds)
            else:  # the clock of any rank, as reduced: every rank saves at the same steps
                due = checkpoint is not None and (
                    (step + 1) % checkpoint_every == 0 if checkpoint_every else clock)
            if due:
                save(step + 1)
                saved_step, last_save = step + 1, time.perf_counter()
            if rule.converged(history):
                break
        bar.close()
        seconds = trained_before + time.perf_counter() - start
        taken = step + 1
        if checkpoint is not None and saved_step != taken:
            save(taken)
        rule_met = rule.converged(history)
        collapse = best.collapse(history)
        if collapse is not None:  # the best window's parameters, not the collapsed last ones
            with torch.no_grad():
                for name in names:
                    unconstrained[name].copy_(best.params[name])
        params = {n: store[n].detach().clone() for n in model_names}
        guide_params = {n: store[n].detach().clone() for n in guide_names}
    return FitResult(
        model=model_name, inference="svi", guide=guide_name or None, params=params,
        guide_params=guide_params, history={"elbo": history}, seconds=seconds, steps=taken,
        converged=rule_met and collapse is None, device=str(x.device), seed=seed,
        info={"elbo_estimator": loss.__class__.__name__, "jit_fallback": jit_fallback,
              "lr": lr, "batch_size": batch_size,
              "num_particles": num_particles, "max_steps": steps, "stop_tol": stop_tol,
              "stop_window": stop_window, "stopping_rule_met": rule_met,
              "resumed_from_step": resumed_from,
              **(group.describe() if group is not None else {"world_size": 1, "backend": None}),
              **(collapse or {"kept": "last"})})


class StoppingRule:
    """Converged when the ELBO gains less than ``tol`` nats per datapoint per window of
    ``window`` steps, with confidence: over the last ``patience + 1`` windows, the gain per
    window (the last window's mean minus the first's, over ``patience``) plus two standard
    errors of it is below ``tol``. The standard error comes from the steps' own spread
    within each window (the Monte Carlo and minibatch noise), so a noisy fit that still climbs
    slowly, whose window means differ by less than ``tol`` only by chance, is not stopped: it
    runs to its cap and says ``converged: false``. A fit whose ELBO is exact or nearly so (an
    enumerated or closed-form guide on all rows) stops as soon as it is flat. ``tol=0`` never
    stops."""

    def __init__(self, tol: float = 1e-4, window: int = 100, patience: int = 3):
        self.tol, self.window, self.patience = tol, window, patience

    def converged(self, history: list[float]) -> bool:
        needed = self.window * (self.patience + 1)
        if self.tol <= 0 or len(history) < needed or len(history) % self.window:
            return False
        recent = torch.tensor(history[-needed:], dtype=torch.float64).view(
            self.patience + 1, self.window)
        means = recent.mean(1)
        noise = float(recent.std(1).mean()) / math.sqrt(self.window)  # sd of a window mean
        gain = float(means[-1] - means[0]) / self.patience
        bound = gain + 2.0 * math.sqrt(2.0) * noise / self.patience
        return bound < self.tol and bool(((means[1:] - means[:-1]) < self.tol).all())


def collapse_tolerance(best_mean: float, noise: float, windows: int) -> float:
    """How much worse (nats per datapoint) the last window's mean must be than the best
    window's before the fit counts as collapsed.

    ``noise`` is the standard deviation of one window's mean (Monte Carlo noise and the
    optimizer's jitter); the best of ``windows`` windows is high by up to ``sqrt(2 ln windows)``
    of it from noise alone, and beyond that the difference of two window means must exceed
    three of its standard deviations (``3 sqrt(2) noise``). At least 1e-3 of the ELBO's size,
    and 1e-3 nats per datapoint, in any case (a deterministic ELBO has no noise to measure)."""
    selection = math.sqrt(2.0 * math.log(windows)) if windows > 1 else 0.0
    return max(noise * (3.0 * math.sqrt(2.0) + selection), 1e-3 * max(1.0, abs(best_mean)))


class _BestWindow:
    """The parameters at the end of the best window of the stopping rule's windows."""

    def __init__(self, window: int):
        self.window, self.step, self.mean, self.params = window, None, -math.inf, None

    def update(self, history: list[float], names, unconstrained) -> None:
        end = len(history)
        if end % self.window:
            return
        mean = _window_stats(history, end, self.window)[0]
        if self.step is None or mean > self.mean:
            self.step, self.mean = end, mean
            self.params = {n: unconstrained[n].detach().clone() for n in names}

    def state(self) -> dict:
        if self.step is None:
            return {}
        return {"best_step": self.step, "best_window": self.window, "best_params": self.params}

    def restore(self, history: list[float], state: dict) -> None:
        if "best_step" not in state:
            return
        self.step, self.params = int(state["best_step"]), state["best_params"]
        self.window = int(state.get("best_window", self.window))
        self.mean = _window_stats(history, self.step, self.window)[0]

    def collapse(self, history: list[float]) -> dict | None:
        """What ``info`` records when the last ``window`` steps average worse than the best
        window by more than :func:`collapse_tolerance`, else ``None``."""
        end, window = len(history), self.window
        if self.step is None or end < window or self.step >= end:
            return None
        ends = range(window, end - end % window + 1, window)  # the complete windows
        means = [_window_stats(history, stop, window)[0] for stop in ends]
        best_mean, best_se = _window_stats(history, self.step, window)
        final_mean, final_se = _window_stats(history, end, window)
        noise = max(_spread(means), best_se, final_se)
        tolerance = collapse_tolerance(best_mean, noise, len(means))
        if best_mean - final_mean <= tolerance:
            return None
        collapsed_at = next((stop for stop, mean in zip(ends, means, strict=True)
                             if stop > self.step and best_mean - mean > tolerance), end)
        return {"kept": "best", "best_step": self.step, "collapsed_at": collapsed_at,
                "best_window_elbo": best_mean, "final_window_elbo": final_mean,
                "collapse_tolerance": tolerance}


def _spread(means: list[float]) -> float:
    """The standard deviation of one window's mean, from the spread of the differences of
    consecutive window means (a robust one: the median absolute deviation, so that a trend, a
    collapse or a few jumps do not count as noise); 0 with fewer than four windows."""
    if len(means) < 4:
        return 0.0
    steps = sorted(b - a for a, b in itertools.pairwise(means))
    middle = statistics.median(steps)
    mad = statistics.median(abs(d - middle) for d in steps)
    return 1.4826 * mad / math.sqrt(2.0)


def _window_stats(history: list[float], end: int, window: int) -> tuple[float, float]:
    """Mean and standard error of the mean of ``history[end - window:end]``."""
    values = history[end - window:end]
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    variance = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def _due(step: int, every: int, last: float, seconds: float) -> bool:
    """A checkpoint every ``every`` steps when set, else every ``seconds`` of training."""
    if every:
        return step % every == 0
    return seconds > 0 and time.perf_counter() - last >= seconds


def _binarized(x: torch.Tensor, binarize: str | None) -> torch.Tensor:
    return torch.bernoulli(x) if binarize == "dynamic" else x


def _rng_state(device: torch.device) -> dict:
    """The torch random streams a fit on ``device`` draws from."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)




def _nonfinite_gradient(names: list[str], unconstrained: dict) -> str:
    """A phrase naming the parameters whose gradient is NaN or infinite ("" when none is)."""
    grads = {n: unconstrained[n].grad for n in names if unconstrained[n].grad is not None}
    if not grads:
        return ""
    # one fused reduction per step: the L2 norms are finite exactly when every entry is (a NaN
    # or an infinity propagates); 20x cheaper than the max-norm or isfinite() on the CPU
    norms = torch._foreach_norm(list(grads.values()), 2)
    if math.isfinite(float(torch.stack(norms).sum())):
        return ""
    bad = [n for n, g in grads.items() if not g.isfinite().all()]
    if not bad:  # the norm overflowed on huge but finite gradients: not this check's business
        return ""
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"the gradient of {', '.join(bad[:3])}{more} became non-finite"


def _kept_message(checkpoint, saved_step: int | None) -> str:
    if checkpoint is None:
        return ""
    if saved_step is None:
        return f"; no checkpoint of this fit was written before it ({checkpoint})"
    return (f"; the last good checkpoint is {checkpoint} (step {saved_step}, written before "
            "the bad update; --resume continues from it)")


def _announce(path, restart: int | None, step: int, steps: int, finished: bool) -> None:
    """One line on stderr: where a resumed fit picks up."""
    who = "" if restart is None else f" restart {restart}"
    if finished:
        line = (f"lvm-zoo:{who or ' the fit'} had ended at step {step} of {steps} "
                f"(checkpoint {path}); reusing it")
    else:
        line = f"lvm-zoo: resuming{who} from step {step} of {steps} (checkpoint {path})"
    print(line, file=sys.stderr, flush=True)


_CHECKPOINT_KEYS = ("step", "history", "params", "optimizer", "rng")


def _save(path, state: dict) -> None:
    save_checkpoint(path, state)


def _rank_streams(state: dict, rank: int, world: int, path) -> dict:
    """The random streams of rank ``rank`` in a checkpoint (the top level alone)."""
    if world == 1:
        return state
    streams = state.get("rank_streams")
    if not isinstance(streams, list) or len(streams) != world:
        raise InputError(f"checkpoint {path} lacks the random streams of its {world} "
                         "processes; use a new --out folder")
    return streams[rank]


def _restore(path, names, unconstrained, optimizer, seed: int, device: torch.device, *,
             rank: int = 0, world: int = 1) -> dict:
    """Load ``path`` into the parameters, Adam and the random streams; returns its state."""
    state = load_checkpoint(path)
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise InputError(f"checkpoint {path} lacks {', '.join(missing)}; it is not an SVI "
                         "checkpoint of lvm-zoo: fit again into a new --out folder")
    written = int(state.get("world_size", 1))
    if written != world:
        raise InputError(f"checkpoint {path} was written by a fit of world size {written} "
                         f"({written} process{'es' if written > 1 else ''}), and this fit has "
                         f"world size {world}; resume it with {written} process"
                         f"{'es' if written > 1 else ''} (torchrun --nproc-per-node), or use a "
                         "new --out folder")
    for key in ("params", "best_params"):
        if key in state and sorted(state[key]) != names:
            raise InputError(f"checkpoint {path} holds parameters {sorted(state[key])}, not "
                             f"this model and guide's {names}; use a new --out folder")
    if int(state.get("seed", seed)) != seed:
        raise InputError(f"checkpoint {path} was written by a fit with seed {state['seed']}, "
                         f"not {seed}; resume with the same --seed, or use a new --out folder")
    shapes = [f"{n} {tuple(state['params'][n].shape)} (this fit: "
              f"{tuple(unconstrained[n].shape)})" for n in names
              if state["params"][n].shape != unconstrained[n].shape]
    if shapes:
        raise InputError(f"checkpoint {path} holds parameters of other shapes: "
                         f"{'; '.join(shapes)} — it was written for another model size; "
                         "resume with the same options, or use a new --out folder")
    lrs = [group["lr"] for group in optimizer.param_groups]
    with torch.no_grad():
        for name in names:
            unconstrained[name].copy_(state["params"][name])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as error:
        raise InputError(f"checkpoint {path} holds an optimizer state that does not fit this "
                         f"model and guide ({error}); use a new --out folder") from None
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr  # a resumed fit takes the learning rate it is given now
    _set_rng_state(_rank_streams(state, rank, world, path), device)
    return state
