"""The SVI loop: each step calls small objects, each with one job.

:class:`SVILoop` composes the step (:class:`~inference.svi_step.SVIStep`: gradients and one
Adam update, in the fit's own param store and random streams), the rows
(:class:`~inference.svi_rows.RowSampler`, data-parallel under a process group), the data
(:class:`~inference.data.DynamicBinarization`), the checkpoints
(:class:`~inference.svi_checkpoint.Checkpointer`), the stopping rule and the best window
(:mod:`inference.svi_stopping`) and the progress bar. :meth:`SVILoop.advance` takes one step, so
two loops can be driven side by side; :meth:`SVILoop.run` drives one to its end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyro
import pyro.infer
import torch
from tqdm.auto import tqdm

from guides.diagnostics import nonfinite_start
from inference import distributed, interrupt
from inference.data import DynamicBinarization, too_large
from inference.results import FitResult
from inference.svi_checkpoint import Checkpointer, history_tensor
from inference.svi_rows import RowSampler, broadcast_params
from inference.svi_schedule import DEFAULT_SCHEDULE, SCHEDULES, Refinement
from inference.svi_step import Estimator, SVIStep, TrainingDiverged
from inference.svi_stopping import STOP_TOL, STOP_WINDOW, BestWindow, StoppingRule
from inference.svi_validation import held_out
from zoo.errors import InputError


@dataclass(frozen=True)
class SVISettings:
    """What one SVI fit runs (the keywords of :func:`inference.svi.fit_svi` but the data's and
    the checkpoint's)."""

    elbo: str | pyro.infer.ELBO = "Trace_ELBO"
    steps: int = 5000  # the cap; the schedule's last stationary level ends sooner
    lr: float = 1e-2  # Adam's learning rate
    batch_size: int | None = None  # rows per step (per rank under a process group); None: all
    num_particles: int = 1
    seed: int = 0
    jit: bool = False  # the JIT-compiled twin of the estimator, with a fallback
    stop_tol: float = STOP_TOL  # nats per datapoint per window; 0 runs every step
    stop_window: int = STOP_WINDOW
    progress: bool = False
    model_name: str = ""
    guide_name: str = ""
    schedule: str = DEFAULT_SCHEDULE  # "decay-average" (svi_schedule) or "constant"
    average: bool = True  # return the last level's average of the iterates
    validation: float = 0.0  # share of the rows held out to choose the kept parameters

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule={self.schedule!r} is unknown; use one of: "
                             f"{', '.join(SCHEDULES)}")
        if self.steps < 1:
            raise InputError(f"steps={self.steps} must be at least 1")
        if self.stop_window < 1:
            raise InputError(f"stop_window={self.stop_window} must be at least 1")


class Progress:
    """A tqdm bar over a fit's steps on rank 0 when asked, the ELBO beside it."""

    def __init__(self, first: int, last: int, label: str, enabled: bool):
        self.bar = tqdm(total=max(0, last - first), desc=f"SVI {label}".rstrip(),
                        disable=not enabled, leave=False)

    def update(self, step: int, elbo: float) -> None:
        self.bar.update(1)
        if step % 25 == 0:
            self.bar.set_postfix(elbo=f"{elbo:.4f}")

    def close(self) -> None:
        self.bar.close()


