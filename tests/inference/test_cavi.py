"""CAVI and ``BayesianGaussianMixture`` against scikit-learn, and the whole ELBO's promises.

Datasets: iris (150 x 4), wine (178 x 13, unscaled: proline ~ 1000) and a synthetic blob set
(300 x 3, four blobs). Same start (scikit-learn's ``random_from_data`` / ``random`` draws from
the same ``random_state``), same priors: every fitted attribute within 1e-6, the same
iterations, and the whole ELBO minus scikit-learn's ``lower_bound_`` one constant
(``zoo.bayesian_gmm.sklearn_bound_offset``) at every iteration and from every start.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pyro
import pytest
import torch
from sklearn import mixture as sk_mixture
from sklearn.datasets import load_iris, load_wine, make_blobs
from sklearn.exceptions import ConvergenceWarning

from inference import strategies
from inference.catalog import get_model
from inference.estimators_sklearn import BayesianGaussianMixture
from inference.strategies.cavi import ElboDecreaseWarning, rounding_slack, run_cavi
from zoo import bayesian_gmm as bg


def _blobs():
    x, _ = make_blobs(n_samples=300, n_features=3, centers=4, cluster_std=1.2, random_state=7)
    return x


DATASETS = {"iris": lambda: load_iris().data, "wine": lambda: load_wine().data,
            "blobs": _blobs}
INIT = {"iris": "random_from_data", "wine": "random_from_data", "blobs": "random"}
COMPONENTS = 5


def _pair(name, kind, prior, **extra):
    x = DATASETS[name]()
    options = dict(n_components=COMPONENTS, covariance_type=kind, init_params=INIT[name],
                   weight_concentration_prior_type=prior, random_state=3, max_iter=300,
                   **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", ElboDecreaseWarning)
        theirs = sk_mixture.BayesianGaussianMixture(**options).fit(x)
        ours = BayesianGaussianMixture(**options).fit(x)
    return x, theirs, ours


def _bounds(estimator) -> np.ndarray:
    return np.array([np.ravel(b)[0] for b in estimator.lower_bounds_])


@pytest.mark.parametrize("kind", bg.COVARIANCE_TYPES)
@pytest.mark.parametrize("prior", bg.WEIGHT_PRIORS)
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_same_start_same_fit_as_sklearn(name, prior, kind):
    _, theirs, ours = _pair(name, kind, prior)
    assert ours.n_iter_ == theirs.n_iter_ and ours.converged_ == theirs.converged_
    for attribute in ("weights_", "means_", "covariances_", "precisions_cholesky_",
                      "mean_precision_", "degrees_of_freedom_"):
        np.testing.assert_allclose(getattr(ours, attribute), getattr(theirs, attribute),
                                   rtol=0, atol=1e-6, err_msg=attribute)
    np.testing.assert_allclose(np.stack(np.atleast_2d(ours.weight_concentration_)),
                               np.stack(np.atleast_2d(theirs.weight_concentration_)),
                               atol=1e-6)
    np.testing.assert_allclose(_bounds(ours), _bounds(theirs), rtol=0, atol=1e-6)
    x = DATASETS[name]()
    np.testing.assert_array_equal(ours.predict(x), theirs.predict(x))


@pytest.mark.parametrize("kind", bg.COVARIANCE_TYPES)
@pytest.mark.parametrize("prior", bg.WEIGHT_PRIORS)
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_whole_elbo_minus_sklearn_bound_is_one_constant(name, prior, kind):
    """With reg_covar = 0 (exact updates) the difference is the same number at every iteration
    and from two different starts (two different fits), and it is ``elbo_offset_``:
    -(ND/2) log 2π + K [log B(W₀, ν₀) + D(D-1)/4 log π + (D/2) log β₀] + (log Γ(Kα₀) -
    K log Γ(α₀), or K log γ₀); with scikit-learn's default reg_covar it is that plus
    ½ reg_covar Σ_k N_k tr E[Λ_k] (sklearn_bound_offset with the posterior)."""
    differences = []
    for seed in (3, 4):
        x = DATASETS[name]()
        options = dict(n_components=COMPONENTS, covariance_type=kind, init_params=INIT[name],
                       weight_concentration_prior_type=prior, random_state=seed, max_iter=60,
                       reg_covar=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            theirs = sk_mixture.BayesianGaussianMixture(**options).fit(x)
            ours = BayesianGaussianMixture(**options).fit(x)
        assert len(ours.elbos_) == len(theirs.lower_bounds_)
        differences.append(np.array(ours.elbos_) - _bounds(theirs))
        scale = 1e-9 * max(1.0, abs(ours.elbo_offset_))
        np.testing.assert_allclose(differences[-1], ours.elbo_offset_, rtol=0, atol=scale)
    assert abs(differences[0][0] - differences[1][-1]) < 1e-9 * abs(differences[0][0])
    # scikit-learn's default reg_covar: the offset plus the reg_covar term, final iteration
    _, theirs, ours = _pair(name, kind, prior)
    x = torch.as_tensor(DATASETS[name]())
    config = ours._config(x.shape[1])
    priors = ours._priors(x)
    offset = float(bg.sklearn_bound_offset(config, priors, x.shape[0], ours._posterior(x)))
    assert ours.elbo_ - np.ravel(theirs.lower_bound_)[0] == pytest.approx(offset, abs=1e-6)


@pytest.mark.parametrize("reg_covar", [0.0, 1e-6])
@pytest.mark.parametrize("kind", bg.COVARIANCE_TYPES)
@pytest.mark.parametrize("prior", bg.WEIGHT_PRIORS)
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_whole_elbo_never_decreases_over_200_iterations(name, prior, kind, reg_covar):
    x = torch.as_tensor(DATASETS[name]())
    config = bg.BayesianGMMConfig(dim=x.shape[1], components=COMPONENTS, covariance_type=kind,
                                  weight_concentration_prior_type=prior, reg_covar=reg_covar)
    priors = bg.resolve_priors(config, x)
    start = bg.initial_responsibilities(config, x, torch.Generator().manual_seed(0), "random")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ElboDecreaseWarning)
        run = run_cavi(bg.COORDINATE_ASCENT, config, priors, x, start, max_iter=200, tol=-1.0)
    history = np.array(run.history)
    assert len(history) == 200 and not run.decreases
    steps = np.diff(history)
    if reg_covar == 0:  # every update exact: monotone up to rounding
        assert steps.min() >= -rounding_slack(history[-1], x.shape[0], x.dtype)
    else:  # scikit-learn's regularized update may give back at most R's fall (checked above)
        assert -steps[steps < 0].sum() < 1e-6
    assert history[-1] > history[0] + 1.0  # it climbed


def test_a_decrease_is_reported_as_a_bug():
    """A broken update (q(Λ) inflated at iteration 5) is caught by the per-iteration check."""
    x = torch.as_tensor(load_iris().data)
    config = bg.BayesianGMMConfig(dim=4, components=3, reg_covar=0.0)
    calls = []

    def broken(config, priors, x, resp):
        post = bg.update_globals(config, priors, x, resp)
        calls.append(1)
        if len(calls) == 6:
            covariances = post.covariances * 3.0
            post = post._replace(covariances=covariances,
                                 precisions_cholesky=post.precisions_cholesky / 3.0 ** 0.5)
        return post

    steps = dataclasses.replace(bg.COORDINATE_ASCENT, update_globals=broken)
    priors = bg.resolve_priors(config, x)
    start = bg.initial_responsibilities(config, x, torch.Generator().manual_seed(0), "random")
    with pytest.warns(ElboDecreaseWarning, match="this is a bug"):
        run = run_cavi(steps, config, priors, x, start, max_iter=10, tol=-1.0)
    assert [iteration for iteration, _ in run.decreases] == [5]


def test_the_strategy_fits_the_bayesian_mixture_only_and_finds_sklearns_optimum():
    spec = get_model("bayesian-gmm")
    assert strategies.applicable(spec) == ["cavi", "svi"]  # CAVI first: the default
    assert "cavi" not in strategies.applicable(get_model("gmm"))
    data = _blobs()
    x = torch.as_tensor(data)
    config = spec.make_config(dim=3, components=4,
                              weight_concentration_prior_type="dirichlet_distribution")
    result = strategies.fit(spec, config, x, inference="cavi", seed=0, n_init=2)
    assert result.inference == "cavi" and result.converged
    history = np.array(result.history["elbo"])
    assert np.diff(history).min() >= -rounding_slack(history[-1], 1, x.dtype)
    assert result.info["elbo"] == pytest.approx(history[-1] * x.shape[0])
    # scikit-learn from its own K-means start reaches the same optimum (blobs well apart)
    theirs = sk_mixture.BayesianGaussianMixture(
        n_components=4, weight_concentration_prior_type="dirichlet_distribution",
        random_state=0, tol=1e-8, max_iter=500).fit(data)
    post = bg.from_params(config, result.guide_params)
    order_ours = np.argsort(post.means[:, 0].numpy())
    order_theirs = np.argsort(theirs.means_[:, 0])
    np.testing.assert_allclose(post.means.numpy()[order_ours], theirs.means_[order_theirs],
                               atol=1e-4)
    np.testing.assert_allclose(bg.mixture_weights(config, post).numpy()[order_ours],
                               theirs.weights_[order_theirs], atol=1e-5)


def test_float32_data_stay_float32_and_agree_with_float64():
    x = load_iris().data
    options = dict(n_components=3, init_params="random", random_state=0, max_iter=20, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        single = BayesianGaussianMixture(**options).fit(x.astype(np.float32))
        double = BayesianGaussianMixture(**options).fit(x)
    assert single.means_.dtype == np.float32 and single.covariances_.dtype == np.float32
    np.testing.assert_allclose(single.means_, double.means_, atol=1e-3)
    assert single.elbo_ == pytest.approx(double.elbo_, rel=1e-4)


def test_the_house_yardstick_confirms_the_closed_form_elbo():
    """``lvm-zoo fit bayesian-gmm``: the yardstick for global latents draws θ from the
    mean-field guide at CAVI's q and averages log p(θ, X) - log q(θ) (Monte Carlo): it must
    find CAVI's closed-form whole ELBO, and its importance-sampled log p(x) must lie above."""
    from inference import fitting
    from inference.data import DataRequest

    fitted = fitting.fit("bayesian-gmm", components=4,
                         data=DataRequest("old-faithful", dtype="float64"))
    closed_form = fitted.result.info["elbo_per_datapoint"]
    assert fitted.result.guide == "mean-field" and not fitted.result.info["elbo_decreases"]
    assert fitted.metrics["elbo"] == pytest.approx(closed_form, abs=2e-3)
    assert fitted.metrics["train_log_likelihood"] > closed_form - 2e-3


