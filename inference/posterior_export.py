"""Every fit's posterior as ArviZ ``InferenceData``; ArviZ summaries, the forest plot, and NUTS
as the reference posterior.

What a fit believes about the latents of a few chosen training rows is drawn from its guide (or,
for EM and the closed form, from the model's exact posterior ``spec.posterior`` at the fitted
parameters) and stored with ArviZ's groups:

    posterior        the local latent sites of the chosen rows, dims (chain, draw, row, <site>_dim)
                     (and the global latent sites of a Bayesian variant, drawn once per draw)
    log_likelihood   log p(x_n | z_n) per draw and training row (pointwise, nats)
    observed_data    those training rows
    sample_stats     the training curve: ``elbo`` per SVI step, or ``log_likelihood`` per EM
                     iteration, dims (chain, step)

:func:`save_inference_data` writes it as netCDF (``posterior.nc`` in the run folder, through
h5netcdf, which ArviZ itself depends on). :func:`nuts_reference` draws every continuous latent
with NUTS (``pyro.infer.MCMC``) given every training row, the fit's parameters held fixed
(the local latents of every row too: the posterior the fit approximates), its chains kept
apart so ArviZ's R-hat and ESS can be recomputed from ``posterior-nuts.nc``;
:func:`reference_distance` measures a fit's draws against it, row by row.
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import pyro
import pyro.infer
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask

from inference.evaluate import fitted
from inference.figures import plt, save_figure
from inference.nuts_reference import (  # noqa: F401  (re-exported: the NUTS reference)
    NUTS_FILE,
    NUTS_LOCAL_ROWS,
    NutsOptions,
    check_nuts_applies,
    convergence,
    gaussian_wasserstein,
    local_agreement,
    nuts_reference,
    nuts_sites,
    nuts_summary_line,
    reference_distance,
)
from inference.posterior_draws import (  # noqa: F401  (re-exported: the draws and their rows)
    CHOSEN_ROWS,
    POSTERIOR_ROWS,
    PosteriorDraws,
    chosen_rows,
    in_data_plate,
    latent_sites,
    posterior_rows,
)
from inference.results import FitResult
from inference.runs import atomic_write
from inference.sampling import (  # noqa: F401  (the NUTS defaults are re-exported)
    ESS_TARGET,
    NUTS_CHAINS,
    NUTS_SAMPLES,
    NUTS_WARMUP,
    R_HAT_TARGET,
    broadcasts_over_particles,
    own_random_stream,
    particle_traces,
)
from zoo.errors import InputError
from zoo.registry import DATA_PLATE, ModelSpec

with warnings.catch_warnings():  # ArviZ announces its refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az
import xarray as xr  # noqa: E402  (ArviZ's own dependency)

POSTERIOR_FILE = "posterior.nc"
DRAWS = 200  # posterior draws per fit
LOG_LIKELIHOOD_ROWS = 2000  # training rows of the pointwise log-likelihood, at most


def exact_posterior_guide(spec: ModelSpec, config, params):
    """A guide that draws the model's (single) local site from ``spec.posterior``: the
    posterior that EM and the closed form imply."""
    if spec.posterior is None or len(spec.local_sites) != 1:
        raise InputError(f"model '{spec.name}' has no exact posterior over one local site")
    site = spec.local_sites[0]

    def guide(x=None, *, num_data=None, subsample_size=None):
        with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                        device=x.device) as idx:
            pyro.sample(site, spec.posterior(config, params, x[idx]))
    return guide


def traced(model, guide, x: torch.Tensor, rows: torch.Tensor, num_draws: int, *,
           vectorize: bool | None = None):
    """``(guide_trace, model_trace)`` of ``num_draws`` particles (a plate at dim −2, or one
    draw at a time for a model that does not broadcast over it: ``vectorize``, ``None`` asks
    :func:`~inference.sampling.broadcasts_over_particles`) for the training rows ``rows``
    (the data plate's subsample site is conditioned on them). A local site the model marks
    for enumeration and the guide leaves alone is drawn from its exact conditional
    (``infer_discrete``), as ``TraceEnum_ELBO`` sums it out."""
    kwargs = {"num_data": x.shape[0], "subsample_size": rows.numel()}
    chosen = {DATA_PLATE: rows}
    with torch.no_grad(), poutine.block():
        if vectorize is None:
            vectorize = broadcasts_over_particles(model, guide, x)
        guide_trace = poutine.trace(poutine.condition(guide, chosen)).get_trace(x, **kwargs)
        wrapper = (partial(pyro.infer.infer_discrete, first_available_dim=-3)
                   if _leaves_enumerated_sites(model, guide_trace, x, kwargs, chosen) else None)
        return particle_traces(model, guide, x, rows, num_draws, vectorize=vectorize,
                               model_wrapper=wrapper)


def _leaves_enumerated_sites(model, guide_trace, x, kwargs, chosen) -> bool:
    trace = poutine.trace(poutine.condition(model, chosen)).get_trace(x, **kwargs)
    return any(site["type"] == "sample" and not site["is_observed"]
               and site["infer"].get("enumerate") and name not in guide_trace.nodes
               for name, site in trace.nodes.items())

def draw_posterior(spec: ModelSpec, config, result: FitResult, x: torch.Tensor, *,
                   rows: torch.Tensor, label: str, num_draws: int = DRAWS,
                   log_likelihood_rows: int = LOG_LIKELIHOOD_ROWS,
                   seed: int = 0) -> PosteriorDraws | None:
    """Draws of the fit's posterior over the latents of the training rows ``rows`` (from its
    guide, or from ``spec.posterior`` for a fit without one), and the pointwise
    log-likelihood of the first ``log_likelihood_rows`` training rows; ``None`` when the fit
    implies no posterior (no guide and no exact posterior)."""
    guide = result.guide if result.guide in spec.guides else None
    if guide is None and (spec.posterior is None or len(spec.local_sites) != 1):
        return None
    rows = rows.to(x.device)
    with own_random_stream(seed, x.device), fitted(
            spec, config, result.params, x, guide=guide,
            guide_params=result.guide_params) as (model, guide_fn):
        guide_fn = guide_fn or exact_posterior_guide(spec, config, result.params)
        vectorize = broadcasts_over_particles(model, guide_fn, x)
        _, model_trace = traced(model, guide_fn, x, rows, num_draws, vectorize=vectorize)
        local, globals_, discrete = {}, {}, set()
        for name, site in latent_sites(model_trace).items():
            value = site["value"].detach()
            if site["fn"].has_enumerate_support:
                discrete.add(name)
            if in_data_plate(site):
                local[name] = value.expand(num_draws, *value.shape[1:]).cpu()
            else:
                globals_[name] = value.reshape(num_draws, *value.shape[2:]).cpu() if (
                    value.dim() >= 2 and value.shape[1] == 1) else value.cpu()
        log_likelihood: dict[str, list[torch.Tensor]] = {}
        every = torch.arange(min(log_likelihood_rows, x.shape[0]), device=x.device)
        chunk = max(1, 2**22 // (num_draws * max(1, x[0].numel())))
        for block in every.split(chunk) if every.numel() else ():
            _, trace = traced(model, guide_fn, x, block, num_draws, vectorize=vectorize)
            trace.compute_log_prob()
            for name, site in trace.nodes.items():
                if site["type"] == "sample" and site["is_observed"] and in_data_plate(site):
                    value = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
                    log_likelihood.setdefault(name, []).append(
                        value.expand(num_draws, block.numel()).detach().cpu())
        # the observed sites are the data rows themselves (x[idx] inside the data plate)
        observed = {name: x[every].detach().cpu() for name in log_likelihood}
    return PosteriorDraws(
        label=label, rows=rows.cpu(), local=local, globals=globals_,
        discrete=frozenset(discrete),
        log_likelihood={k: torch.cat(v, dim=1) for k, v in log_likelihood.items()},
        observed=observed)


def to_inference_data(draws: PosteriorDraws, *, history: Mapping[str, list[float]] | None = None,
                      attrs: Mapping | None = None) -> az.InferenceData:
    """ArviZ ``InferenceData`` with posterior, log_likelihood, observed_data and (with a
    ``history``) sample_stats groups; ``attrs`` (strategy, seed, ...) go on every group."""
    attrs = {k: ("" if v is None else v if isinstance(v, (int, float, str))
                 and not isinstance(v, bool) else str(v))  # netCDF has no boolean
             for k, v in (attrs or {}).items()}
    rows = draws.rows.numpy()
    chains = draws.chains
    per_chain = draws.num_draws // chains
    variables = {}
    coords = {"chain": np.arange(chains), "draw": np.arange(per_chain), "row": rows}

    def by_chain(value: torch.Tensor) -> np.ndarray:  # (chains · draws, ...) -> (chains, draws)
        return value.reshape(chains, per_chain, *value.shape[1:]).numpy()
    for name, value in draws.local.items():
        array = by_chain(value)
        dims = ["chain", "draw", "row"] + [f"{name}_dim_{i}" for i in range(array.ndim - 3)]
        variables[name] = (dims, array)
    for name, value in draws.globals.items():
        array = by_chain(value)
        dims = ["chain", "draw"] + [f"{name}_dim_{i}" for i in range(array.ndim - 2)]
        variables[name] = (dims, array)
    groups = {"posterior": xr.Dataset(variables, coords=coords, attrs=attrs)}
    if draws.log_likelihood:
        groups["log_likelihood"] = xr.Dataset(
            {name: (["chain", "draw", "obs"], value.numpy()[None])
             for name, value in draws.log_likelihood.items()},
            coords={"chain": [0], "draw": np.arange(draws.num_draws)}, attrs=attrs)
        groups["observed_data"] = xr.Dataset(
            {name: (["obs", f"{name}_dim_0"], value.numpy())
             for name, value in draws.observed.items()}, attrs=attrs)
    if history:
        groups["sample_stats"] = xr.Dataset(
            {name: (["chain", "step"], np.asarray(values, dtype=float)[None])
             for name, values in history.items() if values}, coords={"chain": [0]},
            attrs=attrs)
    return az.InferenceData(**groups)


def save_inference_data(idata: az.InferenceData, path: str | Path) -> Path:
    """Write ``idata`` as netCDF (h5netcdf, each group compressed as ArviZ's ``to_netcdf``
    does) into memory, then the bytes atomically to ``path``: HDF5 ends the process
    (SIGSEGV) when a write of its own fails, so a full disk must fail in a plain write."""
    buffer = io.BytesIO()
    if not idata.groups():
        xr.Dataset().to_netcdf(buffer, engine="h5netcdf")
    for index, group in enumerate(idata.groups()):
        data = getattr(idata, group)
        encoding = {name: {"zlib": True} for name, values in data.variables.items()
                    if values.dtype.kind in "biuf"}
        data.to_netcdf(buffer, mode="w" if index == 0 else "a", group=group,
                       engine="h5netcdf", encoding=encoding)
    atomic_write(path, lambda file: file.write(buffer.getvalue()))
    return Path(path)


def load_inference_data(path: str | Path) -> az.InferenceData:
    """Read back what :func:`save_inference_data` wrote (fully loaded; the file is closed)."""
    idata = az.from_netcdf(str(path))
    for group in idata.groups():
        setattr(idata, group, getattr(idata, group).load())
    return idata


def restricted(draws: PosteriorDraws, rows: torch.Tensor) -> PosteriorDraws:
    """``draws`` with the local sites of the training rows ``rows`` only (those it has)."""
    position = {int(r): i for i, r in enumerate(draws.rows.tolist())}
    keep = [r for r in rows.tolist() if int(r) in position]
    index = torch.tensor([position[int(r)] for r in keep], dtype=torch.long)
    local = {name: value[:, index] for name, value in draws.local.items()}
    return dataclasses.replace(draws, rows=torch.tensor(keep, dtype=torch.long), local=local)


# ---------------------------------------------------------------------------------------------
# Aligning fits that differ by a symmetry, ArviZ summaries and the forest plot
# ---------------------------------------------------------------------------------------------


def procrustes_rotation(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The orthogonal ``R`` minimizing ‖source R − target‖ for ``(n, d)`` posterior means: a
    model with a N(0, I) prior and a linear first layer is unchanged by z → z R, so fits are
    compared in one coordinate system."""
    left, _, right_t = torch.linalg.svd(source.double().T @ target.double())
    return (left @ right_t).to(source.dtype)


