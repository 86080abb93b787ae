"""EM on the Gaussian mixture, iteration by iteration against scikit-learn's GaussianMixture."""

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from inference.catalog import get_model
from inference.em import fit_em
from inference.strategies import fit
from zoo import gmm
from zoo.errors import InputError

SPEC = get_model("gmm")  # the zoo's spec joined to its guides
ITERATIONS = 6


def datasets():
    iris = torch.tensor(load_iris().data, dtype=torch.float64)
    synthetic, _, _ = gmm.synthetic(400, torch.Generator().manual_seed(1), torch.float64)
    return {"iris": (iris, 3), "synthetic": (synthetic, 3)}


DATA = datasets()


def covariances(config, params) -> np.ndarray:
    if config.covariance_type == "tied":  # scikit-learn's: the one shared matrix
        return (params["scale_tril"][0] @ params["scale_tril"][0].mT).numpy()
    if config.covariance_type == "full":
        return (params["scale_tril"] @ params["scale_tril"].mT).numpy()
    return (params["scale"] ** 2).numpy()


def sklearn_from(config, start, max_iter: int) -> GaussianMixture:
    """scikit-learn's GaussianMixture started at exactly ``start``, tol=0."""
    cov = covariances(config, start)
    precisions = np.linalg.inv(cov) if config.full_matrices else 1.0 / cov
    return GaussianMixture(
        config.components, covariance_type=config.covariance_type, tol=0.0, max_iter=max_iter,
        reg_covar=config.reg_covar, init_params="random_from_data",
        weights_init=start["weights"].numpy() / start["weights"].numpy().sum(),
        means_init=start["means"].numpy(), precisions_init=precisions)


