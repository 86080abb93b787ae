"""What a fit's posterior draws are: :class:`PosteriorDraws` (the draws of one fit, or of the
NUTS reference, as tensors on the CPU), the training rows a comparison shows
(:func:`chosen_rows`) and a fit's ``posterior.nc`` keeps (:func:`posterior_rows`), and which
sites of a Pyro trace are latent and local to the data plate."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro.poutine.subsample_messenger import _Subsample

from zoo.registry import DATA_PLATE

CHOSEN_ROWS = 4  # training rows whose local latents the comparison's figures show
POSTERIOR_ROWS = 1000  # training rows whose local latents a fit's posterior.nc keeps, at most


@dataclass
class PosteriorDraws:
    """Draws of one fit's posterior, as tensors on the CPU.

    Attributes:
        label: the strategy's name, e.g. ``"svi mean-field"`` or ``"em"``.
        rows: ``(k,)`` indices (into the training rows) of the chosen datapoints.
        local: site -> ``(S, k, *event_shape)`` draws of each local latent for the chosen rows.
        globals: site -> ``(S, *shape)`` draws of each global latent (Bayesian variants).
        discrete: the sites whose values are category indices.
        log_likelihood: observed site -> ``(S, n)`` log p(x_n | z_n) of the first n training
            rows, nats; empty when not computed.
        observed: observed site -> ``(n, D)`` those rows.
        diagnostics: for NUTS draws, the number of divergences and the acceptance rate.
        chains: the draws are ``chains`` chains one after another (NUTS; a fit's draws: 1);
            :func:`to_inference_data` keeps them apart.
    """

    label: str
    rows: torch.Tensor
    local: dict[str, torch.Tensor]
    globals: dict[str, torch.Tensor] = field(default_factory=dict)
    discrete: frozenset[str] = frozenset()
    log_likelihood: dict[str, torch.Tensor] = field(default_factory=dict)
    observed: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)  # NUTS: divergences, acceptance rate
    chains: int = 1

    @property
    def num_draws(self) -> int:
        return next(iter({**self.local, **self.globals}.values())).shape[0]


def chosen_rows(num_rows: int, count: int = CHOSEN_ROWS, seed: int = 0) -> torch.Tensor:
    """``count`` training-row indices drawn without replacement by ``seed``, sorted: the same
    rows for every fit on one split."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_rows, generator=generator)[:min(count, num_rows)].sort().values


def posterior_rows(num_rows: int, seed: int = 0, limit: int = POSTERIOR_ROWS) -> torch.Tensor:
    """The training rows whose local latents a fit's ``posterior.nc`` keeps: all of them up
    to ``limit``, beyond that ``limit`` rows drawn by ``seed`` (a superset of
    :func:`chosen_rows` with the same seed)."""
    return chosen_rows(num_rows, count=limit, seed=seed)


def in_data_plate(site) -> bool:
    """Whether a trace site lies inside the data plate (a local site)."""
    return any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"])


def latent_sites(trace):
    """The latent sample sites of a trace (not the plates' subsample sites)."""
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not isinstance(site["fn"], _Subsample)}