class SVILoop:
    """One SVI fit of ``model``/``guide`` on ``x : (N, D)``, a step at a time.

    Built, it has seeded the process's streams (``seed + rank``), drawn the data
    (``binarize``), registered the parameters and, with ``resume`` and a checkpoint on disk,
    restored them. ``advance()`` takes one step (False once the fit has ended: the cap or the
    stopping rule); ``result()`` returns the :class:`FitResult`."""

    def __init__(self, model, guide, x: torch.Tensor, settings: SVISettings, *,
                 checkpointer: Checkpointer | None = None, binarize: str | None = None,
                 resume: bool = False):
        # held-out rows (inference.svi_validation): SVI fits the others
        self.held_out, self.held_out_note = held_out(
            x, guide, settings.validation, seed=settings.seed, every=settings.stop_window,
            elbo=settings.elbo, binarize=binarize)
        x = x if self.held_out is None else self.held_out.train
        self.judged = (model, guide)  # the held-out ELBO's model and guide, as given
        self.settings, self.num_data = settings, x.shape[0]
        self.group = group = distributed.current()
        rank = group.rank if group is not None else 0
        self.rows = RowSampler(self.num_data, settings.batch_size, group=group,
                               seed=settings.seed, device=x.device)
        estimator = Estimator(settings.elbo, num_particles=settings.num_particles,
                              jit=settings.jit)
        pyro.set_rng_seed(settings.seed + rank)  # each rank its own noise; rank 0 as alone
        self.data = DynamicBinarization(x, self.rows.steps_per_epoch, binarize)
        self.svi = SVIStep(model, guide, self.data.data, estimator, lr=settings.lr,
                           on_rows=self.rows.on_rows, label=self.label("/"),
                           sync=self.rows.sync if group is not None else None,
                           **self.rows.kwargs)
        if group is not None and self.svi.names:  # every rank starts where rank 0 does
            broadcast_params(group, self.svi.names, self.svi.unconstrained)
        self.rule = StoppingRule(settings.stop_tol, settings.stop_window)
        self.best = BestWindow(settings.stop_window)
        self.refine = Refinement(settings.lr, settings.stop_window, settings.stop_tol,
                                 average=settings.average,
                                 enabled=settings.schedule != "constant")
        self.checkpointer = checkpointer or Checkpointer(None, seed=settings.seed)
        self.history: list[float] = []
        self.first, self.trained_before, self.resumed_from = 0, 0.0, None
        if resume and self.checkpointer.exists():
            self._resume()
        self.step = self.first
        self.finished = self.first >= settings.steps or self.ended()
        if self.resumed_from is not None:
            self.checkpointer.announce(self.first, settings.steps, self.finished)
        self.progress = Progress(self.first, self.first if self.finished else settings.steps,
                                 self.label(" "), settings.progress and rank == 0)
        self.start = time.perf_counter()
        self.checkpointer.last = self.start

    def label(self, between: str) -> str:
        names = (self.settings.model_name, self.settings.guide_name)
        return between.join(names) if between == "/" else between.join(n for n in names if n)

    def _resume(self) -> None:
        state, streams = self.checkpointer.load(self.svi.names, self.svi.unconstrained)
        self.svi.load(state, streams, self.checkpointer.path)
        self.first = self.resumed_from = int(state["step"])
        self.checkpointer.saved_step = self.first  # the step the file holds
        self.history = state["history"].tolist()
        self.trained_before = float(state.get("seconds", 0.0))
        self.best.restore(self.history, state)
        self.refine.restore(state)
        if self.held_out is not None:
            self.held_out.restore(state)
        self.svi.lr = self.refine.lr
        self.rows.restore(state)
        with self.svi.owned():  # the same binarization as the uninterrupted run
            self.data.restore(streams)

    def advance(self) -> bool:
        """One step; whether the fit goes on."""
        if self.finished:
            return False
        step, svi = self.step, self.svi
        with svi.owned():
            args = self.rows(self.data.before(step, self.first))
            self.rows.raised = self.group is not None and self.checkpointer.clock()
            try:
                value = svi.step(*args)
            except TrainingDiverged as error:
                raise self._diverged(error, step, args) from None
            except (ValueError, ArithmeticError, torch.linalg.LinAlgError) as error:
                if step == self.first and self.resumed_from is None:
                    raise  # before any update: the model, the guide or the data, as they are
                detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise self._diverged(TrainingDiverged(  # an update left the parameters' set
                    f"the model failed ({detail.rstrip('.;')})"), step, args) from None
            self.history.append(-value / self.num_data)
            self.best.update(self.history, svi.names, svi.unconstrained)
            self.refine.after_step(self.history, svi)
            if self.held_out is not None and self.held_out.due(step + 1):
                self.held_out.update(step + 1, *self.judged, svi.names, svi.unconstrained)
            self.progress.update(step, self.history[-1])
            agreed = self.rows.agreed if self.group is not None else None
            if self.checkpointer.due(step + 1, agreed):
                self._save(step + 1)
                self.checkpointer.saved(step + 1)
        self.step = step + 1
        self.finished = self.step >= self.settings.steps or self.ended()
        if interrupt.pending() is not None and not self.finished:
            self._interrupted()
        return not self.finished

    def _interrupted(self) -> None:
        """A signal came during the step just taken: save it, then stop the fit."""
        if self.checkpointer.saved_step != self.step:
            with self.svi.owned():
                self._save(self.step)
            self.checkpointer.saved(self.step)
        raise interrupt.Interrupted(interrupt.take(), checkpoint=self.checkpointer.path,
                                    where=f"step {self.step} of {self.settings.steps}")

    def ended(self) -> bool:
        """Whether the fit has converged: the last level stationary, or with a constant
        rate the stopping rule met."""
        if self.held_out is not None and self.held_out.stopped:  # early stopping
            return True
        return self.refine.done if self.refine.enabled else self.rule.converged(self.history)

    def _diverged(self, error: TrainingDiverged, step: int,
                  args: tuple) -> TrainingDiverged | InputError:
        """The divergence at ``step`` (0-based), with the fit, the checkpoint on disk and what
        to change: on a fresh fit's first step with finite data, data too large for their
        dtype's arithmetic (an InputError: rescale them) or the site whose start is not finite
        (:func:`guides.diagnostics.nonfinite_start`), else the learning rate or data."""
        s, svi = self.settings, self.svi
        fitted = f" of {s.model_name or 'the fit'}" + (
            f" with guide {s.guide_name}" if s.guide_name else "")
        start = ""
        if step == self.first and self.resumed_from is None and bool(
                torch.isfinite(args[0]).all()):
            large = too_large(args[0])
            if large is not None:  # the data, not the fit: an input error
                return InputError(f"{error} at step 1{fitted}: {large}")
            start = nonfinite_start(svi.model, svi.guide, *args, **svi.kwargs)
        return TrainingDiverged(
            f"{error} at step {step + 1}{fitted}{self.checkpointer.kept_message()}; "
            + (start or f"lower the learning rate (--lr, {s.lr:g} now) or check the data"))

    def _save(self, taken: int) -> None:
        self.checkpointer.save({
            "step": taken, "seconds": self.seconds(), "history": history_tensor(self.history),
            # unconstrained values: the constraints are re-created by running model and guide
            "params": self.svi.values(), "optimizer": self.svi.optimizer.state_dict(),
            "whitened": self.svi.whitened_values(),  # Adam's own coordinates, exactly
            **self.rows.state(), **self.best.state(), **self.refine.state(),
            **(self.held_out.state() if self.held_out is not None else {})},
            {**self.svi.streams(), **self.data.state()})

    def seconds(self) -> float:
        """Seconds of training, those before a resume included."""
        return self.trained_before + time.perf_counter() - self.start

    def run(self) -> FitResult:
        """Step to the end; a SIGINT or SIGTERM (:mod:`inference.interrupt`) stops the fit
        after the step it came in, with the checkpoint written (alone, with a checkpoint path:
        under a process group a signal stops each rank at once, from the last checkpoint)."""
        with interrupt.listening(self.checkpointer.enabled and self.group is None):
            while self.advance():
                pass
            result = self.result()
            if interrupt.pending() is not None:  # came in the last step: the fit is whole
                raise interrupt.Interrupted(interrupt.take(), checkpoint=self.checkpointer.path,
                                            where=f"step {self.step} of {self.settings.steps}")
        return result

    def result(self) -> FitResult:
        """The fit as it stands: its checkpoint written, the best window's parameters kept
        when the fit collapsed after it."""
        self.progress.close()
        seconds, taken, s = self.seconds(), self.step, self.settings
        with self.svi.owned():
            if self.checkpointer.enabled and self.checkpointer.saved_step != taken:
                self._save(taken)
            rule_met = self.ended()
            collapse = self.best.collapse(self.history)
            average = self.refine.average()
            if self.held_out is not None:  # the held-out rows choose what is kept
                collapse, chosen = None, self.held_out.choose(*self.judged, average,
                                                              self.svi.assign)
                if chosen is not None:
                    self.svi.assign(chosen)
            elif collapse is not None:  # the best window's parameters, not the collapsed last
                self.svi.assign(self.best.params)
            elif average is not None:
                self.svi.assign(average)
        kept = collapse or {"kept": "average" if average is not None else "last"}
        params, guide_params = self.svi.params()
        world = (self.group.describe() if self.group is not None
                 else {"world_size": 1, "backend": None})
        return FitResult(
            model=s.model_name, inference="svi", guide=s.guide_name or None, params=params,
            guide_params=guide_params, history={"elbo": self.history}, seconds=seconds,
            steps=taken, converged=rule_met and collapse is None, device=str(self.svi.device),
            seed=s.seed,
            info={"elbo_estimator": self.svi.estimator.name,
                  "jit_fallback": self.svi.estimator.fallback, "lr": s.lr,
                  "batch_size": s.batch_size, "num_particles": s.num_particles,
                  "max_steps": s.steps, "stop_tol": s.stop_tol, "stop_window": s.stop_window,
                  "stopping_rule_met": rule_met, "resumed_from_step": self.resumed_from,
                  **self.refine.describe(), **world, **kept, **self.held_out_note,
                  **(self.held_out.describe(taken) if self.held_out is not None else {})})
