"""What every fit returns, whatever the strategy: :class:`FitResult`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FitResult:
    """One fitted model.

    Attributes:
        model: registry name of the model.
        inference: "svi", "em" or "closed-form".
        guide: the guide's name for SVI, else ``None``.
        params: the model's global parameters, keyed by their ``pyro.param`` names (the one
            representation every strategy produces and evaluation consumes).
        guide_params: the guide's own parameters (encoder weights, per-datapoint
            variational parameters); empty for EM and the closed form.
        history: per step (SVI) or per iteration (EM) curves in nats per datapoint, e.g.
            ``{"elbo": [...]}`` or ``{"log_likelihood": [...]}``.
        seconds: wall-clock time of the fit.
        steps: SVI steps or EM iterations taken.
        converged: whether the stopping criterion was met (``True`` for the closed form).
        device: where the fit ran, e.g. "cpu" or "cuda:0".
        seed: the seed that reproduces it.
        info: strategy-specific extras (best restart, learning rate, ...), JSON-serializable.
    """

    model: str
    inference: str
    guide: str | None
    params: dict[str, torch.Tensor]
    guide_params: dict[str, torch.Tensor] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0
    converged: bool = True
    device: str = "cpu"
    seed: int = 0
    info: dict = field(default_factory=dict)
