"""NUTS as the reference posterior: :func:`nuts_reference` draws every continuous latent with
NUTS (``pyro.infer.MCMC``) given the training rows, the fit's parameters held fixed (the local
latents of every row too: the posterior the fit approximates), its chains kept apart so
ArviZ's R-hat and ESS (:func:`convergence`) can be recomputed from ``posterior-nuts.nc``;
:func:`nuts_summary_line` is the record's line on them. :func:`reference_distance` and
:func:`local_agreement` measure a fit's draws against the reference, row by row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.infer
import torch
from pyro import poutine

from inference.evaluate import fitted
from inference.posterior_draws import PosteriorDraws, chosen_rows, in_data_plate, latent_sites
from inference.results import FitResult
from inference.sampling import (
    ESS_TARGET,
    NUTS_CHAINS,
    NUTS_SAMPLES,
    NUTS_WARMUP,
    R_HAT_TARGET,
    own_random_stream,
)
from zoo.errors import InputError
from zoo.registry import ModelSpec

with warnings.catch_warnings():  # ArviZ announces its refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

NUTS_FILE = "posterior-nuts.nc"
# NUTS's step-size adaptation aims at this acceptance (Pyro's and Stan's default: 0.8): a
# reference takes smaller steps, as Stan users set adapt_delta for hierarchical models,
# whose funnels give divergent transitions (and a biased reference) at 0.8
TARGET_ACCEPT = 0.9
NUTS_LOCAL_ROWS = 1000  # rows NUTS samples for a model without global latents, at most


@dataclass(frozen=True)
class NutsOptions:
    """What ``--nuts-samples``, ``--nuts-warmup`` and ``--nuts-chains`` set (the API's
    ``nuts_samples``, ``nuts_warmup``, ``nuts_chains``), with the targets the record reports
    R-hat and ESS against; ``None`` takes the default."""

    samples: int = NUTS_SAMPLES
    warmup: int = NUTS_WARMUP
    chains: int = NUTS_CHAINS

    @classmethod
    def make(cls, samples: int | None = None, warmup: int | None = None,
             chains: int | None = None) -> NutsOptions:
        """Validated options: each a positive integer (warm-up may be 0), else an InputError
        naming the flag."""
        values = {"samples": NUTS_SAMPLES if samples is None else samples,
                  "warmup": NUTS_WARMUP if warmup is None else warmup,
                  "chains": NUTS_CHAINS if chains is None else chains}
        for name, value in values.items():
            least = 0 if name == "warmup" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(f"--nuts-{name} {value!r} must be an integer of at least "
                                 f"{least}")
        return cls(**values)


def nuts_reference(spec: ModelSpec, config, result: FitResult, x: torch.Tensor, *,
                   rows: torch.Tensor | None = None, num_samples: int = NUTS_SAMPLES,
                   warmup_steps: int = NUTS_WARMUP, num_chains: int = NUTS_CHAINS,
                   seed: int = 0, label: str = "nuts",
                   max_local_rows: int = NUTS_LOCAL_ROWS) -> PosteriorDraws:
    """NUTS draws of every continuous latent of the model, the fit's parameters held fixed:
    the reference posterior the fit approximates.

    A model with global latents is conditioned on every training row and every row's local
    latents are sampled with the globals (p(θ, z_1..N | X)). Without global latents the rows
    are independent given the parameters, p(z | X, θ̂) = Π_n p(z_n | x_n, θ̂), so NUTS on a
    subset of rows is exact for those rows: every row up to ``max_local_rows``, beyond that
    that many rows drawn by ``seed`` plus ``rows`` (the rows a comparison shows). Discrete
    latents are summed out by enumeration. ``num_chains`` chains run one after another from
    their own seeds (Pyro's JIT-compiled potential where the model traces, its plain one
    otherwise) and stay apart (:attr:`PosteriorDraws.chains`); the diagnostics hold ArviZ's
    largest R-hat and smallest bulk and tail ESS over every scalar, the targets
    (R-hat <= 1.01, ESS >= 400) and whether they are met, the divergences and the acceptance
    rate. Raises :class:`InputError` when the model has no continuous latent."""
    NutsOptions.make(num_samples, warmup_steps, num_chains)  # the flags' errors
    num_rows = x.shape[0]
    if spec.global_sites or num_rows <= max_local_rows:
        used = torch.arange(num_rows)
    else:
        extra = torch.empty(0, dtype=torch.long) if rows is None else rows.cpu().long()
        used = torch.cat([chosen_rows(num_rows, count=max_local_rows, seed=seed), extra]
                         ).unique(sorted=True)
    subset = x if used.numel() == num_rows else x[used.to(x.device)]
    chains, divergences, acceptance = [], 0, []
    with own_random_stream(seed, x.device), fitted(
            spec, config, result.params, subset) as (model, _):
        latents, continuous = nuts_sites(spec, model, subset)
        for chain in range(num_chains):
            pyro.set_rng_seed(seed + chain)
            mcmc = _run_nuts(model, subset, num_samples, warmup_steps)
            chains.append({n: v.detach().cpu() for n, v in mcmc.get_samples().items()})
            diagnostics = mcmc.diagnostics()
            divergences += int(sum(len(v) for v in diagnostics.get("divergences", {}).values()))
            acceptance += list(diagnostics.get("acceptance rate", {0: math.nan}).values())
    stacked = {n: torch.stack([c[n] for c in chains]) for n in continuous}  # (chains, draws, ...)
    draws = {n: v.reshape(-1, *v.shape[2:]) for n, v in stacked.items()}
    checks = {"divergences": divergences, "acceptance_rate": float(np.mean(acceptance)),
              "chains": num_chains, "samples_per_chain": num_samples,
              "warmup_steps": warmup_steps, "rows": int(used.numel()), "rows_of": num_rows,
              **convergence(stacked)}
    local = {n: draws[n] for n in continuous if in_data_plate(latents[n])}
    globals_ = {n: draws[n] for n in continuous if not in_data_plate(latents[n])}
    return PosteriorDraws(label=label, rows=used, local=local, globals=globals_,
                          diagnostics=checks, chains=num_chains)


def convergence(stacked: Mapping[str, torch.Tensor], *, r_hat_target: float = R_HAT_TARGET,
                ess_target: float = ESS_TARGET) -> dict:
    """ArviZ's rank-normalized split R-hat and bulk / tail ESS of draws ``(chains, draws,
    ...)`` per site: the largest R-hat and smallest ESS over every scalar, the site where each
    is worst, the targets, and ``meets_targets``. One chain has no R-hat (``None``)."""
    dataset = az.convert_to_dataset({n: v.double().numpy() for n, v in stacked.items()})
    chains = next(iter(stacked.values())).shape[0]
    out = {"r_hat_target": r_hat_target, "ess_target": ess_target}
    worst = {}
    if chains > 1:
        r_hat = az.rhat(dataset)
        worst["r_hat"] = max((float(r_hat[n].max()), n) for n in r_hat.data_vars)
    for method in ("bulk", "tail"):
        ess = az.ess(dataset, method=method)
        worst[f"ess_{method}"] = min((float(ess[n].min()), n) for n in ess.data_vars)
    out["r_hat_max"], out["r_hat_site"] = worst.get("r_hat", (None, None))
    out["ess_bulk_min"], out["ess_bulk_site"] = worst["ess_bulk"]
    out["ess_tail_min"], out["ess_tail_site"] = worst["ess_tail"]
    out["meets_targets"] = bool(
        out["r_hat_max"] is not None and out["r_hat_max"] <= r_hat_target
        and min(out["ess_bulk_min"], out["ess_tail_min"]) >= ess_target)
    return out


def nuts_summary_line(diagnostics: Mapping) -> str:
    """One line for the record's reader: R-hat and ESS against their targets."""
    r_hat = diagnostics.get("r_hat_max")
    text = (f"NUTS reference ({diagnostics['chains']} chains x "
            f"{diagnostics.get('samples_per_chain', '?')} draws, {diagnostics.get('rows', '?')} "
            f"rows): R-hat at most {'n/a' if r_hat is None else f'{r_hat:.4f}'} (target "
            f"<= {diagnostics.get('r_hat_target', R_HAT_TARGET)}), bulk ESS at least "
            f"{diagnostics['ess_bulk_min']:.0f}, tail ESS at least "
            f"{diagnostics.get('ess_tail_min', math.nan):.0f} (target >= "
            f"{diagnostics.get('ess_target', ESS_TARGET)}), {diagnostics['divergences']} "
            "divergences")
    if not diagnostics.get("meets_targets", True):
        text += "; targets NOT met: raise --nuts-warmup / --nuts-samples / --nuts-chains"
    return text


