"""Two small studies of how the deep latent-variable model is fitted.

1. :func:`gradient_variance` — the same model, the same encoder weights and the same batch;
   repeated one-sample gradient estimates of the encoder from three estimators:

   - ``reparameterized``: ``Trace_ELBO`` with z = μ_φ(x) + σ_φ(x)·ε, differentiated through ε;
   - ``closed-form KL``: ``TraceMeanField_ELBO``, reparameterized likelihood term and the exact
     KL ½[tr S + ‖m‖² − Q − log det S] in place of its Monte Carlo estimate;
   - ``score function``: ``Trace_ELBO`` on a guide whose z carries no ``rsample`` (the
     log-trick), ∇ log q(z | x) · (log p(x, z) − log q(z | x)), with no baseline.

   The variance of the score-function estimate is orders of magnitude larger: it multiplies a
   score by the whole (noisy) log-weight of the batch, where the reparameterized estimate
   follows the decoder's gradient at the sampled z.

2. :func:`amortization_gap` — on a subset of rows, the encoder's ELBO against the ELBO of free
   per-datapoint Gaussians optimized with the decoder held fixed (Cremer et al., 2018):
   log p(x) − ELBO_encoder = (log p(x) − ELBO_mean-field*) + (ELBO_mean-field* − ELBO_encoder),
   the approximation gap plus the amortization gap.

Figures are in nats per datapoint; gradients are of the per-datapoint negative ELBO.
"""

from __future__ import annotations

from typing import NamedTuple

import pyro
import torch
from pyro import poutine

from guides.dglvm import AmortizedGuide
from inference.catalog import get_model
from inference.compare.gaps import amortization_split
from inference.evaluate import load_params
from inference.results import FitResult
from inference.sampling import own_random_stream
from inference.svi import make_elbo
from zoo.dglvm import DGLVMConfig, make_model
from zoo.registry import Params

# estimator name -> (Pyro ELBO class name, reparameterized guide?)
ESTIMATORS: dict[str, tuple[str, bool]] = {
    "reparameterized": ("Trace_ELBO", True),
    "closed-form KL": ("TraceMeanField_ELBO", True),
    "score function": ("Trace_ELBO", False),
}


class GradientVariance(NamedTuple):
    """Spread of one estimator's encoder-gradient estimates.

    Attributes:
        estimator: the name in :data:`ESTIMATORS`.
        elbo: Pyro's ELBO class used.
        reparameterized: whether z was drawn with ``rsample``.
        mean_elbo: the average ELBO estimate, nats per datapoint.
        total_variance: Σ over encoder weights of the variance of one gradient estimate.
        mean_gradient_norm: ‖average gradient‖, the signal the variance is set against.
        num_estimates: how many independent one-sample estimates were drawn.
    """

    estimator: str
    elbo: str
    reparameterized: bool
    mean_elbo: float
    total_variance: float
    mean_gradient_norm: float
    num_estimates: int


def gradient_variance(config: DGLVMConfig, x: torch.Tensor, *, params: Params | None = None,
                      guide_params: Params | None = None, num_estimates: int = 100,
                      estimators: tuple[str, ...] = tuple(ESTIMATORS),
                      seed: int = 0) -> dict[str, GradientVariance]:
    """Variance of the encoder gradient of each estimator on the batch ``x : (B, D)``.

    Every estimator sees the same decoder (``params``, else random weights from ``seed``) and
    the same encoder (``guide_params`` of an amortized fit, else random weights from ``seed``).
    """
    results = {}
    with pyro.get_param_store().scope():
        pyro.set_rng_seed(seed)
        model = make_model(config, params)
        guide = AmortizedGuide(model, config)
        with torch.no_grad(), poutine.block():  # register every parameter, then load the fit's
            trace = poutine.trace(guide).get_trace(x)
            poutine.replay(model, trace=trace)(x)
        # the model's too: a VampPrior model owns the encoder it shares with the guide
        if guide_params or any(k.startswith("encoder$$$") for k in params or {}):
            load_params({**(params or {}), **(guide_params or {})})
        encoder = [p for name, p in pyro.get_param_store().named_parameters()
                   if name.startswith("encoder$$$")]
        for name in estimators:
            elbo_name, reparameterized = ESTIMATORS[name]
            guide.reparameterized = reparameterized
            elbo = make_elbo(elbo_name)
            losses, grads = [], []
            for _ in range(num_estimates):
                loss = elbo.differentiable_loss(model, guide, x) / x.shape[0]
                grads.append(torch.cat([g.reshape(-1) for g in
                                        torch.autograd.grad(loss, encoder)]))
                losses.append(float(loss.detach()))
            stacked = torch.stack(grads)
            results[name] = GradientVariance(
                estimator=name, elbo=elbo_name, reparameterized=reparameterized,
                mean_elbo=-sum(losses) / len(losses),
                total_variance=float(stacked.var(dim=0).sum()),
                mean_gradient_norm=float(stacked.mean(dim=0).norm()),
                num_estimates=num_estimates)
        guide.reparameterized = True
    return results


class AmortizationGap(NamedTuple):
    """The ELBO decomposition on a subset of rows, nats per datapoint.

    Attributes:
        log_likelihood: IWAE-K estimate of log p(x) (the better of the two proposals).
        encoder_elbo: the ELBO with the encoder q_φ(z | x).
        mean_field_elbo: the ELBO with free per-datapoint Gaussians, optimized for these rows.
        amortization_gap: mean_field_elbo − encoder_elbo.
        approximation_gap: log_likelihood − mean_field_elbo.
        num_rows: rows in the subset.
    """

    log_likelihood: float
    encoder_elbo: float
    mean_field_elbo: float
    amortization_gap: float
    approximation_gap: float
    num_rows: int


def amortization_gap(config: DGLVMConfig, params: Params, guide_params: Params,
                     x: torch.Tensor, *, steps: int = 500, lr: float = 1e-2,
                     num_samples: int = 1000, seed: int = 0) -> AmortizationGap:
    """How much ELBO the encoder of an amortized fit (``params``, ``guide_params``) leaves on
    the rows ``x : (n, D)`` compared with per-datapoint Gaussians fitted to them with the
    decoder frozen, started at the encoder's output (so the optimum is at least as good): the
    comparison's gap split (:func:`inference.compare.gaps.amortization_split`) for this model."""
    result = FitResult(model="dglvm", inference="svi", guide="amortized", params=params,
                       guide_params=guide_params)
    with own_random_stream(seed, x.device):
        split = amortization_split(get_model("dglvm"), config, result, x, steps=steps, lr=lr,
                                   num_samples=num_samples, seed=seed)
    return AmortizationGap(
        log_likelihood=split["log_likelihood"], encoder_elbo=split["encoder_elbo"],
        mean_field_elbo=split["best_elbo"], amortization_gap=split["amortization_gap"],
        approximation_gap=split["approximation_gap"], num_rows=x.shape[0])
