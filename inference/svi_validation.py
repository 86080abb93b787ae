"""Held-out rows for fits that can overfit: a validation split of the training rows, their
ELBO every so often, the parameters of the best one kept, and early stopping.

A deep model's decoder (or any network) fitted by SVI goes on raising the training ELBO after
it has stopped generalizing: the default deep model on digits reached a training log-likelihood
of -45 nats per row and a test one of -90. With ``validation = f`` (a fraction in (0, 1); the
deep model's ``svi_defaults`` ask for :data:`VALIDATION`) :class:`HeldOut` sets aside
``round(f N)`` of the ``N`` training rows (a seeded draw, the same on every rank and on
resume), SVI fits the others, and every ``every`` steps (the stopping rule's window) the ELBO
of the held-out rows is estimated:

- the estimate is the fit's own ELBO family (``Trace_ELBO``, or ``TraceEnum_ELBO`` for an
  enumerating fit) on the held-out rows alone, ``PARTICLES`` particles, mean nats per row, from
  a random stream seeded the same way at every evaluation (common random numbers: two
  evaluations differ by the parameters, not by the draws), with no gradient;
- the parameters with the best estimate so far are copied (the *kept* ones); at the end of the
  fit the schedule's average of the iterates, when there is one, is estimated too and kept if
  it is at least as good;
- the fit stops early when ``patience`` evaluations in a row have not improved on the best by
  more than :data:`IMPROVEMENT` nats per row.

The fit returns the kept parameters; ``info`` says which step they are from and why
(``kept``: ``"best-validation"`` or ``"average"``, ``kept_step``, ``validation_elbo``, the
``validation_history`` of ``[step, elbo]`` pairs, ``validation_rows`` and
``validation_fraction``, ``stopped_by``). By construction the kept parameters' held-out ELBO is
the best one seen: a fit with held-out rows never reports a collapsed state (one whose ELBO has
fallen below its best). A guide with parameters for each training row (``per_datapoint``) has
none for held-out rows: it fits every row, as without a split.
"""

from __future__ import annotations

import math

import pyro
import pyro.infer
import torch

from inference.data import random_streams, set_random_streams
from zoo.datasets.split import dynamic_binarize
from zoo.errors import InputError

VALIDATION = 0.1  # the share of the training rows a deep model holds out by default
PARTICLES = 8  # particles of each held-out ELBO estimate
PATIENCE = 10  # evaluations without improvement before the fit stops early
IMPROVEMENT = 1e-3  # nats per row an evaluation must gain on the best to count as one
CHUNK_VALUES = 1 << 22  # rows x particles x columns per estimate's chunk (memory bound)
SPLIT_SALT = 0x5A17  # keeps the split's draw apart from the fit's own seeded streams


def check_fraction(fraction: float, num_data: int) -> None:
    """``fraction`` must be in [0, 1) and leave at least one row on each side."""
    if not 0.0 <= fraction < 1.0 or not math.isfinite(fraction):
        raise InputError(f"validation={fraction} must be a fraction in [0, 1) of the training "
                         "rows (0: no held-out rows)")
    held = round(fraction * num_data)
    if fraction > 0 and not 1 <= held < num_data:
        raise InputError(f"validation={fraction} of {num_data} training rows holds out {held}; "
                         "give a fraction that leaves at least one row on each side, or 0")


def held_out(x: torch.Tensor, guide, fraction: float, *, seed: int, every: int,
             elbo, binarize: str | None = None) -> tuple[HeldOut | None, dict]:
    """The :class:`HeldOut` rows of a fit asking for ``fraction`` of ``x`` (None when it asks
    for none), and what ``info`` records when the guide cannot be judged on new rows."""
    if not fraction:
        return None, {}
    if getattr(guide, "per_datapoint", False):
        check_fraction(fraction, x.shape[0])
        return None, {"validation_fraction": fraction, "validation_rows": 0,
                      "validation_note": "the guide has parameters for each training row and "
                                         "none for held-out ones: every row is fitted"}
    name = elbo if isinstance(elbo, str) else type(elbo).__name__
    return HeldOut(x, fraction, seed=seed, every=every, elbo=name, binarize=binarize), {}


