"""Inference strategies by name: ``closed-form``, ``em`` and ``svi``, one call each.

``fit(spec, config, x, inference=..., guide=...)`` is what the command line and the comparison
call; every strategy returns a :class:`~inference.results.FitResult` with the model's parameters
in the model's one representation.
"""

from __future__ import annotations

import time

import pyro
import torch

from inference.em import fit_em
from inference.results import FitResult
from inference.svi import fit_svi
from zoo.errors import InputError
from zoo.registry import ModelSpec

SVI_OPTIONS = ("steps", "lr", "batch_size", "elbo", "num_particles", "binarize", "checkpoint",
               "checkpoint_every", "resume")
EM_OPTIONS = ("n_init", "init", "tol", "max_iter")


def fit_closed_form(spec: ModelSpec, config, x: torch.Tensor, *, seed: int = 0,
                    **_) -> FitResult:
    """The maximum-likelihood parameters in closed form (one pass over the data)."""
    start = time.perf_counter()
    params = spec.closed_form(config, x)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return FitResult(model=spec.name, inference="closed-form", guide=None, params=params,
                     seconds=time.perf_counter() - start, steps=1, converged=True,
                     device=str(x.device), seed=seed)


def fit_by_em(spec: ModelSpec, config, x: torch.Tensor, *, seed: int = 0,
              progress: bool = False, **options) -> FitResult:
    chosen = {k: v for k, v in options.items() if k in EM_OPTIONS and v is not None}
    return fit_em(spec, config, x, seed=seed, progress=progress, **chosen)


def fit_by_svi(spec: ModelSpec, config, x: torch.Tensor, *, guide: str | None = None,
               seed: int = 0, progress: bool = False, restarts: int = 1,
               **options) -> FitResult:
    """SVI with the named guide, from ``restarts`` data-based initializations; the best
    final ELBO (mean of the last 10% of steps) is kept, since mixtures collapse from bad starts."""
    guide = guide or spec.default_guide or next(iter(spec.guides))
    if guide not in spec.guides:
        raise InputError(f"model '{spec.name}' has no guide '{guide}'; choose one of: "
                         + ", ".join(spec.guides))
    if restarts < 1:
        raise InputError(f"restarts={restarts} must be at least 1")
    chosen = {**spec.svi_defaults,
              **{k: v for k, v in options.items() if k in SVI_OPTIONS and v is not None}}
    chosen.setdefault("elbo", spec.default_elbo.get(guide, "Trace_ELBO"))
    best = None
    for restart in range(restarts):
        run_seed = seed + 1000 * restart
        pyro.set_rng_seed(run_seed)  # networks are initialized when model and guide are built
        generator = torch.Generator(device=x.device).manual_seed(run_seed)
        init = spec.init_params(config, x, generator) if spec.init_params else None
        model = spec.make_model(config, init)
        result = fit_svi(model, spec.guides[guide](model, config), x, seed=run_seed,
                         progress=progress, model_name=spec.name, guide_name=guide, **chosen)
        tail = result.history["elbo"][-max(1, len(result.history["elbo"]) // 10):]
        score = sum(tail) / len(tail)
        if best is None or score > best[0]:
            best = (score, result, restart)
    result = best[1]
    result.seed = seed
    result.info.update(restarts=restarts, best_restart=best[2])
    return result


STRATEGIES = {"closed-form": fit_closed_form, "em": fit_by_em, "svi": fit_by_svi}


def fit(spec: ModelSpec, config, x: torch.Tensor, *, inference: str | None = None,
        guide: str | None = None, seed: int = 0, progress: bool = False,
        **options) -> FitResult:
    """Fit ``spec`` to ``x : (N, D)`` with the named strategy (default: the model's first)."""
    inference = inference or spec.inference_methods[0]
    if inference not in spec.inference_methods:
        raise InputError(f"--inference {inference} does not apply to '{spec.name}'; choose one "
                         "of: " + ", ".join(spec.inference_methods))
    if guide is not None and inference != "svi":
        raise InputError(f"--guide applies to --inference svi only, not {inference}")
    extra = {"guide": guide} if inference == "svi" else {}
    return STRATEGIES[inference](spec, config, x, seed=seed, progress=progress, **extra,
                                 **options)