@pytest.mark.parametrize("kind", ["full", "spherical"])
def test_svi_with_the_mean_field_guide_reaches_cavis_elbo_at_its_defaults(kind):
    """The same model and guide family fitted by gradients, nothing but the covariance type
    set: SVI starts where CAVI starts (its K-means update), stays finite (its counts never
    fall below the prior's, the Wishart's singular region ν < D), converges, and its
    closed-form whole ELBO per row meets CAVI's optimum (Monte Carlo and averaging error)."""
    from inference import fitting
    from inference.data import DataRequest

    data = DataRequest("old-faithful", dtype="float64")
    by_gradients = fitting.fit("bayesian-gmm", inference="svi", covariance_type=kind, data=data)
    exact = fitting.fit("bayesian-gmm", inference="cavi", covariance_type=kind, data=data)
    assert by_gradients.result.converged is True
    config = by_gradients.config
    q = bg.from_params(config, by_gradients.result.guide_params)
    priors = bg.resolve_priors(config, exact.data.train)
    assert bool((q.degrees_of_freedom >= priors.degrees_of_freedom).all())
    assert bool((q.mean_precision >= priors.mean_precision).all())
    x = exact.data.train
    log_rho = bg.expected_log_joint(config, priors, q, x)
    ours = float(bg.elbo(config, priors, q, bg.responsibilities(log_rho)[0], log_rho)) / len(x)
    optimum = exact.result.info["elbo_per_datapoint"]
    assert optimum - 3e-3 < ours <= optimum + 1e-9  # CAVI's fixed point is the optimum


