"""The zoo's GaussianMixture and FactorAnalysis give scikit-learn's results from the same
``random_state``: every ``init_params`` and covariance type, on three datasets.

Datasets: iris (150 x 4, K=3), wine standardized (178 x 13, K=3) and a synthetic blob set
(``make_blobs(300, 4, centers=4, cluster_std=1.5, random_state=0)``, K=4); for factor analysis
iris (q=2), wine standardized (q=3), and a synthetic two-factor set whose last feature is the
sum of two others plus noise of standard deviation 1e-4 (near-noiseless: its psi is ~3e-9).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn import decomposition as sk_decomposition
from sklearn import mixture as sk_mixture
from sklearn.datasets import load_iris, load_wine, make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler

from inference.estimators_sklearn import PPCA, FactorAnalysis, GaussianMixture


def _near_noiseless() -> np.ndarray:
    rng = np.random.RandomState(0)
    x = rng.randn(300, 2) @ rng.randn(2, 6) + 0.5 * rng.randn(300, 6)
    x[:, 5] = x[:, 0] + x[:, 1] + 1e-4 * rng.randn(300)
    return x


MIXTURES = {
    "iris": (load_iris().data, 3),
    "wine": (StandardScaler().fit_transform(load_wine().data), 3),
    "blobs": (make_blobs(300, 4, centers=4, cluster_std=1.5, random_state=0)[0], 4),
}
FACTORS = {
    "iris": (load_iris().data, 2),
    "wine": (StandardScaler().fit_transform(load_wine().data), 3),
    "near-noiseless": (_near_noiseless(), 2),
}


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
@pytest.mark.parametrize("name", sorted(MIXTURES))
def test_gaussian_mixture_is_sklearns_from_the_same_random_state(name, init_params,
                                                                 covariance_type):
    X, k = MIXTURES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for seed in (0, 1):
            options = {"covariance_type": covariance_type, "init_params": init_params,
                       "random_state": seed}
            ours = GaussianMixture(k, **options).fit(X)
            theirs = sk_mixture.GaussianMixture(k, **options).fit(X)
            assert ours.n_iter_ == theirs.n_iter_
            assert ours.converged_ == theirs.converged_
            assert ours.score(X) == pytest.approx(theirs.score(X), abs=1e-6)
            assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, abs=1e-6)
            assert adjusted_rand_score(theirs.predict(X), ours.predict(X)) == 1.0
            assert ours.covariances_.shape == theirs.covariances_.shape


def test_n_init_and_a_random_state_instance_draw_sklearns_restarts():
    """n_init restarts come from one stream, consumed restart after restart."""
    X, k = MIXTURES["wine"]
    ours = GaussianMixture(k, n_init=4, init_params="random_from_data",
                           random_state=np.random.RandomState(3)).fit(X)
    theirs = sk_mixture.GaussianMixture(k, n_init=4, init_params="random_from_data",
                                        random_state=np.random.RandomState(3)).fit(X)
    # a RandomState instance is consumed as scikit-learn consumes it: the same 4 starts
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.score(X) == pytest.approx(theirs.score(X), abs=1e-6)
    same = GaussianMixture(k, n_init=4, init_params="random_from_data", random_state=3).fit(X)
    sklearn_same = sk_mixture.GaussianMixture(k, n_init=4, init_params="random_from_data",
                                              random_state=3).fit(X)
    assert same.n_iter_ == sklearn_same.n_iter_
    assert same.score(X) == pytest.approx(sklearn_same.score(X), abs=1e-6)


def test_warm_start_of_one_iteration_converges_as_sklearn():
    X, k = MIXTURES["blobs"]
    ours = GaussianMixture(k, warm_start=True, max_iter=1, random_state=0)
    theirs = sk_mixture.GaussianMixture(k, warm_start=True, max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for fit in range(1, 100):  # noqa: B007 - the number of fits is checked
            ours.fit(X)
            theirs.fit(X)
            assert ours.converged_ == theirs.converged_
            assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, abs=1e-9)
            if theirs.converged_:
                break
    assert ours.converged_ and fit >= 2  # scikit-learn: after the second fit


def test_float32_in_gives_float32_out():
    X = MIXTURES["iris"][0].astype(np.float32)
    model = GaussianMixture(3, covariance_type="tied", random_state=0).fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(model, name).dtype == np.float32, name
    assert model.score_samples(X).dtype == model.predict_proba(X).dtype == np.float32
    fa = FactorAnalysis(2).fit(X)
    assert fa.components_.dtype == fa.noise_variance_.dtype == fa.transform(X).dtype \
        == np.float32


@pytest.mark.parametrize("name", sorted(FACTORS))
def test_factor_analysis_is_sklearns(name):
    """scikit-learn's SVD iteration, step for step: the same iterations, log-likelihoods,
    loadings (up to each factor's sign) and noise variances, the near-noiseless one too."""
    X, q = FACTORS[name]
    ours = FactorAnalysis(q, svd_method="lapack").fit(X)
    theirs = sk_decomposition.FactorAnalysis(q, svd_method="lapack").fit(X)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loglike_, theirs.loglike_,
                               rtol=1e-10 if name != "near-noiseless" else 1e-5)
    assert ours.score(X) == pytest.approx(theirs.score(X), abs=1e-6)
    tight = name != "near-noiseless"  # psi ~ 3e-9 there: 1e-5 relative is rounding
    np.testing.assert_allclose(ours.noise_variance_, theirs.noise_variance_,
                               rtol=1e-9 if tight else 1e-4, atol=0)
    np.testing.assert_allclose(np.abs(ours.components_), np.abs(theirs.components_),
                               atol=1e-10 if tight else 1e-4)
    np.testing.assert_allclose(ours.get_covariance(), theirs.get_covariance(),
                               rtol=1e-8, atol=1e-10 if tight else 1e-7)
    # scikit-learn's default (randomized SVD) approximates the same iteration
    default = sk_decomposition.FactorAnalysis(q).fit(X)
    assert FactorAnalysis(q).fit(X).score(X) == pytest.approx(default.score(X), abs=1e-4)


