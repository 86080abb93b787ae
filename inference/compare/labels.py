"""Label switching: two mixtures that differ only by the names of their components are equal.

The MAP assignments of a fit are matched to an anchor fit's by the Hungarian algorithm on their
cross-table; ``ari`` is the adjusted Rand index of the two partitions and
``matched_param_error`` the largest difference of the component parameters after relabelling.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score
from torch.distributions import Categorical

from zoo.registry import ModelSpec


def map_assignments(spec: ModelSpec, config, params, x: torch.Tensor) -> torch.Tensor | None:
    """argmax_k p(z_n = k | x_n) for every row, where ``spec.posterior`` is Categorical."""
    if spec.posterior is None:
        return None
    with torch.no_grad():
        posterior = spec.posterior(config, params, x)
    if not isinstance(posterior, Categorical):
        return None
    return posterior.probs.argmax(-1)


def match_labels(labels: torch.Tensor, anchor: torch.Tensor, categories: int) -> torch.Tensor:
    """The relabelling ``permutation`` (fit's label k → anchor's label permutation[k]) that
    maximizes the agreement of the two assignments (Hungarian algorithm on the cross-table)."""
    table = torch.zeros(categories, categories, dtype=torch.float64)
    table.index_put_((labels.cpu(), anchor.cpu()), torch.ones(labels.numel(),
                                                              dtype=torch.float64),
                     accumulate=True)
    fit_index, anchor_index = linear_sum_assignment(table.numpy(), maximize=True)
    permutation = torch.empty(categories, dtype=torch.long)
    permutation[torch.as_tensor(fit_index)] = torch.as_tensor(anchor_index)
    return permutation


def label_switching_measures(spec: ModelSpec, config, params, anchor_params,
                             x: torch.Tensor) -> dict | None:
    """``ari`` (adjusted Rand index of the MAP assignments; 1 for the same partition under any
    labelling), ``matched_param_error`` (largest |θ − θ_anchor| over the parameters indexed by
    component, after relabelling) and the ``permutation``; ``None`` for a model without a
    categorical posterior."""
    labels = map_assignments(spec, config, params, x)
    anchor = map_assignments(spec, config, anchor_params, x)
    if labels is None or anchor is None:
        return None
    categories = spec.posterior(config, params, x[:1]).probs.shape[-1]
    permutation = match_labels(labels, anchor, categories)
    inverse = torch.argsort(permutation)  # anchor label j ← fit label inverse[j]
    error = 0.0
    for name, value in params.items():
        reference = anchor_params.get(name)
        if reference is None or value.shape != reference.shape:
            continue
        if value.dim() >= 1 and value.shape[0] == categories:
            value = value[inverse.to(value.device)]
        error = max(error, float((value - reference.to(value)).abs().max()))
    return {"ari": float(adjusted_rand_score(anchor.cpu().numpy(), labels.cpu().numpy())),
            "matched_param_error": error, "permutation": permutation}

