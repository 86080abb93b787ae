"""The gap log p(x) − ELBO of a fit, exactly where the model allows it, and its split.

``judge_fit`` gives the exact ELBO and gap where the model has ``log_marginal`` and
``posterior`` (the gap is then KL(q ‖ p(z | x)) in closed form, :mod:`inference.decomposition`),
else the Monte Carlo ones of :func:`inference.evaluate.evaluate_fit`; and for amortized guides
the split of Cremer et al. (2018): ``approximation_gap`` = log p(x) − ELBO(q*), with q* the best
member of the guide's family for each datapoint, and ``amortization_gap`` = ELBO(q*) −
ELBO(encoder). q* is in closed form where the model has an exact posterior (the posterior
itself, or its mean-field projection), else fitted per datapoint with the model held fixed.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import Categorical, Independent, MultivariateNormal, Normal

from inference.catalog import guide_entry
from inference.decomposition import elbo_decomposition, exact_decomposition
from inference.evaluate import fitted, guide_site, iwae, pointwise_log_weights
from inference.results import FitResult
from inference.sampling import own_random_stream
from zoo.errors import InputError
from zoo.registry import DATA_PLATE, ModelSpec

GAP_ROWS = 64  # training rows of the amortization-gap split
GAP_STEPS = 300  # Adam steps of the per-datapoint q* where it has no closed form
GAP_SAMPLES = 500  # importance samples of the gap split's Monte Carlo ELBOs and log p(x)


def judge_fit(spec: ModelSpec, config, result: FitResult, x: torch.Tensor, record: dict, *,
              gap_rows: int = GAP_ROWS, seed: int = 0) -> dict:
    """``elbo``, ``gap``, ``elbo_method``, ``approximation_gap``, ``amortization_gap`` and
    ``gap_rows`` for one fit on its training rows ``x``, mean nats per datapoint. An amortized
    guide's gap is split on every row where q* has a closed form, else on ``gap_rows`` random
    training rows (0: not split)."""
    out = {"elbo": record.get("elbo"), "gap": record.get("gap"),
           "elbo_method": None if record.get("elbo") is None else "monte-carlo",
           "approximation_gap": None, "amortization_gap": None, "gap_rows": None}
    guide = result.guide if result.guide in spec.guides else None
    if guide is None:
        return out
    exact = exact_decomposition(spec, config, result, x)
    if exact is not None:
        out.update(elbo=exact["elbo"], gap=exact["log_likelihood"] - exact["elbo"],
                   elbo_method="exact")
    out["approximation_gap"] = out["gap"]
    # the split holds the model's parameters fixed and asks for the best q(z_n) per row: with
    # global latents (a posterior over the parameters too) it is not defined; the gap stays whole
    if is_amortized(spec, guide, result) and not spec.global_sites:
        out["approximation_gap"] = None  # not the whole gap: it is split below, or unknown
        with own_random_stream(seed, x.device):
            try:  # q* in closed form: on every training row; fitted: on gap_rows of them
                rows = torch.arange(x.shape[0], device=x.device)
                split = amortization_split(spec, config, result, x, seed=seed, fit=False)
                if split is None and gap_rows:
                    rows = torch.randperm(x.shape[0], device=x.device)[:gap_rows]
                    split = amortization_split(spec, config, result, x[rows], seed=seed)
            except InputError:  # several local latents, or an encoder family without q*
                return out
            if split is None:
                return out
        out.update(approximation_gap=split["approximation_gap"],
                   amortization_gap=split["amortization_gap"], gap_rows=int(rows.numel()))
    return out


def is_amortized(spec: ModelSpec, guide: str, result: FitResult) -> bool:
    """An amortized guide has parameters of its own (an encoder) and none per datapoint, as
    its entry in the guide registry says (``GuideEntry.per_datapoint``)."""
    return bool(result.guide_params) and not guide_entry(spec, guide).per_datapoint


def amortization_split(spec: ModelSpec, config, result: FitResult, x: torch.Tensor, *,
                       steps: int = GAP_STEPS, lr: float = 0.02, num_particles: int = 8,
                       num_samples: int = GAP_SAMPLES, seed: int = 0,
                       fit: bool = True) -> dict | None:
    """log p(x) − ELBO(encoder) = (log p(x) − ELBO(q*)) + (ELBO(q*) − ELBO(encoder)) on the rows
    ``x : (n, D)``, with q* the best per-datapoint member of the encoder's family: in closed form
    from ``spec.posterior`` where possible, else (unless ``fit=False``: then ``None``) fitted by
    Adam with the model held fixed, from the encoder's output. Returns log p(x), both ELBOs and
    both gaps, means in nats per datapoint; raises :class:`InputError` where q* is undefined."""
    if len(spec.local_sites) != 1:
        raise InputError(f"model '{spec.name}' has local sites {spec.local_sites}; the "
                         "amortization gap handles one local latent")
    site = spec.local_sites[0]
    with fitted(spec, config, result.params, x, guide=result.guide,
                guide_params=result.guide_params) as (model, encoder):
        with torch.no_grad():
            q_encoder = guide_site(encoder, x, site)
        exact = spec.posterior is not None and spec.log_marginal is not None
        best = _closed_form_optimum(q_encoder, spec.posterior(config, result.params, x)) \
            if exact else None
        if best is not None:
            encoder_terms = elbo_decomposition(spec, config, result.params, x, q_encoder)
            best_terms = elbo_decomposition(spec, config, result.params, x, best)
            log_likelihood = float(encoder_terms.log_likelihood.mean())
            encoder_elbo, best_elbo = float(encoder_terms.elbo.mean()), float(
                best_terms.elbo.mean())
        elif not fit:
            return None
        else:
            free = _FreeGuide.from_distribution(site, q_encoder)
            _fit_free_guide(model, free, x, steps=steps, lr=lr, num_particles=num_particles)
            encoder_weights = pointwise_log_weights(model, encoder, x, num_samples)
            best_weights = pointwise_log_weights(model, free, x, num_samples)
            encoder_elbo = float(encoder_weights.mean())
            best_elbo = float(best_weights.mean())
            if spec.log_marginal is not None:
                with torch.no_grad():
                    log_likelihood = float(spec.log_marginal(config, result.params, x).mean())
            else:
                log_likelihood = max(float(iwae(encoder_weights).mean()),
                                     float(iwae(best_weights).mean()))
    return {"log_likelihood": log_likelihood, "encoder_elbo": encoder_elbo,
            "best_elbo": best_elbo, "approximation_gap": log_likelihood - best_elbo,
            "amortization_gap": best_elbo - encoder_elbo}


def _closed_form_optimum(q, posterior):
    """The member of q's family closest to the exact posterior in KL(q ‖ p), where known: the
    posterior itself when the family contains it, the mean-field projection N(m, diag(1/Λ_ii))
    of a Gaussian posterior for a diagonal family; ``None`` otherwise."""
    if isinstance(q, Categorical) and isinstance(posterior, Categorical):
        return posterior
    if isinstance(q, MultivariateNormal) and isinstance(posterior, MultivariateNormal):
        return posterior
    diagonal = isinstance(q, Independent) and isinstance(q.base_dist, Normal)
    if diagonal and isinstance(posterior, MultivariateNormal):
        precision = posterior.precision_matrix.diagonal(dim1=-2, dim2=-1)
        return dist.Normal(posterior.mean, precision.rsqrt()).to_event(1)
    if diagonal and isinstance(posterior, Independent) and isinstance(posterior.base_dist,
                                                                       Normal):
        return posterior
    return None


class _FreeGuide:
    """Free per-datapoint parameters in the family of an encoder's distribution (diagonal or
    full-covariance Gaussian), started at the encoder's values; a guide with the model's
    signature for rows of one fixed batch."""

    def __init__(self, site: str, loc: torch.Tensor, raw_scale: torch.Tensor, full: bool,
                 event_dims: int = 1):
        self.site, self.full, self.event_dims = site, full, event_dims
        self.loc = loc.detach().clone().requires_grad_(True)
        self.raw_scale = raw_scale.detach().clone().requires_grad_(True)

    @classmethod
    def from_distribution(cls, site: str, q) -> _FreeGuide:
        if isinstance(q, MultivariateNormal):
            tril = q.scale_tril
            raw = tril.tril(-1) + torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1).log())
            return cls(site, q.loc.expand(q.batch_shape + q.event_shape),
                       raw.expand(q.batch_shape + tril.shape[-2:]), True)
        if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
            return cls(site, q.base_dist.loc, q.base_dist.scale.log(), False,
                       q.reinterpreted_batch_ndims)
        if isinstance(q, Normal):
            return cls(site, q.loc, q.scale.log(), False, 0)
        raise InputError(f"no per-datapoint family for a {type(q).__name__} guide; the "
                         "amortization gap needs a Gaussian or a categorical encoder")

    def parameters(self) -> list[torch.Tensor]:
        return [self.loc, self.raw_scale]

    def distribution(self, idx):
        if self.full:
            raw = self.raw_scale[idx]
            tril = raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
            return dist.MultivariateNormal(self.loc[idx], scale_tril=tril)
        normal = dist.Normal(self.loc[idx], self.raw_scale[idx].exp())
        return normal.to_event(self.event_dims) if self.event_dims else normal

    def __call__(self, x=None, *, num_data=None, subsample_size=None):
        with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                        device=x.device) as idx:
            pyro.sample(self.site, self.distribution(idx))


def _fit_free_guide(model, guide: _FreeGuide, x: torch.Tensor, *, steps: int, lr: float,
                    num_particles: int) -> None:
    """Maximize the (unscaled, reparameterized) ELBO of ``guide`` alone on ``x``."""
    optimizer = torch.optim.Adam(guide.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = -pointwise_log_weights(model, guide, x, num_particles, grad=True).mean()
        loss.backward()
        optimizer.step()
