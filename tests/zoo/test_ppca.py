"""PPCA and factor analysis: closed forms against scikit-learn and brute-force Gaussians, EM
against the closed form, bad input, and the linear autoencoder that finds the PCA subspace."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA, FactorAnalysis

from inference import strategies
from inference.catalog import get_model
from inference.em import fit_em
from inference.strategies import fit
from zoo import ppca
from zoo.errors import InputError
from zoo.registry import CLOSED_FORM, EM_STEPS


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return torch.from_numpy(load_digits().data).double()  # (1797, 64), raw pixel counts 0..16


def synthetic(name: str, num_data: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    x, _, truth = get_model(name).synthetic(num_data, torch.Generator().manual_seed(seed),
                                            torch.float64)
    return x, truth


def digits_without_constant_columns(digits: torch.Tensor) -> torch.Tensor:
    """600 digits (scikit-learn's FactorAnalysis takes ~20 s on all 1797 on two shared cores)
    without the columns that are constant there (factor analysis rejects those)."""
    x = digits[:600]
    return x[:, x.var(0) > 0]


def mean_log_marginal(spec, config, params, x) -> float:
    return spec.log_marginal(config, params, x).mean().item()


def sklearn_pca_params(pca: PCA) -> dict:
    """scikit-learn's PCA as PPCA parameters (its covariance is W W^T + sigma^2 I)."""
    scale = np.sqrt(pca.explained_variance_ - pca.noise_variance_)
    return {"loc": torch.from_numpy(pca.mean_),
            "weight": torch.from_numpy(pca.components_.T * scale),
            "noise": torch.tensor(pca.noise_variance_)}


def largest_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(subspace_angles(a.numpy(), b.numpy()).max())


# --- exact log-likelihood -----------------------------------------------------------------


@pytest.mark.parametrize("data", ["digits", "synthetic"])
def test_closed_form_log_likelihood_equals_sklearn_pca_score(data, digits):
    x = digits if data == "digits" else synthetic("ppca", 5000)[0]
    num_data, dim = x.shape
    spec, latent_dim = get_model("ppca"), 2
    config = spec.make_config(dim, latent_dim=latent_dim)
    ours = mean_log_marginal(spec, config, spec.closed_form(config, x), x)
    pca = PCA(n_components=latent_dim).fit(x.numpy())
    reference = pca.score(x.numpy())
    # the formula itself, at scikit-learn's parameters
    assert mean_log_marginal(spec, config, sklearn_pca_params(pca), x) == pytest.approx(
        reference, abs=1e-6)
    # scikit-learn divides the covariance by N - 1, maximum likelihood by N: its covariance is
    # k = N / (N - 1) times ours, which costs exactly D/2 (log k + 1/k - 1) nats per datapoint
    k = num_data / (num_data - 1)
    assert ours - dim / 2 * (math.log(k) + 1 / k - 1) == pytest.approx(reference, abs=1e-6)
    assert ours >= reference  # ours is the maximum
    if num_data >= 5000:  # there the N - 1 makes no difference at 1e-6
        assert ours == pytest.approx(reference, abs=1e-6)


@pytest.mark.parametrize("name", ["ppca", "fa"])
def test_log_marginal_matches_dense_gaussian(name):
    x, truth = synthetic(name, 300)
    spec = get_model(name)
    config = spec.make_config(10, latent_dim=3)
    covariance = truth["weight"] @ truth["weight"].T + torch.diag(truth["noise"].expand(10))
    dense = torch.distributions.MultivariateNormal(truth["loc"], covariance).log_prob(x)
    torch.testing.assert_close(spec.log_marginal(config, truth, x), dense, rtol=0, atol=1e-9)


@pytest.mark.parametrize("data", ["digits", "synthetic"])
def test_fa_log_likelihood_equals_sklearn_score_at_its_parameters(data, digits):
    x = digits_without_constant_columns(digits) if data == "digits" else synthetic("fa", 1000)[0]
    spec, latent_dim = get_model("fa"), 3
    config = spec.make_config(x.shape[1], latent_dim=latent_dim)
    fa = FactorAnalysis(latent_dim, random_state=0).fit(x.numpy())
    params = {"loc": torch.from_numpy(fa.mean_), "weight": torch.from_numpy(fa.components_.T),
              "noise": torch.from_numpy(fa.noise_variance_)}
    assert mean_log_marginal(spec, config, params, x) == pytest.approx(fa.score(x.numpy()),
                                                                       abs=1e-6)


# --- exact posterior ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ppca", "fa"])
def test_posterior_equals_brute_force_gaussian_conditioning(name):
    x, truth = synthetic(name, 50)
    spec = get_model(name)
    config = spec.make_config(10, latent_dim=3)
    weight, psi = truth["weight"], truth["noise"].expand(10)
    # (z, x) is jointly Gaussian: p(z | x) = N(W^T C^-1 (x - mu), I - W^T C^-1 W), C is D x D
    covariance = weight @ weight.T + torch.diag(psi)
    gain = torch.linalg.solve(covariance, weight).T  # W^T C^-1, (q, D)
    exact = spec.posterior(config, truth, x)
    assert exact.batch_shape == (50,) and exact.event_shape == (3,)
    torch.testing.assert_close(exact.mean, (x - truth["loc"]) @ gain.T, rtol=0, atol=1e-10)
    torch.testing.assert_close(exact.covariance_matrix[0], torch.eye(3, dtype=x.dtype)
                               - gain @ weight, rtol=0, atol=1e-12)
    if name == "ppca":
        # the course note's M: the q x q matrix W^T W + sigma^2 I, not W W^T + sigma^2 I (D x D)
        noise = truth["noise"]
        m = weight.T @ weight + noise * torch.eye(3, dtype=x.dtype)
        torch.testing.assert_close(exact.covariance_matrix[0], noise * torch.linalg.inv(m))
        torch.testing.assert_close(exact.mean, (x - truth["loc"]) @ weight @ torch.linalg.inv(m))
        assert (weight @ weight.T).shape == (10, 10) != m.shape


# --- EM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["digits", "synthetic"])
def test_em_converges_monotonically_to_the_closed_form(data, digits):
    x = digits if data == "digits" else synthetic("ppca", 1000)[0]
    spec = get_model("ppca")
    config = spec.make_config(x.shape[1], latent_dim=2 if data == "digits" else 3)
    exact = spec.closed_form(config, x)
    result = fit_em(spec, config, x, tol=1e-11, max_iter=3000, seed=1)
    history = np.array(result.history["log_likelihood"])
    assert result.converged
    assert np.diff(history).min() >= -1e-10  # EM never decreases the likelihood
    optimum = mean_log_marginal(spec, config, exact, x)
    assert abs(history[-1] - optimum) < 1e-4
    assert history[-1] == pytest.approx(mean_log_marginal(spec, config, result.params, x),
                                        abs=1e-9)  # the history is log p(x) at the params
    assert largest_angle(result.params["weight"], exact["weight"]) < 1e-3
    assert result.params["noise"].item() == pytest.approx(exact["noise"].item(), rel=1e-4)


@pytest.mark.parametrize("data", ["digits", "synthetic"])
def test_fa_em_reaches_sklearn_score_monotonically(data, digits):
    x = digits_without_constant_columns(digits) if data == "digits" else synthetic("fa", 1000)[0]
    spec, latent_dim = get_model("fa"), 3
    config = spec.make_config(x.shape[1], latent_dim=latent_dim)
    reference = FactorAnalysis(latent_dim, random_state=0).fit(x.numpy()).score(x.numpy())
    result = fit_em(spec, config, x, tol=1e-9, max_iter=3000, seed=0)
    assert result.converged
    history = np.array(result.history["log_likelihood"])
    # monotone up to float64 rounding: on the digits two psi_d sit at their floor (a Heywood
    # case), where the posterior's condition number is ~1e7 and log p(x) carries ~1e-10 of noise
    assert np.diff(history).min() >= -1e-10 * abs(history[-1])
    assert history[-1] >= reference - 1e-6


def test_fa_recovers_the_true_covariance():
    x, truth = synthetic("fa", 20000)
    spec = get_model("fa")
    config = spec.make_config(10, latent_dim=3)
    fitted = fit_em(spec, config, x, tol=1e-9, max_iter=2000).params

    def covariance(p):
        return p["weight"] @ p["weight"].T + torch.diag(p["noise"])

    error = (covariance(fitted) - covariance(truth)).abs().max()
    assert error < 0.1 * covariance(truth).diagonal().max()


def test_map_em_is_a_stationary_point_of_the_penalized_likelihood():
    x, _ = synthetic("ppca", 200)
    spec = get_model("ppca")
    ml_config = spec.make_config(10, latent_dim=3)
    config = spec.make_config(10, latent_dim=3, prior_precision=50.0)
    result = fit_em(spec, config, x, tol=1e-12, max_iter=5000)
    assert np.diff(result.history["log_likelihood"]).min() >= -1e-10
    params = {k: v.clone().requires_grad_() for k, v in result.params.items()}
    log_prior = (-25.0 * params["weight"].square().sum()  # log N(W | 0, I / 50), by hand
                 + params["weight"].numel() / 2 * math.log(50.0 / (2 * math.pi)))
    objective = spec.log_marginal(config, params, x).mean() + log_prior / x.shape[0]
    assert result.history["log_likelihood"][-1] == pytest.approx(objective.item(), abs=1e-10)
    gradients = torch.autograd.grad(objective, list(params.values()))
    assert max(g.abs().max().item() for g in gradients) < 1e-5  # a wrong ridge gives ~1e-2
    ml_weight = spec.closed_form(ml_config, x)["weight"]
    assert result.params["weight"].norm() < ml_weight.norm()  # the prior shrinks W


# --- the one-pass moments and sampling ------------------------------------------------------


def test_moments_in_float32_survive_a_large_mean():
    generator = torch.Generator().manual_seed(0)
    x64 = 1e4 + torch.randn(50000, 8, generator=generator, dtype=torch.float64) @ torch.randn(
        8, 8, generator=generator, dtype=torch.float64)
    result = ppca.moments(x64.float())
    reference = torch.cov(x64.T, correction=0)
    assert (result.covariance.double() - reference).abs().max() < 1e-3 * reference.abs().max()
    torch.testing.assert_close(result.mean.double(), x64.mean(0), rtol=1e-6, atol=0)


def test_cached_moments_follow_in_place_changes():
    x, _ = synthetic("ppca", 100)
    before = ppca.data_moments(x).mean.clone()
    x += 1.0
    torch.testing.assert_close(ppca.data_moments(x).mean, before + 1.0)


def test_ancestral_samples_have_the_model_covariance():
    _, truth = synthetic("ppca", 10)
    spec = get_model("ppca")
    x, z = spec.sample(spec.make_config(10, latent_dim=3), truth, 100000,
                       torch.Generator().manual_seed(1))
    assert x.shape == (100000, 10) and z.shape == (100000, 3)
    covariance = truth["weight"] @ truth["weight"].T + truth["noise"] * torch.eye(10,
                                                                                 dtype=x.dtype)
    assert (torch.cov(x.T) - covariance).abs().max() < 0.1


def test_model_samples_from_the_prior_and_scores_data():
    spec = get_model("ppca")
    config = spec.make_config(10, latent_dim=3)
    _, truth = synthetic("ppca", 10)
    model = spec.make_model(config, truth, fixed=True)
    x = model(num_data=7)
    assert x.shape == (7, 10) and x.dtype == torch.float64
    model_float = spec.make_model(config)
    assert model_float(torch.zeros(4, 10)).dtype == torch.float32


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ppca", "fa"])
@pytest.mark.parametrize("latent_dim, num_data, message", [
    (64, 100, "latent_dim=64 must be below the data dimension 64; use at most 63"),
    (0, 100, "latent_dim=0 must be at least 1"),
    (5, 5, "latent_dim=5 needs at least 7 datapoints"),
])
def test_bad_sizes_have_clear_messages(name, latent_dim, num_data, message):
    spec = get_model(name)
    x = torch.randn(num_data, 64, dtype=torch.float64)
    config = spec.make_config(64, latent_dim=latent_dim)
    with pytest.raises(InputError, match=message):
        config.validate(num_data)
    with pytest.raises(InputError, match=message):
        fit(spec, config, x)


def test_factor_analysis_rejects_a_constant_column(digits):
    spec = get_model("fa")
    config = spec.make_config(64, latent_dim=2)
    with pytest.raises(InputError, match=r"constant \(columns 0, 32, 39\).*use ppca"):
        fit(spec, config, digits, inference="em")
    with pytest.raises(InputError, match="no closed form"):
        ppca.closed_form(config, digits)


def test_other_bad_input():
    spec = get_model("ppca")
    x = torch.randn(100, 8, dtype=torch.float64)
    with pytest.raises(InputError, match="do not match dim=6"):
        spec.closed_form(spec.make_config(6, latent_dim=2), x)
    with pytest.raises(InputError, match="prior_precision=-1"):
        spec.make_config(8, prior_precision=-1.0).validate(100)
    with pytest.raises(InputError, match="MAP estimate, which has no closed form"):
        spec.closed_form(spec.make_config(8, prior_precision=1.0), x)
    flat = torch.randn(100, 2, dtype=torch.float64) @ torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(InputError, match="subspace of at most 2 dimensions"):
        spec.closed_form(spec.make_config(8, latent_dim=2), flat)


# --- the optimal linear autoencoder is PCA --------------------------------------------------


def test_linear_autoencoder_trained_by_least_squares_spans_the_pca_subspace(digits):
    """x -> x E -> x E B, trained by alternating exact least-squares solves for the decoder B
    (given the codes) and the encoder E (given B); no probabilistic model anywhere."""
    x = digits[:500]
    centred = x - x.mean(0)
    latent_dim = 3
    encoder = torch.randn(64, latent_dim, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)
    errors = []
    for _ in range(300):
        decoder = torch.linalg.lstsq(centred @ encoder, centred).solution  # (q, D)
        encoder = torch.linalg.pinv(decoder)  # the least-squares encoder for this decoder
        errors.append((centred - centred @ encoder @ decoder).square().mean().item())
    assert np.diff(errors).max() <= 1e-9  # each solve can only lower the error
    config = get_model("ppca").make_config(64, latent_dim=latent_dim)
    pca_weight = ppca.closed_form(config, x)["weight"]
    assert largest_angle(decoder.T, pca_weight) < 1e-3
    assert largest_angle(encoder, pca_weight) < 1e-3
    # and its error is PCA's: the sum of the discarded eigenvalues, per coordinate
    eigenvalues = torch.linalg.eigvalsh(torch.cov(centred.T, correction=0)).flip(0)
    assert errors[-1] == pytest.approx(eigenvalues[latent_dim:].sum().item() / 64, rel=1e-6)


# --- registration and figures -----------------------------------------------------------------


def test_both_models_are_registered_with_their_closed_forms():
    ppca_spec, fa_spec = get_model("ppca"), get_model("fa")
    # PPCA's default fit is its closed form; factor analysis has none, so EM is its default
    assert ppca_spec.has(CLOSED_FORM) and not fa_spec.has(CLOSED_FORM)
    assert strategies.get(None, ppca_spec).requires == (CLOSED_FORM,)
    assert strategies.get(None, fa_spec).requires == (EM_STEPS,)
    for spec in (ppca_spec, fa_spec):
        assert set(spec.guides) == {"exact", "mean-field", "amortized", "amortized-mlp"}
        assert spec.local_sites == ("z",) and spec.default_guide == "exact"
        config = spec.make_config(64, latent_dim=3, prior_precision=0.5)
        assert (config.dim, config.latent_dim, config.prior_precision) == (64, 3, 0.5)
    assert ppca_spec.default_data == "digits"
    x, labels, truth = fa_spec.synthetic(50, torch.Generator().manual_seed(0), torch.float32)
    assert x.shape == (50, 10) and labels is None and truth["noise"].shape == (10,)


def test_figures_are_written(tmp_path, digits):
    from types import SimpleNamespace

    import inference.figures.ppca  # noqa: F401  (registers the figures)
    from inference.figures import MODEL_FIGURES

    dataset = SimpleNamespace(train=digits[:300].float(),
                              train_labels=torch.from_numpy(load_digits().target[:300]))
    spec = get_model("ppca")
    config = spec.make_config(64, latent_dim=3)
    result = fit(spec, config, dataset.train, inference="closed-form")
    paths = MODEL_FIGURES["ppca"](dataset, config, result, tmp_path)
    assert [p.name for p in paths] == ["latent_means.png", "spectrum.png",
                                       "posterior_ellipses.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    assert MODEL_FIGURES["fa"] is MODEL_FIGURES["ppca"]
