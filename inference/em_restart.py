"""One restart of EM (:mod:`inference.em` orders the restarts): the E and M steps on the rows
as the fit sees them (:class:`_EMData`: in memory, in chunks of a file, or sharded over
processes), plain EM's loop (:func:`_em_run`, scikit-learn's), the snapshots of the parameters
kept for figures, and what a restart returns (:class:`_Run`). SQUAREM's accelerated loop
(:mod:`inference.em_squarem`) runs on the same pieces.
"""

from __future__ import annotations

import math

import torch

from inference import interrupt
from inference.shards import Rows
from zoo.errors import InputError
from zoo.registry import ModelSpec, Params

# history indices whose parameters the fit keeps for figures (Bishop's "L = 1, 2, 5, 20"
# picture), so that no figure re-runs EM; kept only while the parameters are this small
SNAPSHOT_ITERATIONS = (0, 3, 5, 16)
SNAPSHOT_MAX_ELEMENTS = 1 << 22


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

    A start from the data is the model's ``init_rows`` hook on the shards where it has one
    (the GMM's K-means start: every rank passes over its own rows, and the start equals the
    one-process start); otherwise it is computed once, on rank 0 (on every row when they are
    in memory, on a seeded subsample of one chunk's size when they are streamed), and
    broadcast.
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

    def log_likelihood(self, params: Params) -> torch.Tensor:
        """The E-step's mean log p(x) alone: the model's ``log_likelihood`` hook where it has
        one (no statistics), the E-step's otherwise."""
        hook = self.em.log_likelihood
        if hook is None:
            return self.e_step(params)[1]
        if self.x is not None:
            return hook(self.config, params, self.x)
        total = sum(hook(self.config, params, chunk).double() * chunk.shape[0]
                    for chunk in self.rows.chunks())
        gathered = self.rows.gather(torch.as_tensor(total, dtype=torch.float64))
        return sum(gathered) / self.rows.num_data

    def m_step(self, statistics) -> Params:
        return self.em.m_step(self.config, self.x, statistics)

    def init(self, generator: torch.Generator, method: str) -> Params:
        rows = self.rows
        if self.x is not None and rows.group is None:
            return self.em.init(self.config, self.x, generator, method)
        if self.em.init_rows is not None:
            params = self.em.init_rows(self.config, rows, generator, method)
            if params is not None:
                return params
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
    final = finite(data.log_likelihood(params), f"EM on {data.spec.name}",
                   f"iteration {len(history) + 1}")
    history.append(final)
    _keep(snapshots, history, params)
    return _Run(params, history, converged, len(history) - 1, len(history),
                snapshots=snapshots)


class _Paused(Exception):
    """A signal came: the restart in progress stops at an iteration boundary with ``state``."""

    def __init__(self, state: dict):
        super().__init__("paused")
        self.state = state

