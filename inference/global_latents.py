"""The yardstick for models with global latent sites θ (a Bayesian model's priors).

Per-row importance sampling is wrong for them: it would count log p(θ) − log q(θ) once per
row. Here θ is drawn once per particle and shared by every row:

- **train log p(x)**: one joint importance-sampling estimate of the evidence,
  log p(X) ≈ log (1/K) Σ_k p(θ_k) p(X | θ_k) / q(θ_k), θ_k ~ q, divided by N;
- **held-out rows**: the log posterior predictive, log (1/K) Σ_k p(x_n | θ_k) per row;
- **ELBO**: the whole-data ELBO, (1/K) Σ_k [log p(θ_k, X) − log q(θ_k)], divided by N.

With local latents z as well, p(x_n | θ_k) is itself estimated by importance sampling over
z with the guide's local part (M draws per row): the *nested* estimate, and the ELBO uses the
same draws' log-weights. Everything is in nats; the caller divides by N. Draws of θ for the
training rows are reused for the held-out rows, so both see the same posterior sample.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask

from inference import diagnostics
from inference.sampling import one_draw, particle_traces, vectorized
from zoo.registry import DATA_PLATE

INNER_SAMPLES = 32  # local draws per row and per θ_k in the nested estimate


def _in_data_plate(site: dict) -> bool:
    return any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"])


def _site_terms(trace, per_row: bool) -> list[torch.Tensor]:
    """The unscaled log-densities of the sample sites inside (``per_row``) or outside the data
    plate (the plate's N/B scale and a poutine.scale such as β are left out)."""
    trace.compute_log_prob()
    return [scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
            for site in trace.nodes.values()
            if site["type"] == "sample" and site["name"] != DATA_PLATE and "log_prob" in site
            and _in_data_plate(site) == per_row]


def _summed(terms: list[torch.Tensor], shape: tuple[int, ...], device) -> torch.Tensor:
    """The terms summed to ``shape``: (K,) for global sites, (K, rows) for per-row ones."""
    total = torch.zeros(shape, device=device)
    for term in terms:
        while term.dim() > len(shape):  # a site's own singleton dims, e.g. (K, 1) -> (K,)
            term = term.sum(-1)
        total = total + term.expand(shape)
    return total


def global_draws(model, guide, x: torch.Tensor, global_sites: tuple[str, ...],
                 num_samples: int, *, vectorize: bool = True
                 ) -> tuple[dict[str, torch.Tensor] | list[dict], torch.Tensor]:
    """``num_samples`` draws θ_k ~ q (a particle plate at dim −2) and their log-weights
    log p(θ_k) − log q(θ_k), shape ``(K,)``. With ``vectorize=False`` (a model that does not
    broadcast over particles) the draws are taken one at a time and come back as a list of
    one ``{site: value}`` per draw, in the shapes the model sees without particles."""
    rows = torch.arange(min(2, x.shape[0]), device=x.device)
    kwargs = {"num_data": x.shape[0], "subsample_size": rows.numel()}
    if not vectorize:
        draws, ratios = [], []
        with torch.no_grad(), poutine.block():
            for _ in range(num_samples):
                guide_trace, model_trace = one_draw(model, guide, x, kwargs, {DATA_PLATE: rows})
                draws.append({name: guide_trace.nodes[name]["value"] for name in global_sites})
                ratios.append(_summed(_site_terms(model_trace, False), (), x.device)
                              - _summed(_site_terms(guide_trace, False), (), x.device))
        return draws, torch.stack(ratios)
    particles = partial(vectorized, num_particles=num_samples)
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(poutine.condition(particles(guide), {DATA_PLATE: rows})
                                    ).get_trace(x, **kwargs)
        model_trace = poutine.trace(poutine.replay(
            poutine.condition(particles(model), {DATA_PLATE: rows}), trace=guide_trace)
        ).get_trace(x, **kwargs)
    values = {name: guide_trace.nodes[name]["value"] for name in global_sites}
    log_prior = _summed(_site_terms(model_trace, False), (num_samples,), x.device)
    log_q = _summed(_site_terms(guide_trace, False), (num_samples,), x.device)
    return values, log_prior - log_q


def _each(values: dict[str, torch.Tensor] | list[dict], num_samples: int) -> list[dict]:
    """One ``{site: θ_k}`` per draw, from stacked values (particle dim first) or a list."""
    if isinstance(values, list):
        return values
    return [{name: value[k] for name, value in values.items()} for k in range(num_samples)]


def row_log_likelihoods(model, guide, x: torch.Tensor, values, num_samples: int, *,
                        local: bool, max_elements: int = 2**24,
                        vectorize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """For every draw θ_k (``values``: particle dim first, or a list of draws) and row n:
    log p̂(x_n | θ_k) and its ELBO counterpart, both ``(K, N)``. Without local latents the
    two are the exact log p(x_n | θ_k); with them, an importance-sampling estimate over
    ``INNER_SAMPLES`` draws of z (logmeanexp) and the mean of the same log-weights.
    ``vectorize=False`` takes the draws of θ (and of z) one at a time."""
    if not local and vectorize:
        estimate = _rows_given_theta(model, guide, x, values, num_samples, max_elements)
        return estimate, estimate
    estimates, elbos = [], []
    for theta in _each(values, num_samples):  # θ_k fixed; the inner draws of z
        inner = _rows_given_theta(model, guide, x, theta, INNER_SAMPLES if local else 1,
                                  max_elements, local_guide_terms=local, vectorize=vectorize)
        estimates.append(torch.logsumexp(inner, 0) - math.log(inner.shape[0]))
        elbos.append(inner.mean(0))
    return torch.stack(estimates), torch.stack(elbos)


def _rows_given_theta(model, guide, x, theta, num_samples, max_elements,
                      local_guide_terms: bool = False, vectorize: bool = True) -> torch.Tensor:
    """``(num_samples, N)``: per-row log p(x_n, z_n | θ) − log q(z_n | x_n) with the model's
    global sites held at ``theta`` (chunks of rows, the data plate conditioned on them)."""
    row_size = max(1, x[0].numel())
    rows_per_chunk = max(1, max_elements // (row_size * num_samples))
    out = []
    for rows in torch.arange(x.shape[0], device=x.device).split(rows_per_chunk):
        with torch.no_grad(), poutine.block():
            guide_trace, model_trace = particle_traces(model, guide, x, rows, num_samples,
                                                       vectorize=vectorize, condition=theta)
        shape = (num_samples, rows.numel())
        total = _summed(_site_terms(model_trace, True), shape, x.device)
        if local_guide_terms:
            total = total - _summed(_site_terms(guide_trace, True), shape, x.device)
        out.append(total)
    return torch.cat(out, dim=1)


@torch.no_grad()
def global_yardstick(model, guide, x_train: torch.Tensor, x_test: torch.Tensor | None,
                     global_sites: tuple[str, ...], *, local: bool,
                     num_samples: int, vectorize: bool = True) -> dict:
    """Mean nats per datapoint: ``train_log_likelihood`` (joint evidence / N),
    ``test_log_likelihood`` (posterior predictive), ``elbo`` (whole-data ELBO / N), and the
    ``log_likelihood_method`` used. ``vectorize=False``: draws one at a time."""
    outer = num_samples if not local else max(1, min(num_samples, 64))
    values, log_ratio = global_draws(model, guide, x_train, global_sites, outer,
                                     vectorize=vectorize)
    estimate, elbo_rows = row_log_likelihoods(model, guide, x_train, values, outer, local=local,
                                              vectorize=vectorize)
    joint = log_ratio + estimate.sum(1)
    num_data = x_train.shape[0]
    metrics = {
        "train_log_likelihood": float((torch.logsumexp(joint, 0) - math.log(outer)) / num_data),
        "elbo": float((log_ratio + elbo_rows.sum(1)).mean() / num_data),
        "log_likelihood_method": (f"iwae-nested-{outer}x{INNER_SAMPLES}" if local
                                  else f"iwae-joint-{outer}"),
        "test_log_likelihood": None,
        **diagnostics.summarize(joint).record(),  # one k̂: the joint estimate's weights
    }
    if x_test is not None and x_test.shape[0]:
        held_out, _ = row_log_likelihoods(model, guide, x_test, values, outer, local=local,
                                          vectorize=vectorize)
        predictive = torch.logsumexp(held_out, 0) - math.log(outer)
        metrics["test_log_likelihood"] = float(predictive.mean())
    return metrics