def local_agreement(name: str, values: torch.Tensor, rows: torch.Tensor, idata) -> dict:
    """How a fit's posterior (``idata``, :func:`to_inference_data`) of the local site ``name``
    agrees with NUTS draws ``values : (S, rows, ...)`` of the training rows ``rows``, over the
    rows both hold: the largest |fit mean − NUTS mean| / NUTS sd and the largest
    |log(fit sd / NUTS sd)| over every row and dimension (``None`` without the fit's)."""
    out = {"site": name, "rows": int(rows.numel()), "max_mean_error_in_sd": None,
           "max_abs_log_sd_ratio": None}
    if idata is None or name not in idata.posterior:
        return out
    ours = idata.posterior[name]
    common = [int(r) for r in rows.tolist() if int(r) in set(ours.coords["row"].values.tolist())]
    if not common:
        return out
    position = {int(r): i for i, r in enumerate(rows.tolist())}
    reference = values[:, [position[r] for r in common]].double()
    fit = torch.as_tensor(ours.sel(row=common).values).double()
    fit = fit.reshape(-1, *fit.shape[2:])
    sd = reference.std(0).clamp_min(1e-12)
    out["rows_compared"] = len(common)
    out["max_mean_error_in_sd"] = float(((fit.mean(0) - reference.mean(0)).abs() / sd).max())
    out["max_abs_log_sd_ratio"] = float((fit.std(0).clamp_min(1e-12) / sd).log().abs().max())
    return out


