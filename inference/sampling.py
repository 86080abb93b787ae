"""Three habits every Monte Carlo figure here shares: draws vectorized in a particle plate, a
loop over the draws for a model that does not broadcast over that plate, and a random stream
of their own so that the same files give the same numbers.

**The particle plate.** The yardstick draws K importance samples at once in
``pyro.plate("particles", K, dim=-2)``, outside the data plate: a local latent of event shape
(D,) has shape (K, B, D) for B rows, a global latent (K, 1, D). A model written for one draw
(``x @ beta`` with ``beta : (D,)``) breaks there, or worse, silently mixes the draws.
:func:`broadcasts_over_particles` finds out before any figure is computed by comparing the
model's log-density of the same draws computed both ways, and :func:`particle_traces` then
draws one particle at a time (:func:`looped_traces`): slower, same numbers.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.subsample_messenger import _Subsample

from zoo.registry import DATA_PLATE
from zoo.seeding import own_random_stream  # also re-exported: one idiom

# NUTS (posterior_export.nuts_reference): four chains of 500 warm-up steps and 500 draws,
# judged against R-hat <= 1.01 and a bulk and tail ESS >= 400 (Vehtari et al. 2021). Two
# chains of 300 gave bulk ESS ~90 and R-hat > 1.01 on small models; 4 x 500 on an eight-group
# hierarchical model (10 latents) gave R-hat 1.003, bulk ESS 850, tail ESS 690, no divergence,
# in 190 s on one CPU core. Here, not beside NUTS, so the flags need not import ArviZ.
NUTS_SAMPLES, NUTS_WARMUP, NUTS_CHAINS = 500, 500, 4
R_HAT_TARGET, ESS_TARGET = 1.01, 400

PROBE_ROWS = 3  # rows and particles of the broadcasting probe
PROBE_PARTICLES = 2
LOOP_NOTE = ("the model does not broadcast over the yardstick's particle dimension (a global "
             "latent of event shape (D,) arrives as (K, 1, D)), so importance samples are drawn "
             "one at a time (slower, same figures); see docs/your-own-model.md")


def vectorized(fn, num_particles: int):
    """``fn`` run with ``num_particles`` independent draws at once, in a plate at dim −2
    (outside the data plate)."""
    def wrapped(*args, **kwargs):
        with pyro.plate("particles", num_particles, dim=-2):
            return fn(*args, **kwargs)
    return wrapped


def _sample_sites(trace):
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not isinstance(site["fn"], _Subsample)}


def one_draw(model, guide, x, kwargs, condition, model_wrapper=None):
    """``(guide_trace, model_trace)`` of one draw, no particle plate; ``condition`` holds the
    data plate's rows (``"data"``) and any site fixed in the model."""
    model_fn = poutine.condition(model, condition)
    if model_wrapper is not None:
        model_fn = model_wrapper(model_fn)
    if guide is None:
        return None, poutine.trace(model_fn).get_trace(x, **kwargs)
    rows = {DATA_PLATE: condition[DATA_PLATE]}  # the guide sees the rows only, as when vectorized
    guide_trace = poutine.trace(poutine.condition(guide, rows)).get_trace(x, **kwargs)
    model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(
        x, **kwargs)
    return guide_trace, model_trace


