"""When SVI stops and what it keeps: the stopping rule and the best window.

The ELBO history (mean nats per datapoint, one value a step) is cut into windows of
``window`` steps. :class:`StoppingRule` says when the climb has ended with confidence;
:class:`BestWindow` keeps the parameters at the end of the best window and says when the fit
left it for good (a late collapse), so that :func:`inference.svi.fit_svi` returns those.
"""

from __future__ import annotations

import itertools
import math
import statistics

import torch

STOP_TOL = 1e-4  # nats per datapoint per window: the stopping rule's default
STOP_WINDOW = 100  # steps per window


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


class BestWindow:
    """The parameters at the end of the best window of the stopping rule's windows."""

    def __init__(self, window: int):
        self.window, self.step, self.mean, self.params = window, None, -math.inf, None

    def update(self, history: list[float], names, unconstrained) -> None:
        end = len(history)
        if end % self.window:
            return
        mean = window_stats(history, end, self.window)[0]
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
        self.mean = window_stats(history, self.step, self.window)[0]

    def collapse(self, history: list[float]) -> dict | None:
        """What ``info`` records when the last ``window`` steps average worse than the best
        window by more than :func:`collapse_tolerance`, else ``None``."""
        end, window = len(history), self.window
        if self.step is None or end < window or self.step >= end:
            return None
        ends = range(window, end - end % window + 1, window)  # the complete windows
        means = [window_stats(history, stop, window)[0] for stop in ends]
        best_mean, best_se = window_stats(history, self.step, window)
        final_mean, final_se = window_stats(history, end, window)
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


def window_stats(history: list[float], end: int, window: int) -> tuple[float, float]:
    """Mean and standard error of the mean of ``history[end - window:end]``."""
    values = history[end - window:end]
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    variance = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))
