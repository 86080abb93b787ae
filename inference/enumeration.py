"""Discrete local latents summed out of the yardstick's log-weights (Pyro's enumeration and
tensor contraction), for :mod:`inference.evaluate`.

:func:`enumerable_sites` says which discrete sites inside the data plate can be summed out
exactly for every row; :func:`summed_out_log_weights` gives log Σ_c p(x_n, c, z) − log q(z | x_n)
with the guide drawing only the continuous sites (exact log p(x_n) when there are none), the
sum contracted per row as ``TraceEnum_ELBO`` contracts it. :func:`site_log_prob` is the
per-row log-density of a trace that both kinds of log-weights take.
"""

from __future__ import annotations

from collections import OrderedDict

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.subsample_messenger import _Subsample

from inference.sampling import one_draw, particle_traces
from zoo.registry import DATA_PLATE

ENUM_DIM = -3  # the first dimension enumeration may use: left of the particle and data plates


def _enumerated(fn):
    return poutine.enum(pyro.infer.config_enumerate(fn), first_available_dim=ENUM_DIM)


def enumerable_sites(model, guide, x: torch.Tensor) -> tuple[tuple[str, ...], bool]:
    """The discrete latent sites inside the data plate that the yardstick can sum out exactly
    for every row: finite support, and either the model has no continuous local site or the
    guide leaves the discrete ones to the model (as an enumerating guide does). A guide that
    draws the continuous sites given a drawn discrete one gives no proposal density of the
    continuous sites alone, so there the discrete ones stay importance-sampled. Empty when
    the model has global latents (they are judged jointly) or a site is not enumerable; and
    whether the model has continuous local sites (``False``: the sum is exact log p(x_n))."""
    rows = torch.arange(min(2, x.shape[0]), device=x.device)
    kwargs = {"num_data": x.shape[0], "subsample_size": rows.numel()}
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(poutine.condition(model, {DATA_PLATE: rows})).get_trace(x, **kwargs)
        guided = set() if guide is None else set(poutine.trace(poutine.condition(
            guide, {DATA_PLATE: rows})).get_trace(x, **kwargs).nodes)
    latent = {name: site for name, site in trace.nodes.items() if site["type"] == "sample"
              and not site["is_observed"] and not isinstance(site["fn"], _Subsample)}
    local = {name for name, site in latent.items()
             if any(f.name == DATA_PLATE for f in site["cond_indep_stack"])}
    discrete = {name for name in local if latent[name]["fn"].has_enumerate_support}
    continuous = local - discrete
    if local != set(latent) or not discrete or (continuous and discrete & guided):
        return (), True  # global latents are judged jointly (or nested)
    return tuple(name for name in latent if name in discrete), bool(continuous)


def summed_out_log_weights(model, guide, x, rows, num_samples, grad, vectorize):
    """``(K, n)``: log Σ_c p(x_n, c, z_k) − log q(z_k | x_n), the guide's draws z_k of the
    continuous sites, the discrete sites c enumerated in the model and contracted per row."""
    with torch.set_grad_enabled(grad), poutine.block():
        kwargs = {"num_data": x.shape[0], "subsample_size": rows.numel()}
        out = []
        for count in [num_samples] if vectorize else [1] * num_samples:
            if vectorize:
                guide_trace, model_trace = particle_traces(
                    model, guide, x, rows, count, model_wrapper=_enumerated)
            else:  # one draw, no particle plate
                guide_trace, model_trace = one_draw(model, guide, x, kwargs, {DATA_PLATE: rows},
                                                    model_wrapper=_enumerated)
            log_p = _per_row_contraction(model_trace).reshape(-1, rows.numel())
            log_q = 0.0 if guide_trace is None else site_log_prob(
                guide_trace, count, rows.numel())
            out.append(log_p.expand(count, rows.numel()) - log_q)
        return torch.cat(out, 0)


def _per_row_contraction(trace) -> torch.Tensor:
    """log Σ over the enumerated sites of the product of every factor in the data plate, per
    particle and row (``pyro.ops.contract.contract_to_tensor`` in the log ring, as
    ``TraceEnum_ELBO`` contracts): shaped as the particle and data plates, unscaled."""
    trace.compute_log_prob()
    trace.pack_tensors()
    symbols = trace.plate_to_symbol
    tree, enum_dims = OrderedDict(), set()
    for site in trace.nodes.values():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        ordinal = frozenset(symbols[f.name] for f in site["cond_indep_stack"] if f.vectorized)
        if symbols[DATA_PLATE] not in ordinal:
            continue
        term = packed.scale_and_mask(site["packed"]["unscaled_log_prob"],
                                     mask=site["packed"]["mask"])
        tree.setdefault(ordinal, []).append(term)
        if site["infer"].get("_enumerate_dim") is not None:
            enum_dims |= set(term._pyro_dims)
    enum_dims -= set(symbols.values())
    present = set().union(*(set(t._pyro_dims) for terms in tree.values() for t in terms))
    target = frozenset(symbols[name] for name in ("particles", DATA_PLATE)
                       if name in symbols and symbols[name] in present)
    result = contract_to_tensor(tree, enum_dims, target_ordinal=target, ring=LogRing())
    return packed.unpack(result, trace.symbol_to_dim)


def site_log_prob(trace, num_samples, num_rows) -> torch.Tensor:
    trace.compute_log_prob()
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample" and site["name"] != DATA_PLATE and "log_prob" in site:
            # log p(x_n, z) − log q(z | x_n) per row: without the plate's N/B subsample scale
            # (rows come in chunks) and without a poutine.scale such as the β-VAE's KL weight
            total = total + scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
    return torch.as_tensor(total).expand(num_samples, num_rows)