class HeldOut:
    """The held-out rows of one fit and what they decided (see the module).

    ``x : (N, D)`` are the training rows; :attr:`train` the rows SVI fits, :attr:`rows` the
    held-out ones (with ``binarize="dynamic"``, one seeded binarization of them)."""

    def __init__(self, x: torch.Tensor, fraction: float, *, seed: int, every: int,
                 elbo: str = "Trace_ELBO", patience: int = PATIENCE,
                 binarize: str | None = None):
        check_fraction(fraction, x.shape[0])
        self.fraction, self.every, self.patience = fraction, every, patience
        self.seed, self.enumerate = seed, "Enum" in elbo
        count = round(fraction * x.shape[0])
        generator = torch.Generator().manual_seed(seed + SPLIT_SALT)
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        held, kept = order[:count].sort().values, order[count:].sort().values
        self.train, self.rows = x[kept], x[held]
        if binarize == "dynamic":
            self.rows = dynamic_binarize(self.rows, torch.Generator(x.device).manual_seed(seed))
        self.history: list[list[float]] = []  # [step, held-out ELBO] per evaluation
        self.best_step, self.best, self.params = None, -math.inf, None
        self.since, self.stopped, self.kept, self.vectorized = 0, False, None, True

    def elbo(self, model, guide) -> float:
        """The held-out rows' ELBO (mean nats per row) under the current parameters; called
        inside the fit's own param store. The fit's random streams are left as they were. A
        model that does not broadcast over vectorized particles gets them one at a time."""
        device = self.rows.device
        outer = random_streams(device)
        torch.manual_seed(self.seed)  # the same draws at every evaluation
        width = max(1, CHUNK_VALUES // (PARTICLES * max(1, self.rows[0].numel())))
        try:
            with torch.no_grad(), pyro.validation_enabled(False):
                try:
                    loss = self._loss(model, guide, width)
                except (RuntimeError, ValueError, IndexError, NotImplementedError):
                    if not self.vectorized:
                        raise
                    self.vectorized = False
                    torch.manual_seed(self.seed)
                    loss = self._loss(model, guide, width)
        finally:
            set_random_streams(outer, device)
        return -loss / self.rows.shape[0]

    def _loss(self, model, guide, width: int) -> float:
        kind = pyro.infer.TraceEnum_ELBO if self.enumerate else pyro.infer.Trace_ELBO
        if self.vectorized:
            estimator, repeats = kind(num_particles=PARTICLES, vectorize_particles=True,
                                      max_plate_nesting=1), 1
        else:
            estimator, repeats = kind(max_plate_nesting=1), PARTICLES
        return math.fsum(float(estimator.loss(model, guide, chunk))
                         for chunk in self.rows.split(width)
                         for _ in range(repeats)) / repeats

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def update(self, step: int, model, guide, names, unconstrained) -> None:
        """Estimate at ``step`` (steps taken); keep the parameters if the best so far; stop
        after ``patience`` evaluations without an improvement of :data:`IMPROVEMENT`."""
        value = self.elbo(model, guide)
        self.history.append([step, value])
        first = self.best_step is None
        self.since = 0 if first or value > self.best + IMPROVEMENT else self.since + 1
        if math.isfinite(value) and (first or value > self.best):
            self.best_step, self.best = step, value
            self.params = {n: unconstrained[n].detach().clone() for n in names}
        self.stopped = self.since >= self.patience

    def choose(self, model, guide, average: dict | None, assign) -> dict | None:
        """The parameters the fit returns: the average of the iterates (``average``) when its
        held-out ELBO is at least the best seen, else the best; ``assign(values)`` puts a
        candidate in place. Returns the best's values to assign (None: keep what is in place,
        the average)."""
        if average is not None:
            assign(average)
            value = self.elbo(model, guide)
            if math.isfinite(value) and (self.best_step is None or value >= self.best):
                self.kept = ("average", value)
                return None
        if self.best_step is None:
            self.kept = ("last", None)
            return None
        self.kept = ("best-validation", self.best)
        return self.params

    def describe(self, taken: int) -> dict:
        """What ``info`` records about the held-out rows and the kept parameters."""
        info = {"validation_fraction": self.fraction, "validation_rows": int(self.rows.shape[0]),
                "validation_every": self.every, "validation_particles": PARTICLES,
                "validation_history": self.history, "validation_best_step": self.best_step,
                "validation_best_elbo": None if self.best_step is None else self.best,
                "stopped_by": "validation" if self.stopped else None}
        if self.kept is not None:
            kind, value = self.kept
            info.update(kept=kind, validation_elbo=value,
                        kept_step=taken if kind in ("average", "last") else self.best_step,
                        kept_reason={
                            "average": "the average of the last level's iterates: its held-out "
                                       "ELBO is at least the best one seen",
                            "best-validation": "the best held-out ELBO seen",
                            "last": "no held-out evaluation was taken"}[kind])
        return info

    def state(self) -> dict:
        return {"validation": {"history": self.history, "best_step": self.best_step,
                               "best": self.best, "params": self.params, "since": self.since,
                               "stopped": self.stopped}}

    def restore(self, state: dict) -> None:
        saved = state.get("validation")
        if not isinstance(saved, dict):
            return
        self.history = [[int(step), float(value)] for step, value in saved["history"]]
        self.best_step = None if saved["best_step"] is None else int(saved["best_step"])
        self.best, self.params = float(saved["best"]), saved["params"]
        self.since, self.stopped = int(saved["since"]), bool(saved["stopped"])