def fit_sklearn(model: GaussianMixture, x: torch.Tensor) -> GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x.numpy())


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
@pytest.mark.parametrize("name", DATA)
def test_every_em_iteration_reproduces_sklearn(name, covariance_type):
    x, k = DATA[name]
    config = gmm.GMMConfig(dim=x.shape[1], components=k, covariance_type=covariance_type)
    # a random-responsibility start moves a lot in the first iterations
    start = gmm.initialize(config, x, torch.Generator().manual_seed(0), "random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = fit_em(SPEC, config, x, init=start, tol=0.0, max_iter=ITERATIONS)
    theirs = fit_sklearn(sklearn_from(config, start, ITERATIONS), x)
    history = ours.history["log_likelihood"]
    assert len(history) == ITERATIONS + 1
    # scikit-learn's lower bound of iteration i is log p(x) before its M-step: our history[i-1]
    np.testing.assert_allclose(history[:-1], theirs.lower_bounds_, rtol=1e-6)
    np.testing.assert_allclose(history[-1], theirs.score(x.numpy()), rtol=1e-6)
    params = start
    for iteration in range(1, ITERATIONS + 1):
        statistics, _ = SPEC.em.e_step(config, params, x)
        params = SPEC.em.m_step(config, x, statistics)
        reference = fit_sklearn(sklearn_from(config, start, iteration), x)
        np.testing.assert_allclose(params["weights"].numpy(), reference.weights_, rtol=1e-6)
        np.testing.assert_allclose(params["means"].numpy(), reference.means_, rtol=1e-6,
                                   atol=1e-9)
        np.testing.assert_allclose(covariances(config, params), reference.covariances_,
                                   rtol=1e-6, atol=1e-9)
    for name_ in params:
        np.testing.assert_allclose(params[name_].numpy(), ours.params[name_].numpy(), rtol=1e-12)


@pytest.mark.parametrize("covariance_type", gmm.COVARIANCE_TYPES)
def test_log_likelihood_never_decreases(covariance_type):
    x, k = DATA["iris"]
    config = gmm.GMMConfig(dim=4, components=4, covariance_type=covariance_type)
    for seed in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = fit_em(SPEC, config, x, init="random", tol=0.0, max_iter=40, seed=seed)
        history = np.array(result.history["log_likelihood"])
        assert np.isfinite(history).all()
        assert (np.diff(history) >= -1e-12 * np.abs(history[1:])).all()
        assert history[-1] > history[0]


def test_convergence_warning_says_what_to_try():
    x, k = DATA["iris"]
    config = gmm.GMMConfig(dim=4, components=3)
    with pytest.warns(ConvergenceWarning, match=r"max_iter=2 iterations.*raise max_iter"):
        result = fit_em(SPEC, config, x, init="random", max_iter=2)
    assert not result.converged and result.steps == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        converged = fit_em(SPEC, config, x, max_iter=500, tol=1e-6)
    assert converged.converged


def test_restarts_keep_the_best_likelihood():
    x, _ = DATA["iris"]
    config = gmm.GMMConfig(dim=4, components=4)
    best = fit_em(SPEC, config, x, init="random", n_init=6, seed=0, tol=1e-4)
    finals = best.info["restart_log_likelihoods"]
    assert len(finals) == 6 and max(finals) - min(finals) > 1e-3  # the restarts differ
    assert best.history["log_likelihood"][-1] == max(finals)  # the best of all six is kept
    assert finals[best.info["best_restart"]] == max(finals)
    kept = float(SPEC.log_marginal(config, best.params, x).mean())
    assert kept == pytest.approx(max(finals), abs=1e-6)  # and its parameters are that restart


def test_recovers_known_parameters_up_to_permutation():
    x, labels, truth = gmm.synthetic(1500, torch.Generator().manual_seed(2), torch.float64)
    config = gmm.GMMConfig(dim=2, components=3)
    result = fit(SPEC, config, x, inference="em", n_init=3, seed=0)
    distance = torch.cdist(result.params["means"], truth["means"])
    rows, cols = linear_sum_assignment(distance.numpy())
    assert float(distance[rows, cols].max()) < 0.15
    np.testing.assert_allclose(result.params["weights"][rows].numpy(),
                               truth["weights"][cols].numpy(), atol=0.03)
    np.testing.assert_allclose(covariances(config, result.params)[rows],
                               covariances(config, truth)[cols], atol=0.15)
    assignments = gmm.posterior(config, result.params, x).probs.argmax(1)
    assert adjusted_rand_score(labels.numpy(), assignments.numpy()) > 0.97


def test_bad_input_reaches_the_user_as_input_errors():
    x, _ = DATA["iris"]
    with pytest.raises(InputError, match="components=151 exceeds the 150 datapoints"):
        fit_em(SPEC, gmm.GMMConfig(dim=4, components=151), x)
    with pytest.raises(InputError, match="kmeans, kmeans\\+\\+, random"):
        fit_em(SPEC, gmm.GMMConfig(dim=4, components=2), x, init="spectral")
    duplicated = torch.cat([x[:20], x[:1].expand(30, 4)])
    with pytest.raises(InputError, match="singular covariance"):
        fit_em(SPEC, gmm.GMMConfig(dim=4, components=3, reg_covar=0.0), duplicated,
               init="kmeans")


def test_float32_em_tracks_float64():
    x, k = DATA["synthetic"]
    config = gmm.GMMConfig(dim=2, components=k)
    start = gmm.initialize(config, x, torch.Generator().manual_seed(0))
    double = fit_em(SPEC, config, x, init=start, max_iter=30, tol=1e-9)
    single = fit_em(SPEC, config, x.float(), init={n: v.float() for n, v in start.items()},
                    max_iter=30, tol=1e-9)
    assert single.params["means"].dtype == torch.float32
    np.testing.assert_allclose(single.history["log_likelihood"][-1],
                               double.history["log_likelihood"][-1], rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_em_on_cuda_equals_cpu():
    x, k = DATA["iris"]
    config = gmm.GMMConfig(dim=4, components=k)
    start = gmm.initialize(config, x, torch.Generator().manual_seed(0))
    cpu = fit_em(SPEC, config, x, init=start, max_iter=20, tol=0.0)
    cuda = fit_em(SPEC, config, x.cuda(), init={n: v.cuda() for n, v in start.items()},
                  max_iter=20, tol=0.0)
    assert cuda.params["means"].is_cuda
    np.testing.assert_allclose(cuda.history["log_likelihood"], cpu.history["log_likelihood"],
                               rtol=1e-10)
