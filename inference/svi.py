"""Stochastic variational inference: one thin loop for any model, guide and ELBO.

A fit composes small pieces, in the spirit of ``pyro.infer.SVI.step``:

- :class:`~inference.svi_step.SVIStep` — Pyro's ELBO estimator (``loss_and_grads``; the
  JIT-compiled twin with a fallback, :class:`~inference.svi_step.Estimator`) and one torch Adam
  over the unconstrained parameters, in a param store and random streams of the fit's own,
  swapped in around each step: two fits in one process never share a parameter, and can be
  interleaved step by step with the numbers each gives alone.
- :class:`~inference.svi_rows.RowSampler` — each step's rows: all of ``x``, a minibatch drawn
  from a seeded generator of its own (its state in the checkpoint) and fixed onto the data
  plate by conditioning its subsample site, or under a ``torch.distributed`` process group
  :func:`inference.distributed.current`) ``DistributedDataParallel``'s semantics: every rank
  draws the same ``W B`` rows and fits its own ``B`` of them, gradients averaged over the ranks
  before Adam's step (a full batch is sharded, rank ``r``'s ELBO weighted ``n_r / N``). Rank 0's
  initial parameters are broadcast; rank ``r``'s own noise is seeded ``seed + r``.
- :class:`~inference.data.DynamicBinarization` — ``binarize="dynamic"``: a fresh Bernoulli
  draw of ``x`` every epoch (a data-side transform; static binarization is the loader's).
- :class:`~inference.svi_checkpoint.Checkpointer` — atomic checkpoints every ``checkpoint_every``
  steps, else every ``checkpoint_seconds`` of training, and at the end; ``resume=True``
  continues bit for bit (history, seconds and steps cover the whole run;
  ``info["resumed_from_step"]``; one line on stderr). Rank 0 alone writes, with every rank's
  streams; a checkpoint of another world size, seed, model size is refused by name.
- :class:`~inference.svi_stopping.StoppingRule` and :class:`~inference.svi_stopping.BestWindow`
  — windows of ``stop_window`` steps; converged when three windows in a row gain less than
  ``stop_tol`` nats per datapoint with confidence (``stop_tol=0`` runs every step); when the last
  window falls below the best one by more than
  :func:`~inference.svi_stopping.collapse_tolerance` the best window's parameters are returned
  (``info["kept"] = "best"``, ``best_step``, ``collapsed_at``), else ``"last"``. ``converged``
  is True only when the rule was met and the last parameters are returned.

A non-finite loss or gradient raises :class:`TrainingDiverged` before the bad update; no
checkpoint is written after it, and the message names the last good one.
:class:`~inference.svi_loop.SVILoop` is the loop; :func:`fit_svi` builds and runs one.
"""

from __future__ import annotations

from pathlib import Path

import pyro.infer
import torch

from inference import distributed
from inference.results import FitResult
from inference.svi_checkpoint import CHECKPOINT_SECONDS, Checkpointer
from inference.svi_loop import SVILoop, SVISettings
from inference.svi_step import (
    ELBOS,
    JIT_VARIANTS,
    Estimator,
    SVIStep,
    TrainingDiverged,
    make_elbo,
    split_params,
)
from inference.svi_stopping import (
    STOP_TOL,
    STOP_WINDOW,
    BestWindow,
    StoppingRule,
    collapse_tolerance,
)

__all__ = ["CHECKPOINT_SECONDS", "ELBOS", "JIT_VARIANTS", "STOP_TOL", "STOP_WINDOW",
           "BestWindow", "Checkpointer", "Estimator", "SVILoop", "SVISettings", "SVIStep",
           "StoppingRule", "TrainingDiverged", "collapse_tolerance", "fit_svi", "make_elbo",
           "split_params", "svi_loop"]


def svi_loop(model, guide, x: torch.Tensor, *, checkpoint: str | Path | None = None,
             checkpoint_every: int = 0, checkpoint_seconds: float = CHECKPOINT_SECONDS,
             resume: bool = False, binarize: str | None = None, restart: int | None = None,
             **settings) -> SVILoop:
    """An :class:`SVILoop` of ``model``/``guide`` on ``x : (N, D)``, ready to step; the
    keywords are :func:`fit_svi`'s."""
    options = SVISettings(**settings)
    checkpointer = Checkpointer(checkpoint, every=checkpoint_every,
                                seconds=checkpoint_seconds, group=distributed.current(),
                                seed=options.seed, restart=restart)
    return SVILoop(model, guide, x, options, checkpointer=checkpointer, binarize=binarize,
                   resume=resume and checkpoint is not None)


def fit_svi(model, guide, x: torch.Tensor, *, elbo: str | pyro.infer.ELBO = "Trace_ELBO",
            steps: int = 5000, lr: float = 1e-2, batch_size: int | None = None,
            num_particles: int = 1, seed: int = 0, binarize: str | None = None,
            checkpoint: str | Path | None = None, checkpoint_every: int = 0,
            checkpoint_seconds: float = CHECKPOINT_SECONDS, resume: bool = False,
            jit: bool = False, stop_tol: float = STOP_TOL, stop_window: int = STOP_WINDOW,
            progress: bool = False, model_name: str = "", guide_name: str = "",
            restart: int | None = None, schedule: str = "decay-average",
            average: bool = True, validation: float = 0.0) -> FitResult:
    """Maximize the ELBO of ``model``/``guide`` on ``x : (N, D)`` with Adam (see the module).

    Each step sees ``batch_size`` rows (per rank; all when ``None``), the ELBO scaled to the
    whole data set; ``history["elbo"]`` holds every step's estimate in mean nats per datapoint.
    ``steps`` is the cap. ``schedule="decay-average"`` lowers the rate once the ELBO is
    stationary and ``average`` returns the final phase's average of the iterates
    (:mod:`inference.svi_schedule`); ``schedule="constant"`` or ``stop_tol=0`` keeps ``lr`` and
    the last iterate. ``validation`` (a fraction of the rows; 0: none) holds rows out and
    returns the parameters with their best ELBO, stopping early when it stops improving
    (:mod:`inference.svi_validation`). ``restart`` only names the restart in the resume
    line. The process's random streams are left where the fit's last step left them."""
    loop = svi_loop(model, guide, x, elbo=elbo, steps=steps, lr=lr, batch_size=batch_size,
                    num_particles=num_particles, seed=seed, binarize=binarize,
                    checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                    checkpoint_seconds=checkpoint_seconds, resume=resume, jit=jit,
                    stop_tol=stop_tol, stop_window=stop_window, progress=progress,
                    model_name=model_name, guide_name=guide_name, restart=restart,
                    schedule=schedule, average=average, validation=validation)
    result = loop.run()
    loop.svi.release()
    return result
