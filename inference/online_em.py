r"""Online (stepwise) EM: Cappé & Moulines (2009), in the minibatch form of Liang & Klein (2009).

Batch EM (:mod:`inference.em`) passes over every row per iteration. Stepwise EM passes over
the rows in minibatches and keeps a running average of the E-step statistics, *normalized to
one datapoint*, after every minibatch of ``b`` rows::

    ŝ      = E-step statistics of the minibatch at the current parameters (a sum over b rows)
    s     <- (1 - η_t) s + η_t ŝ / b            spec.em.combine([s, ŝ], [1 - η_t, η_t / b])
    θ     <- argmax_θ Q(θ; s)                   spec.em.m_step(config, None, s)

with the step size ``η_t = (t + t0)^(-α)`` at update ``t = 1, 2, ...``, ``α`` in (0.5, 1]
(``Σ η_t = ∞`` and ``Σ η_t² < ∞``: the Robbins-Monro conditions under which Cappé & Moulines
show the statistics converge to a fixed point of EM). The code uses only the
model's :class:`zoo.registry.EMSteps` hooks (``init``, ``e_step``, ``combine``, ``m_step``), so
it fits any model whose E-step statistics combine, never a model's internals.

Two rules at the start:

- **Exact averaging while the parameters have not moved.** As long as every E-step so far ran
  at the start parameters (no M-step yet), the statistics are those of the union of the
  minibatches seen: ``η_t = b_t / (rows seen)``. In particular ``η_1 = 1`` (there is nothing
  before the first minibatch to average with), whatever ``t0``. With ``α = 1`` and ``t0 = 0``
  the schedule is ``η_t = 1/t`` throughout, and for equal minibatches at fixed parameters the
  statistics are the plain average of the minibatches' (the property the tests check).
- **Warm-up.** No M-step until the statistics hold ``warmup`` rows: Cappé & Moulines (2009)
  let the first observations accumulate before the first M-step, because an M-step from a
  handful of rows is ill-posed (a covariance from fewer rows than dimensions is singular).
  The default, :data:`WARMUP_ROWS_PER_DIM` ``× (D + 1)`` rows, is our rule of thumb: about
  twenty rows per column (and the mean) before the first M-step. With minibatches of at
  least that many rows (the default sizes, on data of up to a few dozen columns) there is no
  warm-up at all.

Defaults, and why:

- ``step_decay`` α = :data:`STEP_DECAY` (0.6), ``step_offset`` t0 = 0: the low end of
  Cappé & Moulines' range, as in the step sizes ``(k + 2)^-α`` Liang & Klein (2009) tune for
  minibatches. A small α forgets the statistics gathered under the early, poor parameters
  fast, which matters more in one pass than its slightly larger stationary noise (the last
  minibatch's weight after T updates is T^-0.6, 1.6% for T = 1000: the statistics then average
  about 60 minibatches). Measured here, one pass of 1000-row minibatches over 10^6 rows of a
  4-component 3-D mixture ends 1.0e-4, 1.0e-4, 1.8e-4 and 9.5e-4 nats per datapoint below
  batch EM for α = 0.6, 0.7, 0.8 and 1 (the plain running average, which keeps the start's
  statistics longest). With t0 = 0 the schedule has no scale to tune.
- ``batch_size``: enough updates per pass for the stochastic approximation to forget its
  start (about :data:`UPDATES_PER_PASS`), between :data:`MIN_BATCH` and :data:`BATCH_SIZE`
  rows (beyond a thousand rows a minibatch's statistics are precise enough and more
  updates help more than bigger ones).
- ``init_size``: the start is the model's ``spec.em.init`` (its first method by default, as
  batch EM's) on a seeded subsample of :data:`INIT_ROWS` rows (at least one minibatch),
  the first rows of the first pass's permutation: a start matters more than any single
  update (stochastic approximation refines locally), and K-means++ / Lloyd on ten thousand
  rows costs milliseconds. ``init_size = batch_size`` starts from the first minibatch, as
  scikit-learn's ``MiniBatchKMeans.partial_fit`` does.
- ``passes`` = 1: the online setting, every row seen once.

The data ``x`` may be a memory-mapped CPU tensor: the loop reads ``x.shape`` and indexes
the rows of one minibatch (or the init subsample) at a time, never all of ``x``. Minibatch
rows are drawn by a seeded permutation per pass (sorted within a minibatch, for locality on
disk; the statistics do not depend on the order of rows), or in order with ``shuffle=False``
(a stream already in random order, read sequentially).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree
from tqdm.auto import tqdm

from inference import interrupt
from inference.convergence import warn_not_converged
from inference.em import finite
from inference.results import FitResult
from zoo.errors import InputError
from zoo.registry import ModelSpec, Params

STEP_DECAY = 0.6  # α, near the low end of (0.5, 1] (module docstring: why)
STEP_OFFSET = 0.0  # t0: η_t = (t + t0)^-α
BATCH_SIZE = 1000  # most rows per minibatch by default
MIN_BATCH = 32  # fewest rows per minibatch by default (small data)
UPDATES_PER_PASS = 100  # default minibatch: about this many updates per pass
INIT_ROWS = 10_000  # rows of the subsample the start is computed on (at least a minibatch)
WARMUP_ROWS_PER_DIM = 20  # no M-step before 20 (D + 1) rows have been seen
TOL = 1e-3  # nats per datapoint between the mean log-likelihoods of the last two passes
ORDER_SEED_OFFSET = 0x9E3779B9  # the pass order's stream is not the start's


def step_size(t: int, step_decay: float = STEP_DECAY, step_offset: float = STEP_OFFSET) -> float:
    """``η_t = (t + t0)^(-α)`` for update ``t >= 1``."""
    return float((t + step_offset) ** -step_decay)


def default_batch_size(num_data: int) -> int:
    """About :data:`UPDATES_PER_PASS` updates per pass, in [MIN_BATCH, BATCH_SIZE] rows (and
    no more rows than the data have)."""
    return max(1, min(num_data, BATCH_SIZE, max(MIN_BATCH, math.ceil(num_data /
                                                                    UPDATES_PER_PASS))))


def default_warmup(dim: int) -> int:
    """Rows the statistics hold before the first M-step: ``20 (D + 1)``."""
    return WARMUP_ROWS_PER_DIM * (int(dim) + 1)


def check_settings(step_decay: float, step_offset: float, warmup: int) -> None:
    """InputErrors naming a bad step-size schedule or warm-up."""
    if not (0.5 < step_decay <= 1.0):
        raise InputError(f"--step-decay {step_decay} must be in (0.5, 1] (Robbins-Monro: "
                         "Σ η_t diverges and Σ η_t² converges only there)")
    if not (step_offset >= 0 and math.isfinite(step_offset)):
        raise InputError(f"--step-offset {step_offset} must be a finite number >= 0")
    if warmup < 0:
        raise InputError(f"--warmup {warmup} must be at least 0")


@dataclass
class StepwiseState:
    """What stepwise EM carries from one minibatch to the next: the parameters, the running
    statistics normalized to one datapoint (``None`` before the first update), the updates
    made, the rows seen and the M-steps made. Tensors and numbers only (picklable)."""

    params: Params
    statistics: Any = None
    updates: int = 0
    rows: int = 0
    m_steps: int = 0
    step: float = 0.0  # the last update's η


def stepwise_update(spec: ModelSpec, config, state: StepwiseState, batch: torch.Tensor, *,
                    step_decay: float = STEP_DECAY, step_offset: float = STEP_OFFSET,
                    warmup: int = 0) -> float:
    """One update of stepwise EM on the rows ``batch : (b, D)``, in place on ``state``; returns
    the minibatch's mean log p(x) at the parameters before the update (nats per datapoint).

    ``η = b / rows seen`` while no M-step has been made (the union's statistics, exactly),
    else ``η = step_size(t)``; the M-step follows once the statistics hold ``warmup`` rows.
    ``state`` is left as it was if the E-step or the M-step fails."""
    rows = int(batch.shape[0])
    if rows < 1:
        raise InputError("a minibatch of stepwise EM needs at least one row")
    em = spec.em
    statistics, log_likelihood = em.e_step(config, state.params, batch)
    log_likelihood = finite(log_likelihood, f"online EM on {spec.name}",
                            f"update {state.updates + 1}")
    t = state.updates + 1
    seen = state.rows + rows
    eta = rows / seen if state.m_steps == 0 else step_size(t, step_decay, step_offset)
    if state.statistics is None or eta >= 1.0:
        running = em.combine([statistics], [1.0 / rows])
    else:
        running = em.combine([state.statistics, statistics], [1.0 - eta, eta / rows])
    params, m_steps = state.params, state.m_steps
    if seen >= warmup:
        params = em.m_step(config, None, running)
        m_steps += 1
    state.params, state.statistics = params, running
    state.updates, state.rows, state.m_steps, state.step = t, seen, m_steps, min(eta, 1.0)
    return log_likelihood


def run_online_em(spec: ModelSpec, config, x: torch.Tensor, **options
                  ) -> tuple[FitResult, StepwiseState]:
    """:func:`fit_online_em` (same keywords), and the final :class:`StepwiseState`, to continue
    the stream with :func:`stepwise_update` (``GaussianMixture.partial_fit`` does)."""
    return _online_em(spec, config, x, **options)


def fit_online_em(
    spec: ModelSpec,
    config,
    x: torch.Tensor,
    *,
    batch_size: int | None = None,
    passes: int = 1,
    step_decay: float = STEP_DECAY,
    step_offset: float = STEP_OFFSET,
    warmup: int | None = None,
    init: str | Params | Callable[..., Params] | None = None,
    init_size: int | None = None,
    shuffle: bool = True,
    tol: float = TOL,
    seed: int = 0,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Fit ``spec`` to ``x : (N, D)`` by stepwise EM: ``passes`` passes of minibatches of
    ``batch_size`` rows (``None``: :func:`default_batch_size`), step sizes ``(t + step_offset)
    ^ -step_decay``, no M-step before ``warmup`` rows (``None``: :func:`default_warmup`), the
    start on ``init_size`` rows (``None``: :data:`INIT_ROWS`); the module docstring says why
    each default is what it is.

    ``init`` is one of ``spec.em.init_methods`` (default: the first), a ``Params`` dict, or a
    callable ``(config, rows, generator) -> Params``; a method or callable sees the
    ``init_size`` rows that start the first pass. ``seed`` fixes the start (its generator on
    ``x``'s device) and the order of the rows (a CPU generator of its own).

    ``history["log_likelihood"]`` has one entry per update: the minibatch's mean log p(x) at
    the parameters before that update, nats per datapoint (each minibatch is scored before
    it is learnt from, so within a pass it is a held-out estimate). ``converged`` says whether
    the mean of that curve over the last pass changed by less than ``tol`` from the pass
    before; with one pass there is nothing to compare, so it is ``False``, and
    ``info["done"]`` (every pass read to its end) is all one pass can claim: a stream read
    once, with the step size at ``info["final_step_size"]``.

    ``checkpoint``: where a SIGINT or SIGTERM saves the fit at the next minibatch
    (:mod:`inference.interrupt`); ``resume`` continues from it, to end as the uninterrupted
    fit would."""
    return _online_em(spec, config, x, batch_size=batch_size, passes=passes,
                      step_decay=step_decay, step_offset=step_offset, warmup=warmup, init=init,
                      init_size=init_size, shuffle=shuffle, tol=tol, seed=seed,
                      progress=progress, checkpoint=checkpoint, resume=resume)[0]


def _online_em(spec: ModelSpec, config, x: torch.Tensor, *, batch_size: int | None = None,
               passes: int = 1, step_decay: float = STEP_DECAY,
               step_offset: float = STEP_OFFSET, warmup: int | None = None, init=None,
               init_size: int | None = None, shuffle: bool = True, tol: float = TOL,
               seed: int = 0, progress: bool = False, checkpoint: str | Path | None = None,
               resume: bool = False) -> tuple[FitResult, StepwiseState]:
    """:func:`run_online_em`: the settings checked, the start, the passes, the result."""
    settings = _Settings.checked(spec, x, batch_size=batch_size, passes=passes,
                                 step_decay=step_decay, step_offset=step_offset,
                                 warmup=warmup, init=init, init_size=init_size,
                                 shuffle=shuffle, tol=tol, seed=seed)
    start = time.perf_counter()
    order = _Order(x, seed, shuffle)
    saved = _Saved(checkpoint, settings)
    history: list[float] = []
    pass_means: list[float] = []
    going = saved.load(spec, config, x, order) if resume and saved.exists() else None
    if going is not None:
        state, history, pass_means = going["state"], going["history"], going["pass_means"]
    else:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        state = StepwiseState(_start(spec, config, x, settings, order, generator))
    bar = tqdm(total=passes * math.ceil(order.num_data / settings.batch_size),
               desc=f"online EM {spec.name}", leave=False, disable=not progress)
    with interrupt.listening(saved.path is not None):
        for index in range(len(pass_means), passes):
            try:
                pass_means.append(_one_pass(spec, config, state, order, index, settings,
                                            history, bar, going and going["pass"]))
            except _Paused as paused:
                saved.save(order, state, history, pass_means, paused.state)
                raise interrupt.Interrupted(
                    interrupt.take(), checkpoint=saved.path,
                    where=f"online EM update {state.updates} (pass {index + 1} of {passes})"
                ) from None
            going = None
    bar.close()
    start -= saved.seconds  # the time spent before a resume counts
    if state.m_steps == 0:  # warm-up longer than the stream: at least one M-step
        state.params = spec.em.m_step(config, None, state.statistics)
        state.m_steps = 1
    converged = _passes_settled(spec, pass_means, tol)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return _online_result(spec, x, settings, state, history, pass_means, converged,
                          time.perf_counter() - start), state


@dataclass(frozen=True)
class _Settings:
    """An online EM fit's settings, checked, with the defaults filled in."""

    batch_size: int
    passes: int
    step_decay: float
    step_offset: float
    warmup: int
    init_size: int
    method: Any
    shuffle: bool
    tol: float
    seed: int

    @classmethod
    def checked(cls, spec: ModelSpec, x: torch.Tensor, *, batch_size, passes, step_decay,
                step_offset, warmup, init, init_size, shuffle, tol, seed) -> _Settings:
        """InputErrors naming a model whose statistics do not combine, data not (N, D) or
        a bad setting; else the settings."""
        em = spec.em
        if em is None or em.combine is None:
            raise InputError(f"model '{spec.name}' has no EM steps whose statistics combine "
                             "(EMSteps.combine); online EM needs them, `lvm-zoo list` shows "
                             "the inference methods that apply to it")
        if x.dim() != 2 or x.shape[0] < 1:
            raise InputError(f"online EM needs data of shape (N, D) with N >= 1, got "
                             f"{tuple(x.shape)}")
        num_data = int(x.shape[0])
        batch_size = default_batch_size(num_data) if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise InputError(f"--batch-size {batch_size} must be at least 1")
        batch_size = min(batch_size, num_data)
        if passes < 1:
            raise InputError(f"--passes {passes} must be at least 1")
        warmup = default_warmup(x.shape[1]) if warmup is None else int(warmup)
        check_settings(step_decay, step_offset, warmup)
        if not tol > 0:
            raise InputError(f"--tol {tol} must be positive")
        init_size = min(num_data, max(batch_size, INIT_ROWS) if init_size is None
                        else int(init_size))
        if init_size < 1:
            raise InputError(f"--init-size {init_size} must be at least 1")
        method = em.init_methods[0] if init is None else init
        if isinstance(method, str) and method not in em.init_methods:
            raise InputError(f"unknown EM init '{method}' for {spec.name}; choose one of: "
                             + ", ".join(em.init_methods))
        return cls(batch_size, passes, step_decay, step_offset, warmup, init_size, method,
                   shuffle, tol, seed)


class _Order:
    """The order the rows are read in: a seeded permutation per pass, drawn from a CPU
    stream of its own (``seed`` + :data:`ORDER_SEED_OFFSET`), or the stored order where
    ``shuffle`` is off. A minibatch's rows are read sorted, for locality on disk."""

    def __init__(self, x: torch.Tensor, seed: int, shuffle: bool):
        self.x, self.shuffle, self.num_data = x, shuffle, int(x.shape[0])
        self.generator = torch.Generator().manual_seed((seed + ORDER_SEED_OFFSET) % 2**63)
        self.first = self.draw()  # the first pass's, drawn before the start (its rows)

    def draw(self) -> torch.Tensor | None:
        return (torch.randperm(self.num_data, generator=self.generator) if self.shuffle
                else None)

    def of_pass(self, index: int) -> torch.Tensor | None:
        """Pass ``index``'s permutation; the first is drawn already, a later one now."""
        return self.first if index == 0 else self.draw()

    def rows(self, permutation: torch.Tensor | None, begin: int, end: int) -> torch.Tensor:
        """Rows ``begin:end`` of the pass in ``permutation``'s order."""
        if permutation is None:
            return self.x[begin:end]
        return self.x[permutation[begin:end].sort().values.to(self.x.device)]


def _start(spec: ModelSpec, config, x: torch.Tensor, settings: _Settings, order: _Order,
           generator: torch.Generator) -> Params:
    """The start: given parameters on ``x``'s device (and dtype, where floating), or the init
    method or callable on the ``init_size`` rows that begin the first pass."""
    method = settings.method
    if isinstance(method, dict):
        return {k: v.to(device=x.device, dtype=x.dtype) if v.is_floating_point()
                else v.to(x.device) for k, v in method.items()}
    subsample = order.rows(order.first, 0, settings.init_size)
    return (method(config, subsample, generator) if callable(method)
            else spec.em.init(config, subsample, generator, method))


def _one_pass(spec: ModelSpec, config, state: StepwiseState, order: _Order, index: int,
              settings: _Settings, history: list, bar, going: dict | None = None) -> float:
    """Pass ``index`` over the rows, one :func:`stepwise_update` per minibatch, each
    minibatch's mean log p(x) appended to ``history``; the pass's row-weighted mean.
    ``going``: where a resumed pass goes on (its order, first row and total so far)."""
    permutation = going["permutation"] if going else order.of_pass(index)
    total = going["total"] if going else 0.0
    for begin in range(going["begin"] if going else 0, order.num_data, settings.batch_size):
        if interrupt.pending() is not None:  # a signal: save before this minibatch
            raise _Paused({"permutation": permutation, "total": total, "begin": begin})
        end = min(begin + settings.batch_size, order.num_data)
        value = stepwise_update(spec, config, state, order.rows(permutation, begin, end),
                                step_decay=settings.step_decay,
                                step_offset=settings.step_offset, warmup=settings.warmup)
        history.append(value)
        total += value * (end - begin)
        bar.update()
        bar.set_postfix(log_likelihood=f"{value:.5f}")
    return total / order.num_data


def _passes_settled(spec: ModelSpec, pass_means: list, tol: float) -> bool:
    """The stopping test: the last two passes' means within ``tol`` (never with one pass);
    a ``ConvergenceWarning`` at the caller of :func:`fit_online_em` where they are not."""
    converged = len(pass_means) > 1 and abs(pass_means[-1] - pass_means[-2]) < tol
    if len(pass_means) > 1 and not converged:
        warn_not_converged(
            f"online EM on {spec.name}: the mean minibatch log-likelihood changed by "
            f"{abs(pass_means[-1] - pass_means[-2]):.3g} nats per datapoint over the last pass "
            f"(tol={tol:g}); more passes (--passes), larger minibatches (--batch-size) or a "
            "larger --step-decay settle it", stacklevel=4)
    return converged


def _online_result(spec: ModelSpec, x: torch.Tensor, settings: _Settings,
                   state: StepwiseState, history: list, pass_means: list, converged: bool,
                   seconds: float) -> FitResult:
    """The :class:`FitResult` of an online EM fit."""
    method = settings.method
    return FitResult(
        model=spec.name, inference="online-em", guide=None, params=state.params,
        history={"log_likelihood": history}, seconds=seconds,
        steps=state.updates, converged=converged, device=str(x.device), seed=settings.seed,
        info={"batch_size": settings.batch_size, "passes": settings.passes,
              "step_decay": settings.step_decay, "step_offset": settings.step_offset,
              "warmup": settings.warmup, "updates": state.updates,
              "m_steps": state.m_steps, "rows_seen": state.rows, "tol": settings.tol,
              "shuffle": settings.shuffle,
              "init_size": 0 if isinstance(method, dict) else settings.init_size,
              "init": method if isinstance(method, str) else "given",
              "pass_log_likelihoods": pass_means, "final_step_size": state.step,
              "done": True,
              "converged_means": "the mean minibatch log-likelihood of the last pass is "
                                 "within tol of the pass before (never with one pass)"})


class _Paused(Exception):
    """A signal came: the pass in progress stops before a minibatch, where ``state`` says."""

    def __init__(self, state: dict):
        super().__init__("paused")
        self.state = state


class _Saved:
    """An online EM fit's checkpoint (``path=None``: none): the stepwise state, the history,
    the passes' means, the pass order's stream and where the pass in progress stopped."""

    def __init__(self, path, settings: _Settings):
        self.path = None if path is None else Path(path)
        self.settings = {k: v for k, v in vars(settings).items() if k != "method"}
        self.settings["init"] = settings.method if isinstance(settings.method, str) else "given"
        self.seconds = 0.0
        self.start = time.perf_counter()

    def exists(self) -> bool:
        return self.path is not None and self.path.is_file()

    def save(self, order: _Order, state: StepwiseState, history: list, pass_means: list,
             going: dict) -> None:
        leaves = (None if state.statistics is None
                  else pytree.tree_flatten(state.statistics)[0])
        interrupt.save_state(self.path, "online-em", self.settings, {
            "params": state.params, "statistics": leaves, "updates": state.updates,
            "rows": state.rows, "m_steps": state.m_steps, "step": state.step,
            "history": torch.tensor(history, dtype=torch.float64),
            "pass_means": torch.tensor(pass_means, dtype=torch.float64),
            "order": order.generator.get_state(), "pass": going,
            "seconds": self.seconds + time.perf_counter() - self.start})

    def load(self, spec: ModelSpec, config, x: torch.Tensor, order: _Order) -> dict:
        """The saved fit, its statistics in the structure the model's E-step gives them."""
        saved = interrupt.load_state(self.path, "online-em", self.settings, device=x.device,
                                     streams=("order",))
        statistics = saved["statistics"]
        if statistics is not None:
            like = spec.em.e_step(config, saved["params"], x[:1])[0]
            statistics = pytree.tree_unflatten(statistics, pytree.tree_flatten(like)[1])
        order.generator.set_state(saved["order"])
        self.seconds = float(saved["seconds"])
        state = StepwiseState(saved["params"], statistics, int(saved["updates"]),
                              int(saved["rows"]), int(saved["m_steps"]), float(saved["step"]))
        print(f"lvm-zoo: resuming online EM from update {state.updates} (checkpoint "
              f"{self.path})", file=sys.stderr, flush=True)
        return {"state": state, "history": saved["history"].tolist(),
                "pass_means": saved["pass_means"].tolist(), "pass": saved["pass"]}