def aligned(draws: PosteriorDraws, rotations: Mapping[str, torch.Tensor] | None = None,
            permutations: Mapping[str, torch.Tensor] | None = None) -> PosteriorDraws:
    """A copy of ``draws`` with continuous local sites rotated (``z R``) and discrete ones
    relabelled (``permutation[z]``)."""
    local = dict(draws.local)
    for name, rotation in (rotations or {}).items():
        if name in local:
            local[name] = local[name] @ rotation.to(local[name])
    for name, permutation in (permutations or {}).items():
        if name in local:
            local[name] = permutation.to(local[name].device)[local[name]]
    return dataclasses.replace(draws, local=local)


def summary(idata: az.InferenceData, var_names: list[str] | None = None):
    """ArviZ's summary (mean, sd, HDI; with ``kind="stats"``: a single chain has no R-hat) of
    the posterior group, as a pandas DataFrame."""
    return az.summary(idata, var_names=var_names, kind="stats", round_to=4)


def plot_forest(idatas: Mapping[str, az.InferenceData], path: str | Path, *, site: str,
                rows: list[int], max_dims: int = 4, title: str = "") -> Path:
    """``az.plot_forest`` of the site's posterior for the given rows, one colour per fit,
    side by side (94% HDI and interquartile range)."""
    first = next(iter(idatas.values())).posterior[site]
    coords = {"row": rows}
    extra = [d for d in first.dims if d not in ("chain", "draw", "row")]
    if extra:
        coords[extra[0]] = list(range(min(max_dims, first.sizes[extra[0]])))
    lines = len(rows) * (len(coords[extra[0]]) if extra else 1)
    height = 1.0 + 0.22 * lines * len(idatas)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_forest(list(idatas.values()), model_names=list(idatas), var_names=[site],
                              coords=coords, combined=True, hdi_prob=0.94,
                              colors=_paired_colours(list(idatas)),
                              figsize=(7.5, min(max(height, 3.0), 24.0)))
    ax = np.ravel(axes)[0]
    legend = ax.get_legend()
    if legend is not None:  # beside the axis, in the order of the intervals
        handles = list(legend.legend_handles)
        labels = [text.get_text() for text in legend.get_texts()]
        legend.remove()
        ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
    if title:  # in place of ArviZ's "94.0% HDI" heading
        ax.set_title(f"{title}\n(94% HDI, interquartile range, mean)", fontsize=10)
    return save_figure(ax.figure, path)


