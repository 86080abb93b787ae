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
        snapshots: the parameters at a few iterations, ``{history index: Params}`` (EM keeps
            those of :data:`inference.em.SNAPSHOT_ITERATIONS`), in memory for figures only;
            never saved.
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
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)


@dataclass
class FitRecord:
    """The record of one fit, typed: what ``lvm-zoo fit --json`` prints and ``metrics.json``
    holds (:meth:`to_dict`, the JSON with the same keys as ever). Mean nats per datapoint.

    ``metrics`` are the yardstick's figures (:func:`inference.evaluate.evaluate_fit`: the
    log-likelihoods, ELBO, gap, method, bits per dimension), ``measures`` what a comparison
    adds (its label, gaps, label matching, reference distance), in the order it adds them."""

    model: str
    guide: str | None
    inference: str
    data: str
    n_train: int
    n_test: int
    metrics: dict
    seconds: float
    steps: int
    converged: bool
    device: str
    world_size: int = 1
    backend: str | None = None
    chunk_rows: int | None = None
    seed: int = 0
    test_fraction: float | None = None
    nuts_reference: dict | None = None  # ``fit --reference nuts``: per site NUTS vs the fit
    posterior_file: str | None = None  # posterior.nc of a model with global latents
    posterior_summary: list | None = None  # its ArviZ summary: mean, sd, HDI per site
    evaluation_error: str | None = None  # the yardstick failed; the training is saved
    measures: dict = field(default_factory=dict)
    run_dir: str | None = None

    def to_dict(self) -> dict:
        """The JSON record: the optional fields only where they are set."""
        head = {"model": self.model, "guide": self.guide, "inference": self.inference,
                "data": self.data, "n_train": self.n_train, "n_test": self.n_test}
        tail = {"seconds": self.seconds, "steps": self.steps, "converged": self.converged,
                "device": self.device, "world_size": self.world_size, "backend": self.backend,
                "chunk_rows": self.chunk_rows, "seed": self.seed}
        optional = {name: getattr(self, name) for name in _OPTIONAL
                    if getattr(self, name) is not None}
        return {**head, **self.metrics, **tail, **optional, **self.measures,
                "run_dir": self.run_dir}


_OPTIONAL = ("test_fraction", "nuts_reference", "posterior_file", "posterior_summary",
             "evaluation_error")