@pytest.mark.parametrize("n_components, rows", [(None, 40), (0, 40), (4, 40), (2, 3)])
def test_factor_analysis_takes_what_sklearn_takes(n_components, rows):
    """n_components None (= n_features), 0 (noise only), n_features, and fewer rows than
    factors: scikit-learn's numbers."""
    X = _near_noiseless()[:rows, :4]
    ours = FactorAnalysis(n_components, svd_method="lapack").fit(X)
    theirs = sk_decomposition.FactorAnalysis(n_components, svd_method="lapack").fit(X)
    assert ours.components_.shape == theirs.components_.shape
    assert ours.n_iter_ == theirs.n_iter_
    # with 3 rows the log-likelihood climbs without bound as psi falls to its floor, and the
    # two SVDs' rounding (MKL's and OpenBLAS's) grows with it: 3.6e-5 apart on an AVX-512 CPU
    np.testing.assert_allclose(ours.loglike_, theirs.loglike_, rtol=1e-9 if rows > 3 else 1e-4)
    if rows > 3:  # with 3 rows psi sits at its 1e-12 floor: C is singular
        assert ours.score(X) == pytest.approx(theirs.score(X), rel=1e-8)
    np.testing.assert_allclose(ours.noise_variance_, theirs.noise_variance_, rtol=1e-6,
                               atol=1e-12)


@pytest.mark.parametrize("rotation", ["varimax", "quartimax"])
def test_factor_rotations_keep_the_covariance_and_match_sklearn(rotation):
    X, q = FACTORS["wine"]
    ours = FactorAnalysis(q, rotation=rotation, svd_method="lapack").fit(X)
    theirs = sk_decomposition.FactorAnalysis(q, rotation=rotation, svd_method="lapack").fit(X)
    plain = FactorAnalysis(q, svd_method="lapack").fit(X)
    np.testing.assert_allclose(ours.get_covariance(), plain.get_covariance(), atol=1e-10)
    assert not np.allclose(ours.components_, plain.components_, atol=1e-3)
    # the same rotated loadings up to each factor's sign and order
    cross = np.abs(ours.components_ @ theirs.components_.T)
    norms = np.linalg.norm(ours.components_, axis=1)[:, None] * np.linalg.norm(
        theirs.components_, axis=1)[None, :]
    np.testing.assert_allclose(np.sort((cross / norms).max(1)), np.ones(q), atol=1e-6)


