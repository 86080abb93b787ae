"""CAVI on Bayesian PPCA against SVI with the same mean-field guide (guides.bayesian_ppca).

The closed-form whole ELBO at CAVI's q must equal a Monte Carlo ELBO of the guide at the same
parameters (Pyro's Trace_ELBO: every constant of the model's densities), and SVI, fitting the
guide by gradients from CAVI's start, must reach CAVI's ELBO within Monte Carlo error (CAVI's
fixed point is the family's optimum: SVI may not exceed it)."""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import pytest
import torch

from guides import bayesian_ppca as guides
from inference import strategies
from inference.catalog import get_model
from zoo import bayesian_ppca as bp


def _small_case():
    g = torch.Generator().manual_seed(1)
    n, d = 60, 4
    x = (torch.randn(n, 2, generator=g, dtype=torch.float64)
         @ torch.randn(2, d, generator=g, dtype=torch.float64)
         + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64))
    spec = get_model("bayesian-ppca")
    config = spec.make_config(dim=d, latent_dim=2, ard_concentration=1.0, ard_rate=1.0,
                              noise_concentration=1.0, noise_rate=1.0, mean_precision=1.0)
    return spec, config, x


def _monte_carlo_elbo(config, params, x, batches: int = 16, particles: int = 500):
    """Mean and standard error of Trace_ELBO over ``batches`` x ``particles`` draws."""
    pyro.clear_param_store()
    model = bp.make_model(config)
    guide = guides.MeanFieldGuide(model, config)
    for name, value in params.items():
        pyro.param(name, value.clone(), constraint=guides._CONSTRAINTS.get(
            name[2:], torch.distributions.constraints.real))
    pyro.set_rng_seed(0)
    estimator = pyro.infer.Trace_ELBO(num_particles=particles, vectorize_particles=True,
                                      max_plate_nesting=1)
    values = np.array([-estimator.loss(model, guide, x) for _ in range(batches)])
    return values.mean(), values.std(ddof=1) / np.sqrt(batches)


def test_svi_with_the_mean_field_guide_reaches_cavis_whole_elbo():
    spec, config, x = _small_case()
    cavi = strategies.fit(spec, config, x, inference="cavi", seed=0, tol=1e-12, max_iter=5000)
    assert cavi.converged and not cavi.info["elbo_decreases"]
    closed_form = cavi.info["elbo"]
    mean, error = _monte_carlo_elbo(config, cavi.guide_params, x)
    assert abs(mean - closed_form) < 4 * error  # the closed form is Pyro's ELBO, every constant
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svi = strategies.fit(spec, config, x, inference="svi", seed=0, steps=1000, lr=0.05,
                             num_particles=8)
    assert svi.guide == "mean-field"
    svi_mean, svi_error = _monte_carlo_elbo(config, svi.guide_params, x)
    start = bp.elbo(config, x, bp.initial_posterior(config, x, None, "pca"))
    assert float(start) < closed_form - 1.0  # SVI had ground to cover
    # SVI reaches CAVI's optimum within Monte Carlo error, and cannot pass it
    assert abs(svi_mean - closed_form) < 4 * np.hypot(svi_error, error) + 0.05
    assert svi_mean < closed_form + 4 * svi_error


def test_the_house_yardstick_confirms_the_closed_form_elbo_and_records_the_dimension():
    from inference import fitting
    from inference.data import DataRequest

    fitted = fitting.fit("bayesian-ppca", data=DataRequest("old-faithful", dtype="float64"))
    info = fitted.result.info
    assert fitted.result.guide == "mean-field" and not info["elbo_decreases"]
    assert info["effective_dimension"] == 1 and len(info["ard_precisions"]) == 1
    assert fitted.metrics["elbo"] == pytest.approx(info["elbo_per_datapoint"], abs=2e-3)
    assert fitted.metrics["train_log_likelihood"] > info["elbo_per_datapoint"] - 2e-3


def test_compare_sets_cavi_svi_full_rank_and_maximum_likelihood_side_by_side():
    from inference.compare.harness import strategy_grid
    from inference.strategies.svi import has_discrete_local_latent

    ppca = get_model("bayesian-ppca")
    cells = [(c.strategy, c.guide) for c in strategy_grid(ppca)]
    assert cells == [("cavi", None), ("svi", "mean-field"), ("svi", "auto-lowrank"),
                     ("svi", "auto-mvn")]
    assert ppca.baselines["ppca"](ppca.make_config(dim=20)) == {"latent_dim": 19}
    gmm = get_model("bayesian-gmm")
    config = gmm.make_config(dim=2, components=3)
    assert gmm.baselines["gmm"](config) == {"components": 3, "covariance_type": "full"}
    # the grid traces the model on two rows, whose data-resolved Wishart prior is singular
    x = torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    assert has_discrete_local_latent(gmm, config, x)