def _paired_colours(labels: list[str]) -> list:
    """One hue per fit; a fit's NUTS reference (the label after it, "nuts (...)") gets the
    light shade of the same hue."""
    palette = plt.get_cmap("tab20").colors
    colours, hue = [], -1
    for label in labels:
        if not label.startswith("nuts ("):
            hue += 1
            colours.append(palette[(2 * hue) % 20])
        else:
            colours.append(palette[(2 * hue + 1) % 20])
    return colours


def plot_posteriors(draws: Mapping[str, PosteriorDraws], path: str | Path, *, site: str,
                    max_rows: int = 4, title: str = "") -> Path:
    """Posterior comparison for the chosen rows, one panel per row: for a continuous site,
    the 2-σ ellipse of each fit in the first two latent dimensions (a mean-field guide's is
    axis-aligned); for a discrete site, q(z = k) of each fit as grouped bars."""
    first = next(iter(draws.values()))
    count = min(max_rows, first.rows.numel())
    fig, axes = plt.subplots(1, count, figsize=(3.4 * count, 3.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    discrete = site in first.discrete
    for i, ax in enumerate(axes[0]):
        for j, (label, d) in enumerate(draws.items()):
            value = d.local[site][:, i]
            colour = colours[j % len(colours)]
            if discrete:
                categories = int(max(v.local[site].max() for v in draws.values())) + 1
                probs = torch.bincount(value.long().flatten(), minlength=categories).double()
                probs = probs / probs.sum()
                width = 0.8 / len(draws)
                ax.bar(np.arange(categories) + (j - (len(draws) - 1) / 2) * width,
                       probs.numpy(), width=width, color=colour, label=label)
                ax.set_xticks(np.arange(categories))
                ax.set_xlabel(f"{site}: component (labels matched)")
                ax.set_ylabel("q(z = k | x)" if i == 0 else "")
                ax.set_ylim(0, 1.05)
            else:
                value = value.reshape(value.shape[0], -1).double()
                _ellipse(ax, value[:, : min(2, value.shape[1])], colour, label, j)
                ax.set_xlabel(f"{site}[0] (aligned)")
                ax.set_ylabel(f"{site}[1]" if value.shape[1] > 1 else "")
                if value.shape[1] == 1:
                    ax.set_yticks([])
                    ax.set_ylim(-1, len(draws))
        ax.set_title(f"training row {int(first.rows[i])}", fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()  # beside the panels, off the bars
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _ellipse(ax, value: torch.Tensor, colour, label: str, index: int) -> None:
    """The 2-σ ellipse of ``value : (S, 2)``; for one dimension, mean ± 2σ at height index."""
    mean = value.mean(0)
    if value.shape[1] == 1:
        std = value[:, 0].std()
        ax.errorbar([float(mean[0])], [index], xerr=[2 * float(std)], fmt="o", color=colour,
                    label=label, capsize=3)
        return
    cov = torch.cov(value.T)
    values, vectors = torch.linalg.eigh(cov)
    angle = torch.linspace(0, 2 * math.pi, 100, dtype=value.dtype)
    circle = torch.stack([angle.cos(), angle.sin()], 1)
    curve = mean + 2 * (circle * values.clamp_min(0).sqrt()) @ vectors.T
    ax.plot(curve[:, 0].numpy(), curve[:, 1].numpy(), color=colour, lw=1.4, label=label)
    ax.plot([float(mean[0])], [float(mean[1])], "o", color=colour, ms=3)
