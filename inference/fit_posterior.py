"""A fit's posterior over a Bayesian model's global latents, and its NUTS reference.

For a model with global latent sites (``spec.global_sites``) and a fit with a guide,
:func:`global_posterior` draws the guide's posterior (ArviZ ``InferenceData``) and
:func:`nuts_check` runs NUTS on every training row at the fit's parameters beside it. ArviZ
(through :mod:`inference.posterior_export`) is imported here only when a draw is asked for,
so a command that needs neither never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inference.results import FitResult
from zoo.errors import InputError
from zoo.registry import ModelSpec

DRAWS = 200  # posterior draws per fit (posterior_export.DRAWS)


@dataclass(frozen=True)
class NutsCheck:
    """``fit --reference nuts``: per site the NUTS mean and sd and the fit's mean
    (``summary``, with R-hat / ESS / divergences) and the draws themselves (``draws``)."""

    summary: dict
    draws: object  # posterior_export.PosteriorDraws


def global_posterior(spec: ModelSpec, config, result: FitResult, x: torch.Tensor, *,
                     seed: int, streamed: bool = False, num_draws: int = DRAWS):
    """ArviZ InferenceData of the fit's posterior over the model's global latent sites (and
    the local ones of every training row, or of ``posterior_export.POSTERIOR_ROWS`` rows
    drawn by ``seed`` beyond that: attrs ``rows_exported`` of ``rows_of``), or ``None`` for
    a model without global latents, a fit without a guide, or streamed rows.
    ``export.summary(idata)`` gives mean, sd and HDI."""
    if not spec.global_sites or result.guide is None or streamed:
        return None
    from inference import posterior_export as export

    rows = export.posterior_rows(x.shape[0], seed=seed)  # every row, up to POSTERIOR_ROWS
    draws = export.draw_posterior(spec, config, result, x, rows=rows,
                                  label=f"{result.inference} {result.guide}",
                                  num_draws=num_draws, seed=seed)
    if draws is None:
        return None
    return export.to_inference_data(draws, history=result.history,
                                    attrs={"model": spec.name, "guide": result.guide,
                                           "seed": seed, "rows_exported": rows.numel(),
                                           "rows_of": x.shape[0]})


def posterior_summary(spec: ModelSpec, idata) -> list[dict]:
    """Mean, sd and the 94% HDI per global site, one dict each (what the record holds)."""
    from inference import posterior_export as export

    return export.summary(idata, var_names=list(spec.global_sites)).reset_index(
        names="site").to_dict("records")


def check_nuts_reference(spec: ModelSpec) -> None:
    """``fit --reference nuts`` needs latents; say so before any work (a model whose latents
    are all discrete is refused once its config is known, before training)."""
    if not spec.global_sites and not spec.local_sites:
        raise InputError(f"--reference nuts: model '{spec.name}' declares no latent site for "
                         "NUTS to sample; declare them (local_sites=..., global_sites=...)")


def nuts_check(spec: ModelSpec, config, result: FitResult, x: torch.Tensor, *, seed: int,
               posterior=None, num_samples: int | None = None,
               warmup_steps: int | None = None, num_chains: int | None = None) -> NutsCheck:
    """NUTS draws of a fitted Bayesian model's latents given every training row (the local
    latents of every row too; the model's parameters held at the fit's), beside the fit's own
    ``posterior`` (its InferenceData, or ``None``): per global site the NUTS mean and sd and
    the fit's mean, and R-hat / bulk and tail ESS over the chains against their targets
    (``posterior_export.convergence``). ``None`` options take posterior_export's defaults."""
    from inference import posterior_export as export

    check_nuts_reference(spec)
    options = export.NutsOptions.make(num_samples, warmup_steps, num_chains)
    reference = export.nuts_reference(
        spec, config, result, x, num_samples=options.samples, warmup_steps=options.warmup,
        num_chains=options.chains, seed=seed, label="nuts")
    sites = []
    for name, values in reference.globals.items():
        draws = values.double()
        own = (torch.as_tensor(posterior.posterior[name].values).double().reshape(
            -1, *draws.shape[1:]).mean(0) if posterior is not None and name in posterior.posterior
            else None)
        sites.append({"site": name, "nuts_mean": draws.mean(0).tolist(),
                      "nuts_sd": draws.std(0).tolist(),
                      "fit_mean": None if own is None else own.tolist()})
    local = [export.local_agreement(name, values, reference.rows, posterior)
             for name, values in reference.local.items()]
    return NutsCheck({"sites": sites, "local_sites": local, **reference.diagnostics},
                     reference)


def write_posteriors(path, spec: ModelSpec, posterior, nuts: NutsCheck | None) -> bool:
    """posterior.nc (``posterior``) and posterior-nuts.nc (``nuts``) into the folder
    ``path``; returns whether posterior.nc was written."""
    if posterior is None and nuts is None:
        return False
    from inference import posterior_export as export

    if nuts is not None:
        export.save_inference_data(export.to_inference_data(nuts.draws, attrs={
            "model": spec.name, "reference": "nuts", **nuts.draws.diagnostics}),
            path / export.NUTS_FILE)
    if posterior is not None:
        export.save_inference_data(posterior, path / export.POSTERIOR_FILE)
    return posterior is not None
