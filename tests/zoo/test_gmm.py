"""The Gaussian mixture's closed forms against scikit-learn, scipy and naive references."""

import math

import numpy as np
import pyro
import pyro.infer
import pytest
import torch
from pyro import poutine
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.datasets import load_iris
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

import zoo.registry
from inference import strategies
from inference.catalog import get_model
from zoo import gmm, gmm_em
from zoo.errors import InputError

COVARIANCE_TYPES = gmm.COVARIANCE_TYPES


@pytest.fixture(scope="module")
def iris() -> torch.Tensor:
    return torch.tensor(load_iris().data, dtype=torch.float64)


def covariances(config, params) -> np.ndarray:
    """scikit-learn's ``covariances_`` for our parameters (tied: the one shared matrix)."""
    if config.covariance_type == "tied":
        return (params["scale_tril"][0] @ params["scale_tril"][0].mT).numpy()
    if config.covariance_type == "full":
        return (params["scale_tril"] @ params["scale_tril"].mT).numpy()
    return (params["scale"] ** 2).numpy()


def sklearn_mixture(config, params) -> GaussianMixture:
    """A fitted-looking scikit-learn GaussianMixture holding exactly ``params``."""
    model = GaussianMixture(config.components, covariance_type=config.covariance_type)
    model.weights_ = params["weights"].numpy()
    model.means_ = params["means"].numpy()
    model.covariances_ = covariances(config, params)
    model.precisions_cholesky_ = _compute_precision_cholesky(model.covariances_,
                                                             config.covariance_type)
    return model


def random_params(config, generator) -> dict:
    """Parameters off any fixed point: random weights, means and correlated covariances."""
    k, d = config.components, config.dim
    weights = torch.rand(k, generator=generator, dtype=torch.float64) + 0.2
    means = 2 * torch.randn(k, d, generator=generator, dtype=torch.float64)
    if config.covariance_type == "full":
        factor = torch.randn(k, d, d, generator=generator, dtype=torch.float64)
        covariance = factor @ factor.mT / d + 0.5 * torch.eye(d, dtype=torch.float64)
        scale = {"scale_tril": torch.linalg.cholesky(covariance)}
    elif config.covariance_type == "tied":  # K equal copies of one factor
        factor = torch.randn(d, d, generator=generator, dtype=torch.float64)
        covariance = factor @ factor.mT / d + 0.5 * torch.eye(d, dtype=torch.float64)
        scale = {"scale_tril": torch.linalg.cholesky(covariance).expand(k, d, d).clone()}
    elif config.covariance_type == "diag":
        scale = {"scale": 0.5 + torch.rand(k, d, generator=generator, dtype=torch.float64)}
    else:
        scale = {"scale": 0.5 + torch.rand(k, generator=generator, dtype=torch.float64)}
    return {"weights": weights / weights.sum(), "means": means, **scale}


# --- configuration and bad input --------------------------------------------------------------


def test_config_rejects_bad_values_with_the_fix():
    with pytest.raises(InputError, match="components=0 must be at least 1"):
        gmm.GMMConfig(components=0)
    with pytest.raises(InputError, match="full, tied, diag, spherical"):
        gmm.GMMConfig(covariance_type="banded")
    with pytest.raises(InputError, match="reg_covar=-1"):
        gmm.GMMConfig(reg_covar=-1.0)
    with pytest.raises(InputError, match="components=12 exceeds the 10 datapoints; use at most 10"):
        gmm.GMMConfig(components=12).validate(10)
    gmm.GMMConfig(components=10).validate(10)


def test_more_components_than_datapoints_is_refused_before_any_work():
    x = torch.randn(5, 2, dtype=torch.float64)
    config = gmm.GMMConfig(dim=2, components=6)
    with pytest.raises(InputError, match="use at most 5"):
        gmm.initialize(config, x, torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="use at most 5"):
        gmm.kmeans_plus_plus(x, 6)