def test_ppca_n_components_from_zero_to_n_features_and_fractions():
    X = MIXTURES["iris"][0]
    sk = sk_decomposition.PCA
    for q in (0, 4):
        ours = PPCA(q).fit(X)
        assert ours.n_components_ == q
        np.testing.assert_allclose(ours.get_covariance() @ ours.get_precision(), np.eye(4),
                                   atol=1e-9)
        # the ML covariance is scikit-learn's (N - 1) one times (N - 1) / N where q = D
        if q == 4:
            assert ours.noise_variance_ == 0
            np.testing.assert_allclose(ours.get_covariance(),
                                       sk(q).fit(X).get_covariance() * 149 / 150, rtol=1e-10)
    assert PPCA(0.95).fit(X).n_components_ == sk(0.95).fit(X).n_components_
    # Minka's MLE of the dimension: scikit-learn's choice on three datasets
    rng = np.random.RandomState(0)
    low_rank = rng.randn(200, 5) @ rng.randn(5, 10) + 0.1 * rng.randn(200, 10)
    for data in (X, MIXTURES["wine"][0], low_rank):
        assert PPCA("mle").fit(data).n_components_ == sk("mle").fit(data).n_components_
    with pytest.raises(ValueError, match="only supported if n_samples >= n_features"):
        PPCA("mle").fit(low_rank[:5])


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_sample_draws_sklearns_rows(covariance_type):
    X, k = MIXTURES["iris"]
    ours = GaussianMixture(k, covariance_type=covariance_type, random_state=0).fit(X)
    theirs = sk_mixture.GaussianMixture(k, covariance_type=covariance_type,
                                        random_state=0).fit(X)
    x, y = ours.sample(500)
    x_sk, y_sk = theirs.sample(500)
    np.testing.assert_array_equal(y, y_sk)
    np.testing.assert_allclose(x, x_sk, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FACTORS))
def test_ppca_whiten_density_is_sklearns_formula(name):
    """``whiten=True``: score, score_samples, get_covariance and get_precision are those of
    scikit-learn's own ``PCA`` code evaluated on our fitted attributes (its whitened density,
    which scales each component by sqrt(explained variance)), and differ from the
    unwhitened model's."""
    X, q = FACTORS[name]
    ours = PPCA(q, whiten=True).fit(X)
    theirs = sk_decomposition.PCA(q, whiten=True).fit(X)
    for attribute in ("components_", "explained_variance_", "noise_variance_", "mean_"):
        setattr(theirs, attribute, getattr(ours, attribute))  # scikit-learn's code, our fit
    np.testing.assert_allclose(ours.get_covariance(), theirs.get_covariance(), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(ours.get_precision(), theirs.get_precision(), rtol=1e-7,
                               atol=1e-9 * np.abs(theirs.get_precision()).max())
    np.testing.assert_allclose(ours.score_samples(X), theirs.score_samples(X), rtol=1e-9)
    assert ours.score(X) == pytest.approx(theirs.score(X), rel=1e-10)
    plain = PPCA(q).fit(X)
    assert plain.score(X) > ours.score(X)  # scikit-learn's test_pca_score: whitening costs


def test_dropin_benchmark_runs_at_smoke_size_and_agrees():
    """``benchmarks/sklearn_dropin.py`` (the speed figure against scikit-learn) at a small N:
    it exits 0 only where both estimators end with the same n_iter_ and lower_bound_."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "sklearn_dropin.py"), "--num-data", "3000",
         "--dim", "4", "--components", "3", "--threads", "1"],
        capture_output=True, text=True, cwd=root, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same fit: True" in done.stdout
