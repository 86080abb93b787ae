"""How SVI ends at the optimum: levels that end when the fit is stationary, Adam restarted at
each new level, and the iterates averaged over the last level.

A fit at one learning rate ``lr`` does not end at the optimum: Adam's last iterate wanders
around it, and Adam's second moments (``beta2 = 0.999``) remember the gradients of a thousand
steps before, which for a Gaussian guide's shrinking scale are orders of magnitude larger than
today's: the scale freezes far above the posterior's (a coefficient with posterior sd 0.001,
fitted with ``auto-mvn`` at ``lr = 0.01``, kept an sd 10-50 times too wide after 1000-6000
steps). The rule here, in the family of Welandawe et al. (2022, RAABBVI: "Robust, automated,
and accurate black-box variational inference") and of Polyak-Ruppert averaging:

1. Levels: a level ends at a window boundary (windows of ``window`` steps, as the stopping
   rule's) when it is *stationary*: its last window's mean ELBO exceeds the one before by less
   than ``tol`` plus two standard errors of that difference (from each window's steps' spread);
   the first level runs at least four windows (as long as the stopping rule needs: a shorter
   fit runs as it did at one rate), and so does the last (its average is what the fit
   returns); the others at least two. ``levels`` levels follow the first.
2. At each new level the rate is multiplied by ``decay``, and Adam's moment estimates are
   restarted for every parameter whose second-moment memory exceeds ten times its mean squared
   gradient over the last window (:func:`restart_stale_moments`; a network's weights at a
   stationary point keep theirs, so a restart is no jolt to them).
   The default ``decay`` is 1 (restarts alone): on the regression above RAABBVI's
   halving (0.5), or 0.7, left that sd 2.4-14 times too wide within 5000 steps (at a lower rate
   the scale's unconstrained coordinate moves less per step, and it must travel log 100),
   while restarts at the same rate brought every sd within 3% and every mean within 0.1 sd.
3. From the second window of each level after the first, the unconstrained parameters are
   averaged (a running mean, every step); the fit returns the last level's average.
4. The fit has converged when the last level is stationary; ``steps`` stays the cap.

``tol = 0`` (``stop_tol=0``: "run every step") keeps one level at ``lr`` and the last iterate,
as does ``schedule="constant"``; ``average=False`` keeps the levels and the last iterate.
"""

from __future__ import annotations

import math

import torch

from inference.svi_stopping import window_stats

DECAY = 1.0  # the learning rate's factor at each level (RAABBVI's rho; see the module)
LEVELS = 8  # levels after the first
STALE = 10.0  # Adam's memory of squared gradients this many times today's is restarted
FIRST_WINDOWS = 4  # the first level's least length: the stopping rule's four windows
SCHEDULES = ("auto", "constant")


class Refinement:
    """The levels of one fit (see the module); ``enabled=False``: one level, no average."""

    def __init__(self, lr: float, window: int, tol: float, *, decay: float = DECAY,
                 levels: int = LEVELS, average: bool = True, enabled: bool = True):
        self.lr0, self.window, self.tol, self.decay = lr, window, tol, decay
        self.levels, self.averaging = levels, average
        self.enabled = enabled and tol > 0 and levels > 0
        self.level, self.start, self.done = 0, 0, False
        self.count, self.mean = 0, None
        self.squares: dict[str, torch.Tensor] = {}  # this window's sums of squared gradients

    @property
    def lr(self) -> float:
        return self.lr0 * self.decay ** self.level

    def after_step(self, history: list[float], svi) -> None:
        """Called after each step with the history so far: average, and at a window
        boundary step down (restarting ``svi``'s Adam) or finish when stationary."""
        if not self.enabled or self.done:
            return
        taken = len(history) - self.start
        if self.averaging and self.level > 0 and taken > self.window:
            self._accumulate(svi)
        for name, norm in svi.grad_norms.items():
            square = norm.detach() ** 2
            self.squares[name] = self.squares[name] + square if name in self.squares else square
        if taken % self.window:
            return
        least = (FIRST_WINDOWS if self.level in (0, self.levels) else 2) * self.window
        if taken >= least and self._stationary(history):
            if self.level == self.levels:
                self.done = True
            else:
                self._next_level(len(history), svi)
        self.squares = {}

    def _next_level(self, step: int, svi) -> None:
        self.level, self.start = self.level + 1, step
        self.count, self.mean = 0, None
        restart_stale_moments(svi, self.squares, self.window)
        svi.lr = self.lr

    def _accumulate(self, svi) -> None:
        """The running mean, one fused in-place update of every tensor (no copies)."""
        self.count += 1
        if self.mean is None:
            self.mean = svi.values()
            return
        names = list(self.mean)
        with torch.no_grad():
            torch._foreach_lerp_([self.mean[n] for n in names],
                                 [svi.unconstrained[n].detach() for n in names],
                                 1.0 / self.count)

    def _stationary(self, history: list[float]) -> bool:
        end = len(history)
        last, last_se = window_stats(history, end, self.window)
        before, before_se = window_stats(history, end - self.window, self.window)
        return last - before < self.tol + 2.0 * math.hypot(last_se, before_se)

    def average(self) -> dict[str, torch.Tensor] | None:
        """The last level's average of the unconstrained parameters (None: none taken)."""
        return self.mean if self.enabled and self.averaging and self.count else None

    def state(self) -> dict:
        if not self.enabled:
            return {}
        return {"refinement": {"level": self.level, "start": self.start, "done": self.done,
                               "count": self.count, "mean": self.mean,
                               "squares": self.squares}}

    def restore(self, state: dict) -> None:
        saved = state.get("refinement")
        if not self.enabled or not isinstance(saved, dict):
            return
        self.level, self.start = int(saved["level"]), int(saved["start"])
        self.done, self.count, self.mean = bool(saved["done"]), int(saved["count"]), \
            saved["mean"]
        self.squares = dict(saved.get("squares") or {})

    def describe(self) -> dict:
        """What ``info`` records."""
        if not self.enabled:
            return {"schedule": "constant", "lr_final": self.lr0, "averaged_steps": 0}
        return {"schedule": "auto", "lr_final": self.lr, "lr_levels": self.level,
                "averaged_steps": self.count if self.averaging else 0}


def restart_stale_moments(svi, squares: dict[str, torch.Tensor], steps: int) -> list[str]:
    """Restart Adam's moments of each parameter whose second-moment estimate (its mean over
    the tensor, bias-corrected) exceeds :data:`STALE` times the mean squared gradient of the
    last ``steps`` steps (``squares``: their sums of squared L2 norms, by name): a memory of
    much larger gradients that would hold its steps far below ``lr``. Parameters whose
    gradients kept their size (a network's weights at a stationary point) keep their moments,
    so their next steps are no jolt. Returns the names restarted."""
    restarted = []
    for name, total in squares.items():
        param = svi.unconstrained[name]
        state = svi.optimizer.state.get(param)
        if not state or "exp_avg_sq" not in state:
            continue
        beta2 = svi.optimizer.param_groups[0]["betas"][1]
        memory = float(state["exp_avg_sq"].mean()) / (1.0 - beta2 ** float(state["step"]))
        recent = float(total) / (steps * param.numel())
        if memory > STALE * recent:
            del svi.optimizer.state[param]
            restarted.append(name)
    return restarted
