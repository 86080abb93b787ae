"""How SVI ends at the optimum: a climb at the fit's rate until the ELBO is stationary, then a
final phase at a lower rate whose iterates are averaged (``schedule="decay-average"``).

A fit at one learning rate ``lr`` does not end at the optimum: Adam's last iterate wanders
around it (a coefficient whose posterior sd is 0.001, fitted at ``lr = 0.01``, jitters by
several sds), and Adam's second moments (``beta2 = 0.999``) remember the gradients of a thousand
steps before, which for a Gaussian guide's shrinking scale are orders of magnitude larger than
today's, so that the scale freezes far above the posterior's (that coefficient's sd stayed 10-50
times too wide after 1000-6000 steps). The rule here is in the family of Welandawe et al.
(2022, RAABBVI: "Robust, automated, and accurate black-box variational inference": a rate
lowered once the iterates are stationary, and their average returned) and of Polyak-Ruppert
averaging:

1. Stale memory cut, every window: at each window boundary (windows of ``window`` steps, as
   the stopping rule's) every element of Adam's second-moment estimate that exceeds
   :data:`STALE` times that element's mean squared gradient over the window is set to it
   (:func:`cut_stale_memory`). Elements whose gradients kept their size (a network's weights at
   a stationary point) are untouched; no first moment is reset, so this is no jolt.
2. The climb, at ``lr``: at least :data:`CLIMB_WINDOWS` windows, and it ends at the first
   window boundary where the ELBO is *stationary*: the last window's mean exceeds the mean
   :data:`SPAN` windows before by less than ``SPAN * tol`` plus two standard errors of that
   difference (each from its window's steps' spread). A comparison across several windows
   (not of neighbours) is what tells a slow climb from noise: a scale 4 times too wide still
   climbs ~0.05 nats per datapoint per window, under the noise of one window to the next.
3. The final phase, at ``lr * decay``: its first window is burn-in (the jitter of ``lr``
   settles), then the unconstrained parameters are averaged (a running mean, every step) for
   ``final_windows`` windows. It ends when the ELBO over the averaged windows is stationary
   (the last window against the first averaged one, as in 2); a phase that still climbs starts
   its average again from there (``average_restarts``), and the fit returns the average.
4. The fit has converged when the final phase has ended; ``steps`` stays the cap (a fit cut by
   the cap returns the average taken so far, or the last iterate during the climb).

The defaults were chosen against the exact posterior of a conjugate regression whose
coefficients' sds span 0.001 to 0.1 (tests/inference/test_svi_optimum.py), fitted with
``auto-mvn`` at ``lr = 0.01``: ``decay = 0.5`` (RAABBVI's) and twelve averaged windows bring
every sd within 4.3% and every mean within 0.06 sd at seeds 0-3 (3300-4200 steps). Tried and
dropped: ``decay = 0.2`` with eight windows (one seed's sd 12% wide: at a fifth of the rate
a scale left 10% off by the climb relaxes too slowly), no decay (the old levels: 3-8% off),
and neighbouring windows for the climb's test (it ended with a scale still 4 times too wide).

``tol = 0`` (``stop_tol=0``: "run every step") or ``schedule="constant"`` keeps one rate and
the last iterate; ``average=False`` keeps the phases and the last iterate.
"""

from __future__ import annotations

import math

import torch

from inference.svi_stopping import window_stats

DECAY = 0.5  # the final phase's rate, a fraction of the fit's (RAABBVI's rho)
STALE = 4.0  # Adam's memory above this many times the window's mean square is cut to it
CLIMB_WINDOWS = 4  # the climb's least length in windows: the stopping rule's four windows
SPAN = 3  # windows between the two window means a stationarity test compares
FINAL_WINDOWS = 12  # windows averaged in the final phase, after one window of burn-in
SCHEDULES = ("decay-average", "constant")
DEFAULT_SCHEDULE = "decay-average"