def _as_particles(tensor: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """One draw's batch-shaped tensor as the particle plate would shape it: a leading
    singleton where the draw has no batch dimension (a global site: () -> (1,))."""
    return tensor.unsqueeze(0) if batch_dims == 0 else tensor


def stacked(traces: list) -> pyro.poutine.Trace:
    """One trace standing for ``len(traces)`` single-draw traces, shaped as the particle plate
    would shape them: each sample site's value ``(K, *shape)`` (a global site ``(K, 1, *event)``)
    and its ``unscaled_log_prob`` / ``log_prob`` ``(K, *batch)`` (a global site ``(K, 1)``),
    the mask folded in. ``compute_log_prob`` leaves them as they are."""
    first = traces[0]
    merged = first.copy()
    for trace in traces:
        trace.compute_log_prob()
    for name, site in _sample_sites(first).items():
        copies = [trace.nodes[name] for trace in traces]
        batch_dims = len(site["fn"].batch_shape)
        node = dict(site)
        node["value"] = torch.stack([_as_particles(c["value"], batch_dims) if batch_dims == 0
                                     else c["value"] for c in copies])
        unscaled = torch.stack([_as_particles(scale_and_mask(
            c["unscaled_log_prob"], mask=c["mask"]), batch_dims) for c in copies])
        node["unscaled_log_prob"] = unscaled
        node["log_prob"] = unscaled if site["scale"] == 1.0 else unscaled * site["scale"]
        node["log_prob_sum"] = node["log_prob"].sum()
        node["mask"] = None
        merged.nodes[name] = node
    return merged


def looped_traces(model, guide, x: torch.Tensor, rows: torch.Tensor, num_samples: int, *,
                  condition: dict | None = None, model_wrapper=None):
    """``(guide_trace, model_trace)`` of ``num_samples`` draws taken one at a time, stacked
    (:func:`stacked`) into the shapes of the particle plate. ``condition`` fixes sites to the
    same values in every draw."""
    kwargs = {"num_data": x.shape[0], "subsample_size": rows.numel()}
    fixed = {DATA_PLATE: rows, **(condition or {})}
    guides, models = [], []
    for _ in range(num_samples):
        guide_trace, model_trace = one_draw(model, guide, x, kwargs, fixed, model_wrapper)
        guides.append(guide_trace)
        models.append(model_trace)
    return (None if guide is None else stacked(guides)), stacked(models)


def particle_traces(model, guide, x: torch.Tensor, rows: torch.Tensor, num_samples: int, *,
                    vectorize: bool = True, condition: dict | None = None, model_wrapper=None):
    """``(guide_trace, model_trace)`` of ``num_samples`` draws for the training rows ``rows``
    (the data plate's subsample site conditioned on them): in the particle plate at dim −2
    when ``vectorize``, else one draw at a time (:func:`looped_traces`). The caller picks the
    grad mode and blocks the traces from outer handlers."""
    if not vectorize:
        return looped_traces(model, guide, x, rows, num_samples, condition=condition,
                             model_wrapper=model_wrapper)
    kwargs = {"num_data": x.shape[0], "subsample_size": rows.numel()}
    fixed = {DATA_PLATE: rows, **(condition or {})}

    def particles(fn):
        return vectorized(fn, num_samples)
    model_fn = poutine.condition(particles(model), fixed)
    if model_wrapper is not None:
        model_fn = model_wrapper(model_fn)
    if guide is None:
        return None, poutine.trace(model_fn).get_trace(x, **kwargs)
    guide_trace = poutine.trace(poutine.condition(particles(guide), {DATA_PLATE: rows})).get_trace(
        x, **kwargs)
    model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(
        x, **kwargs)
    return guide_trace, model_trace


def _model_log_density(trace, num_samples: int, num_rows: int) -> torch.Tensor:
    """``(K, rows)``: each row's log p of its sites plus, once per row, the global sites'."""
    trace.compute_log_prob()
    total = torch.zeros(num_samples, num_rows, dtype=torch.float64)
    for site in _sample_sites(trace).values():
        term = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"]).double().cpu()
        while term.dim() > 2:  # a plate nested in the data plate
            term = term.sum(-1)
        total = total + term  # a global site's (K, 1) once per row
    return total


def broadcasts_over_particles(model, guide, x: torch.Tensor) -> bool:
    """Whether the yardstick may vectorize ``model`` (with ``guide``) over its particle plate:
    draws taken one at a time are scored again by the vectorized model (every latent site
    conditioned on them); ``False`` when that raises or gives other numbers (a model that
    mixes the draws). The guide's vectorized run must raise nothing. Costs a few runs of
    model and guide on :data:`PROBE_ROWS` rows."""
    rows = torch.arange(min(PROBE_ROWS, x.shape[0]), device=x.device)
    kwargs = {"num_data": x.shape[0], "subsample_size": rows.numel()}
    # the probe's draws come from a fork of the caller's stream, which goes on as if the probe
    # had not run: a yardstick gives the same numbers whether or not it probed first
    with own_random_stream(None, x.device), torch.no_grad(), poutine.block():
        try:
            guide_trace, looped = looped_traces(model, guide, x, rows, PROBE_PARTICLES)
        except Exception:  # a model that fails even one draw at a time: its own error later
            return True
        latents = {name: site["value"] for name, site in _sample_sites(looped).items()
                   if not site["is_observed"]}
        expected = _model_log_density(looped, PROBE_PARTICLES, rows.numel())
        try:
            if guide is not None:
                trace = poutine.trace(poutine.condition(vectorized(guide, PROBE_PARTICLES),
                                                        {DATA_PLATE: rows})).get_trace(x, **kwargs)
                trace.compute_log_prob()
            model_fn = poutine.condition(vectorized(model, PROBE_PARTICLES),
                                         {DATA_PLATE: rows, **latents})
            trace = poutine.trace(model_fn).get_trace(x, **kwargs)
            found = _model_log_density(trace, PROBE_PARTICLES, rows.numel())
        except Exception:  # e.g. x @ beta with beta : (K, 1, D)
            return False
    if found.shape != expected.shape:
        return False
    scale = expected.abs().max().clamp_min(1.0)
    return bool(torch.allclose(found, expected, rtol=1e-4, atol=1e-4 * float(scale)))