def test_the_mean_field_guide_runs_its_kmeans_start_only_when_svi_fits(monkeypatch):
    """SVI's guide (built with its setup step) starts at CAVI's start, K-means drawn from the
    process's stream at its first call; a guide rebuilt to load a fit's parameters (the
    yardstick, the run loader) runs no K-means at all and holds the loaded q."""
    from inference.evaluate import fitted
    from inference.strategies.svi import build_guide

    spec = get_model("bayesian-gmm")
    x = torch.as_tensor(_blobs())
    config = spec.make_config(dim=3, components=4)
    priors = bg.resolve_priors(config, x)
    model = spec.make_model(config)
    torch.manual_seed(11)
    expected = bg.update_globals(config, priors, x, bg.initial_responsibilities(config, x))
    guide = build_guide(spec, "mean-field", model, config, x)
    torch.manual_seed(11)
    with pyro.get_param_store().scope():
        guide(x)
        for name in ("means", "covariances", "degrees_of_freedom", "mean_precision"):
            torch.testing.assert_close(pyro.param(f"q_{name}").detach(),
                                       getattr(expected, name))
    result = strategies.fit(spec, config, x, inference="cavi", seed=0)

    def no_kmeans(*args, **kwargs):
        raise AssertionError("K-means ran for a guide that only loads parameters")

    monkeypatch.setattr(bg, "initial_responsibilities", no_kmeans)
    with fitted(spec, config, {}, x, guide="mean-field", guide_params=result.guide_params):
        for name, value in result.guide_params.items():
            torch.testing.assert_close(pyro.param(name).detach(), value)