def test_wrong_data_shape_and_parameter_shapes_are_named():
    config = gmm.GMMConfig(dim=3, components=2)
    params = random_params(config, torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match=r"give an \(N, 3\) tensor"):
        gmm.log_marginal(config, params, torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(InputError, match="'means' has shape"):
        gmm.log_marginal(config, {**params, "means": params["means"][:1]},
                         torch.zeros(4, 3, dtype=torch.float64))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_duplicated_points_without_reg_covar_raise_not_nan(covariance_type):
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(10, 2, generator=generator, dtype=torch.float64)
    duplicates = torch.full((10, 2), 5.0, dtype=torch.float64)
    x = torch.cat([spread, duplicates])
    resp = torch.cat([torch.tensor([[1.0, 0.0]]).expand(10, 2),
                      torch.tensor([[0.0, 1.0]]).expand(10, 2)]).double()
    bare = gmm.GMMConfig(dim=2, components=2, covariance_type=covariance_type, reg_covar=0.0)
    if covariance_type == "tied":  # the pooled scatter has the spread points: not singular
        assert torch.isfinite(gmm.log_marginal(bare, gmm.m_step(bare, x, resp), x)).all()
        x = torch.cat([duplicates, duplicates])  # now every point is the same one
        with pytest.raises(gmm.SingularCovarianceError, match="the tied covariance of the 2 "
                                                              "components has a singular"):
            gmm.m_step(bare, x, resp)
    else:
        with pytest.raises(InputError, match="component 1 of 2 has a singular covariance.*"
                                             "raise reg_covar"):
            gmm.m_step(bare, x, resp)
    regularized = gmm.GMMConfig(dim=2, components=2, covariance_type=covariance_type)
    params = gmm.m_step(regularized, x, resp)
    assert torch.isfinite(gmm.log_marginal(regularized, params, x)).all()


def test_a_single_repeated_point_is_refused_at_any_offset():
    for value in (0.0, 3.0, 70.0):
        x = torch.full((8, 2), value, dtype=torch.float64)
        with pytest.raises(InputError, match="singular covariance"):
            gmm.initialize(gmm.GMMConfig(dim=2, components=1, reg_covar=0.0), x)


def test_singular_given_parameters_are_refused_not_nan():
    config = gmm.GMMConfig(dim=2, components=2, covariance_type="diag")
    params = random_params(config, torch.Generator().manual_seed(1))
    params["scale"][0, 1] = 0.0
    with pytest.raises(InputError, match="singular covariance"):
        gmm.log_marginal(config, params, torch.zeros(3, 2, dtype=torch.float64))


# --- exact log p(x) and p(z | x) --------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_marginal_equals_sklearn_score(iris, covariance_type):
    config = gmm.GMMConfig(dim=4, components=3, covariance_type=covariance_type)
    params = random_params(config, torch.Generator().manual_seed(2))
    ours = gmm.log_marginal(config, params, iris)
    reference = sklearn_mixture(config, params)
    assert ours.shape == (150,)
    np.testing.assert_allclose(float(ours.mean()), reference.score(iris.numpy()), rtol=1e-8)
    np.testing.assert_allclose(ours.numpy(), reference.score_samples(iris.numpy()), rtol=1e-8)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_marginal_equals_scipy_density_sum(covariance_type):
    config = gmm.GMMConfig(dim=3, components=4, covariance_type=covariance_type)
    generator = torch.Generator().manual_seed(3)
    params = random_params(config, generator)
    x = 2 * torch.randn(40, 3, generator=generator, dtype=torch.float64)
    cov = covariances(config, params)
    per_component = np.stack([
        multivariate_normal(params["means"][k].numpy(),
                            cov if covariance_type == "tied" else cov[k] if cov.ndim == 3
                            else np.diag(np.broadcast_to(cov[k], 3))
                            ).logpdf(x.numpy())
        for k in range(4)], axis=1)
    reference = logsumexp(per_component + np.log(params["weights"].numpy()), axis=1)
    np.testing.assert_allclose(gmm.log_marginal(config, params, x).numpy(), reference,
                               rtol=1e-10)


def test_log_marginal_is_float32_safe_far_from_the_origin():
    config = gmm.GMMConfig(dim=2, components=2)
    params64 = random_params(config, torch.Generator().manual_seed(4))
    params64["means"] += 1e4
    x64, _ = gmm.sample(config, params64, 500, torch.Generator().manual_seed(5))
    x32 = x64.float()
    params32 = {k: v.float() for k, v in params64.items()}
    exact = gmm.log_marginal(config, {k: v.double() for k, v in params32.items()}, x32.double())
    single = gmm.log_marginal(config, params32, x32)
    assert single.dtype == torch.float32
    # float32 rows at 1e4 are resolved to 1e-3; the density must not lose more than that
    assert float((single.double() - exact).abs().max()) < 1e-2


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_responsibilities_equal_sklearn_predict_proba(iris, covariance_type):
    config = gmm.GMMConfig(dim=4, components=3, covariance_type=covariance_type)
    params = random_params(config, torch.Generator().manual_seed(6))
    resp = gmm.responsibilities(config, params, iris)
    np.testing.assert_allclose(resp.sum(1).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(resp.numpy(),
                               sklearn_mixture(config, params).predict_proba(iris.numpy()),
                               rtol=1e-6, atol=1e-12)
    posterior = gmm.posterior(config, params, iris)
    np.testing.assert_allclose(posterior.probs.numpy(), resp.numpy(), rtol=1e-12)


def test_exact_elbo_of_the_posterior_is_log_marginal_and_any_other_q_is_below(iris):
    config = gmm.GMMConfig(dim=4, components=3)
    params = random_params(config, torch.Generator().manual_seed(7))
    log_px = gmm.log_marginal(config, params, iris)
    tight = gmm.elbo(config, params, iris, gmm.log_responsibilities(config, params, iris))
    np.testing.assert_allclose(tight.numpy(), log_px.numpy(), rtol=1e-10)
    loose = gmm.elbo(config, params, iris, torch.zeros(150, 3, dtype=torch.float64))
    assert bool((loose < log_px - 1e-9).all())


# --- the M-step --------------------------------------------------------------------------------


def naive_m_step(x: np.ndarray, resp: np.ndarray, covariance_type: str, reg: float):
    """Weighted means / covariances by the textbook formulas, one component at a time."""
    counts = resp.sum(0)
    means = resp.T @ x / counts[:, None]
    covs = []
    for k in range(resp.shape[1]):
        diff = x - means[k]
        cov = (resp[:, k, None] * diff).T @ diff / counts[k] + reg * np.eye(x.shape[1])
        covs.append(cov)
    covs = np.array(covs)
    if covariance_type == "tied":  # the pooled scatter: Σ_k n_k S_k / N
        eye = reg * np.eye(x.shape[1])
        covs = ((covs - eye) * counts[:, None, None]).sum(0) / counts.sum() + eye
    if covariance_type == "diag":
        covs = np.diagonal(covs, axis1=1, axis2=2)
    elif covariance_type == "spherical":
        covs = np.diagonal(covs, axis1=1, axis2=2).mean(1)
    return counts / x.shape[0], means, covs


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_equals_the_textbook_formulas(iris, covariance_type):
    config = gmm.GMMConfig(dim=4, components=3, covariance_type=covariance_type, reg_covar=1e-3)
    generator = torch.Generator().manual_seed(8)
    resp = torch.rand(150, 3, generator=generator, dtype=torch.float64)
    resp /= resp.sum(1, keepdim=True)
    params = gmm.m_step(config, iris, resp)
    weights, means, covs = naive_m_step(iris.numpy(), resp.numpy(), covariance_type, 1e-3)
    np.testing.assert_allclose(params["weights"].numpy(), weights, rtol=1e-12)
    np.testing.assert_allclose(params["means"].numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(covariances(config, params), covs, rtol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fused_e_step_gives_the_m_step_of_the_responsibilities(iris, covariance_type):
    config = gmm.GMMConfig(dim=4, components=3, covariance_type=covariance_type)
    params = random_params(config, torch.Generator().manual_seed(9))
    statistics, mean_log_likelihood = gmm.e_step(config, params, iris)
    fused = gmm.maximize(config, iris, statistics)
    direct = gmm.m_step(config, iris, gmm.responsibilities(config, params, iris))
    for name in direct:
        np.testing.assert_allclose(fused[name].numpy(), direct[name].numpy(), rtol=1e-9,
                                   atol=1e-12)
    np.testing.assert_allclose(float(mean_log_likelihood),
                               float(gmm.log_marginal(config, params, iris).mean()), rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_both_e_step_routes_give_the_same_m_step(monkeypatch, covariance_type):
    """Quadratic features (EM's fast route) against whitened row blocks, many and one."""
    config = gmm.GMMConfig(dim=3, components=4, covariance_type=covariance_type)
    generator = torch.Generator().manual_seed(10)
    params = random_params(config, generator)
    x, _ = gmm.sample(config, params, 3000, generator)
    x = x + 5.0  # away from the origin: the routes centre differently
    features = gmm._quadratic_features(config, x)
    assert gmm._quadratic_weights(config, params, features)[1] <= gmm.QUADRATIC_ERROR
    routes = {"quadratic": gmm.e_step(config, params, x),
              "whitened": gmm._e_step_whitened(config, params, x)}
    monkeypatch.setitem(gmm.BLOCK_VALUES, "cpu", 1)  # 256-row blocks
    monkeypatch.setattr(gmm_em, "FEATURE_VALUES", 0)  # no features: e_step whitens
    routes["blocks"] = gmm.e_step(config, params, x)
    reference = gmm.m_step(config, x, gmm.responsibilities(config, params, x))
    log_likelihood = float(gmm.log_marginal(config, params, x).mean())
    for statistics, mean_log_likelihood in routes.values():
        np.testing.assert_allclose(float(mean_log_likelihood), log_likelihood, rtol=1e-12)
        fitted = gmm.maximize(config, x, statistics)
        for name, value in reference.items():
            np.testing.assert_allclose(fitted[name].numpy(), value.numpy(), rtol=1e-9)


def test_quadratic_features_follow_the_data_and_step_aside_when_imprecise():
    config = gmm.GMMConfig(dim=2, components=2)
    generator = torch.Generator().manual_seed(14)
    params = random_params(config, generator)
    x, _ = gmm.sample(config, params, 500, generator)
    first = gmm._quadratic_features(config, x)
    assert gmm._quadratic_features(config, x) is first  # kept between EM iterations
    x.mul_(2.0)  # changed in place: new features, right answers
    assert gmm._quadratic_features(config, x) is not first
    _, mean_log_likelihood = gmm.e_step(config, params, x)
    np.testing.assert_allclose(float(mean_log_likelihood),
                               float(gmm.log_marginal(config, params, x).mean()), rtol=1e-12)
    # float32 rows 1e4 from their mean, unit covariances: the quadratic form would lose
    # eps * 1e8 = 12 nats, so the E-step whitens instead and stays right
    far = torch.cat([x[:250] - 1e4, x[250:] + 1e4]).float()
    start = {"weights": params["weights"].float(),
             "means": torch.tensor([[-1e4, -1e4], [1e4, 1e4]]),
             "scale_tril": torch.eye(2).expand(2, 2, 2).clone()}
    features = gmm._quadratic_features(config, far)
    assert gmm._quadratic_weights(config, start, features)[1] > gmm.QUADRATIC_ERROR
    _, single = gmm.e_step(config, start, far)
    exact = gmm.log_marginal(config, {k: v.double() for k, v in start.items()}, far.double())
    assert abs(float(single) - float(exact.mean())) < 1e-3


# --- sampling, synthetic data, starts ------------------------------------------------------------


def test_ancestral_samples_have_the_mixture_moments():
    config = gmm.GMMConfig(dim=2, components=3)
    x, z, truth = gmm.synthetic(20000, torch.Generator().manual_seed(11), torch.float64)
    assert x.shape == (20000, 2) and z.shape == (20000,) and x.dtype == torch.float64
    counts = torch.bincount(z, minlength=3).double() / 20000
    np.testing.assert_allclose(counts.numpy(), truth["weights"].numpy(), atol=0.015)
    for k in range(3):
        rows = x[z == k]
        np.testing.assert_allclose(rows.mean(0).numpy(), truth["means"][k].numpy(), atol=0.06)
        np.testing.assert_allclose(np.cov(rows.numpy().T),
                                   covariances(config, truth)[k], atol=0.08)


def test_kmeans_plus_plus_picks_distinct_data_rows_reproducibly(iris):
    centers, indices = gmm.kmeans_plus_plus(iris, 5, generator=torch.Generator().manual_seed(0))
    again, _ = gmm.kmeans_plus_plus(iris, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(centers, again)
    assert torch.equal(centers, iris[indices])
    assert len(set(map(tuple, centers.tolist()))) == 5


@pytest.mark.parametrize("method", gmm.INIT_METHODS)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_every_init_method_gives_valid_parameters(iris, method, covariance_type):
    config = gmm.GMMConfig(dim=4, components=3, covariance_type=covariance_type)
    params = gmm.initialize(config, iris, torch.Generator().manual_seed(0), method)
    np.testing.assert_allclose(float(params["weights"].sum()), 1.0, rtol=1e-12)
    assert torch.isfinite(gmm.log_marginal(config, params, iris)).all()


# --- the Pyro model -------------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_pyro_model_marginalized_by_enumeration_is_the_closed_form(iris, covariance_type):
    config = gmm.GMMConfig(dim=4, components=3, covariance_type=covariance_type)
    params = random_params(config, torch.Generator().manual_seed(12))
    model = gmm.make_model(config, params)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    loss = elbo.loss(model, lambda *a, **k: None, iris, num_data=150)
    np.testing.assert_allclose(-loss, float(gmm.log_marginal(config, params, iris).sum()),
                               rtol=1e-10)


def test_pyro_model_samples_from_the_prior_and_subsamples():
    config = gmm.GMMConfig(dim=2, components=3, covariance_type="spherical")
    trace = poutine.trace(gmm.make_model(config)).get_trace(num_data=7)
    assert trace.nodes["x"]["value"].shape == (7, 2)
    assert trace.nodes["z"]["value"].shape == (7,)
    assert trace.nodes["x"]["fn"].event_shape == (2,)
    x = torch.randn(50, 2)
    trace = poutine.trace(gmm.make_model(config)).get_trace(x, num_data=50, subsample_size=10)
    index = trace.nodes["data"]["value"]
    assert torch.equal(trace.nodes["x"]["value"], x[index])
    assert {n for n, s in trace.nodes.items() if s["type"] == "param"} == {
        "weights", "means", "scale"}


def test_prior_adds_log_prior_and_em_refuses_it(iris):
    config = gmm.GMMConfig(dim=4, components=3, prior=True)
    params = random_params(config, torch.Generator().manual_seed(13))
    model = gmm.make_model(config, params)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    loss = elbo.loss(model, lambda *a, **k: None, iris, num_data=150)
    expected = gmm.log_marginal(config, params, iris).sum() + gmm.log_prior(config, params)
    np.testing.assert_allclose(-loss, float(expected), rtol=1e-10)
    # an independent check of one term: the Dirichlet(2) density of the weights
    weights = params["weights"].numpy()
    dirichlet = math.lgamma(6.0) + np.log(weights).sum()
    diagonal_only = gmm.GMMConfig(dim=4, components=3, covariance_type="diag", prior=True)
    diag_params = random_params(diagonal_only, torch.Generator().manual_seed(13))
    diag_params["weights"] = params["weights"]
    lognormal = (-np.log(diag_params["scale"].numpy()) - 0.5 * np.log(2 * np.pi * 4.0)
                 - np.log(diag_params["scale"].numpy()) ** 2 / 8.0).sum()
    normal = (-0.5 * np.log(2 * np.pi * 100.0) - diag_params["means"].numpy() ** 2 / 200).sum()
    np.testing.assert_allclose(float(gmm.log_prior(diagonal_only, diag_params)),
                               dirichlet + lognormal + normal, rtol=1e-10)
    with pytest.raises(InputError, match="--inference svi"):
        gmm.SPEC.em.init(config, iris, torch.Generator(), "kmeans++")


def test_spec_is_registered_with_every_guide_and_closed_form():
    spec = get_model("gmm")
    assert spec.em is gmm.SPEC.em and spec.config_class is gmm.SPEC.config_class
    assert set(spec.guides) == {"exact", "mean-field", "amortized", "enumerate"}
    # EM (its default fit), online EM, K-means' M-step and SVI apply; no closed form
    assert all(spec.has(c) for c in (zoo.registry.EM_STEPS, zoo.registry.COMBINABLE_STATISTICS,
                                     zoo.registry.HARD_ASSIGNMENT_M_STEP, zoo.registry.GUIDES))
    assert not spec.has(zoo.registry.CLOSED_FORM)
    assert strategies.get(None, spec).requires == (zoo.registry.EM_STEPS,)
    assert spec.guides["mean-field"].per_datapoint and not spec.guides["exact"].per_datapoint
    assert spec.default_elbo["enumerate"] == "TraceEnum_ELBO"
    assert spec.local_sites == ("z",)