class Refinement:
    """The climb and the final phase of one fit (see the module); ``enabled=False``: one rate,
    the last iterate, and the stopping rule ends the fit."""

    def __init__(self, lr: float, window: int, tol: float, *, decay: float = DECAY,
                 final_windows: int = FINAL_WINDOWS, average: bool = True,
                 enabled: bool = True):
        if not 0 < decay <= 1:
            raise ValueError(f"decay={decay} must be in (0, 1]")
        self.lr0, self.window, self.tol, self.decay = lr, window, tol, decay
        self.final_windows, self.averaging = max(1, final_windows), average
        self.enabled = enabled and tol > 0
        self.level, self.start, self.done, self.restarts = 0, 0, False, 0
        self.count, self.mean = 0, None
        self.squares: dict[str, torch.Tensor] = {}  # this window's sums of squared gradients
        self.recent: list = [0, None, None]  # the climb: steps, this window's mean, the last's

    @property
    def lr(self) -> float:
        return self.lr0 * self.decay ** self.level

    def after_step(self, history: list[float], svi) -> None:
        """Called after each step with the history so far: average, and at a window boundary
        cut stale memory, end the climb, end the final phase or restart its average."""
        if not self.enabled or self.done:
            return
        self._square(svi)
        taken = len(history) - self.start
        if self.level == 1 and taken > self.window:
            self._accumulate(svi)
        elif self.level == 0 and self.averaging:
            self.recent[0] += 1
            self.recent[1] = _running_mean(self.recent[1], svi, self.recent[0])
        if taken % self.window:
            return
        cut_stale_memory(svi, self.squares, self.window)
        self.squares = {}
        if self.level == 0:
            if taken >= CLIMB_WINDOWS * self.window and self._stationary(
                    history, min(SPAN, taken // self.window - 1)):
                self._final_phase(len(history), svi)
            else:
                self.recent = [0, None, self.recent[1]]
        elif taken >= (1 + self.final_windows) * self.window:
            if self._stationary(history, self.final_windows - 1):
                self.done = True
            else:  # still climbing at the lower rate: average from here
                self.start, self.count, self.mean = len(history), 0, None
                self.restarts += 1

    def _final_phase(self, step: int, svi) -> None:
        """Start the final phase at step ``step`` from the climb's last two windows' average
        (a better start than one jittered iterate) at the lower rate."""
        this, last = self.recent[1], self.recent[2]
        if this is not None:
            if last is not None:
                torch._foreach_lerp_([this[n] for n in this], [last[n] for n in this], 0.5)
            svi.assign(this)
        self.level, self.start, self.recent = 1, step, [0, None, None]
        svi.lr = self.lr

    def _square(self, svi) -> None:
        """Add this step's squared gradients, element by element (one fused update)."""
        if not self.squares:
            self.squares = {n: torch.zeros_like(svi.unconstrained[n]) for n in svi.names}
        names = [n for n in self.squares if svi.unconstrained[n].grad is not None]
        grads = [svi.unconstrained[n].grad.detach() for n in names]
        if grads:
            torch._foreach_addcmul_([self.squares[n] for n in names], grads, grads)

    def _accumulate(self, svi) -> None:
        self.count += 1
        self.mean = _running_mean(self.mean, svi, self.count)

    def _stationary(self, history: list[float], span: int) -> bool:
        """Whether the last window's mean ELBO exceeds the one ``span`` windows before by less
        than ``span * tol`` plus two standard errors of the difference."""
        end = len(history)
        last, last_se = window_stats(history, end, self.window)
        before, before_se = window_stats(history, end - span * self.window, self.window)
        return last - before < span * self.tol + 2.0 * math.hypot(last_se, before_se)

    def average(self) -> dict[str, torch.Tensor] | None:
        """The final phase's average of the unconstrained parameters (None: none taken)."""
        return self.mean if self.enabled and self.averaging and self.count else None

    def state(self) -> dict:
        if not self.enabled:
            return {}
        return {"refinement": {"level": self.level, "start": self.start, "done": self.done,
                               "count": self.count, "mean": self.mean,
                               "squares": self.squares, "restarts": self.restarts,
                               "recent": self.recent}}

    def restore(self, state: dict) -> None:
        saved = state.get("refinement")
        if not self.enabled or not isinstance(saved, dict):
            return
        self.level, self.start = int(saved["level"]), int(saved["start"])
        self.done, self.count, self.mean = bool(saved["done"]), int(saved["count"]), \
            saved["mean"]
        self.squares = dict(saved.get("squares") or {})
        self.restarts = int(saved.get("restarts", 0))
        self.recent = list(saved.get("recent") or [0, None, None])

    def describe(self) -> dict:
        """What ``info`` records."""
        if not self.enabled:
            return {"schedule": "constant", "lr_final": self.lr0, "averaged_steps": 0}
        return {"schedule": DEFAULT_SCHEDULE, "lr_final": self.lr, "lr_levels": self.level,
                "final_phase_from_step": self.start if self.level else None,
                "average_restarts": self.restarts,
                "averaged_steps": self.count if self.averaging else 0}


def _running_mean(mean, svi, count: int):
    """``mean`` (of ``count - 1`` iterates; None: none yet) moved to take in ``svi``'s
    parameters now: one fused in-place update of every tensor (no copies)."""
    if mean is None:
        return svi.values()
    names = list(mean)
    with torch.no_grad():
        torch._foreach_lerp_([mean[n] for n in names],
                             [svi.unconstrained[n].detach() for n in names], 1.0 / count)
    return mean


def cut_stale_memory(svi, squares: dict[str, torch.Tensor], steps: int) -> int:
    """Cut each element of Adam's second-moment estimate (bias-corrected) that exceeds
    :data:`STALE` times its mean squared gradient over the last ``steps`` steps (``squares``:
    their sums, by name) down to that mean square, or to the square of Adam's first moment when
    that is larger (a cut to a rare gradient's tiny mean square would let the next step blow
    up): a memory of much larger gradients that would hold its steps far below the rate.
    Returns how many elements were cut."""
    cut = 0
    beta1, beta2 = svi.optimizer.param_groups[0]["betas"]
    for name, total in squares.items():
        state = svi.optimizer.state.get(svi.unconstrained[name])
        if not state or "exp_avg_sq" not in state:
            continue
        memory, step = state["exp_avg_sq"], float(state["step"])
        # never below the first moment's square (bias-corrected): no step then exceeds the
        # rate, even for an element whose gradients were rare or zero over the window
        floor = (state["exp_avg"] / (1.0 - beta1 ** step)).square()
        recent = torch.maximum(total / steps, floor) * (1.0 - beta2 ** step)  # memory's units
        stale = memory > STALE * recent
        cut += int(stale.sum())
        memory.copy_(torch.where(stale, recent, memory))
    return cut