def _run_nuts(model, x: torch.Tensor, num_samples: int, warmup_steps: int):
    """One NUTS chain, with the JIT-compiled potential when the model traces cleanly."""
    def chain(jit: bool):
        kernel = pyro.infer.NUTS(pyro.infer.config_enumerate(model), max_plate_nesting=1,
                                 jit_compile=jit, ignore_jit_warnings=True,
                                 target_accept_prob=TARGET_ACCEPT)
        mcmc = pyro.infer.MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                               num_chains=1, disable_progbar=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            mcmc.run(x)
        return mcmc

    try:
        return chain(jit=True)
    except (RuntimeError, TypeError, torch.jit.Error):  # a model that does not trace
        return chain(jit=False)


def nuts_sites(spec: ModelSpec, model, x: torch.Tensor) -> tuple[dict, list[str]]:
    """The model's latent sites on ``x`` and the continuous ones NUTS samples; raises
    :class:`InputError` when there is none."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(x)
    latents = latent_sites(trace)
    continuous = [n for n, s in latents.items() if not s["fn"].has_enumerate_support]
    if not continuous:
        raise InputError(
            f"--reference nuts: model '{spec.name}' has no continuous latent variable to "
            f"sample (its latents {', '.join(latents) or '(none)'} are discrete and summed out "
            "exactly; its parameters are point estimates, priors included), so its exact "
            "posterior is already the reference; use --reference nuts with a model with "
            "continuous latents (ppca, fa, dglvm)")
    return latents, continuous


def check_nuts_applies(spec: ModelSpec, config, x: torch.Tensor) -> None:
    """Raise :class:`InputError` before any fit when NUTS would have nothing to sample."""
    with pyro.get_param_store().scope():
        nuts_sites(spec, spec.make_model(config), x[:2])


def gaussian_wasserstein(a: torch.Tensor, b: torch.Tensor) -> float:
    """2-Wasserstein distance between Gaussians with the means and covariances of the draws
    ``a : (S, d)`` and ``b : (S', d)``: ‖m_a − m_b‖² + tr(C_a + C_b − 2 (C_b^½ C_a C_b^½)^½),
    square-rooted."""
    a, b = a.double().reshape(a.shape[0], -1), b.double().reshape(b.shape[0], -1)
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a = torch.atleast_2d(torch.cov(a.T))
    cov_b = torch.atleast_2d(torch.cov(b.T))
    root_b = _sqrtm(cov_b)
    cross = _sqrtm(root_b @ cov_a @ root_b)
    squared = (mean_a - mean_b).square().sum() + torch.trace(cov_a + cov_b - 2 * cross)
    return float(squared.clamp_min(0).sqrt())


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def reference_distance(draws: PosteriorDraws, reference: PosteriorDraws) -> float:
    """Mean over the rows both hold (matched by training-row index) and the global sites of
    the Gaussian 2-Wasserstein distance between a fit's draws and the reference draws of the
    same continuous latents."""
    distances = []
    position = {int(r): i for i, r in enumerate(reference.rows.tolist())}
    for name, value in reference.local.items():
        if name in draws.local:
            for i, row in enumerate(draws.rows.tolist()):
                if int(row) in position:
                    distances.append(gaussian_wasserstein(draws.local[name][:, i],
                                                          value[:, position[int(row)]]))
    for name, value in reference.globals.items():
        if name in draws.globals:
            distances.append(gaussian_wasserstein(draws.globals[name], value))
    if not distances:
        raise InputError("the fit and the reference share no continuous latent to compare")
    return float(np.mean(distances))
