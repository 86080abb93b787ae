"""The scikit-learn estimators' ``device`` and dtype rules, and their smallest data.

- ``device`` is validated the scikit-learn way (``_parameter_constraints``, its
  ``InvalidParameterError`` text): "auto", "cpu", "cuda", "cuda:N" or a ``torch.device``;
  CUDA asked for where there is none (or a GPU index past the last) is one ``InputError`` line.
- dtype: float32 data give float32 fitted attributes (numpy, as scikit-learn); on the CPU the
  fit computes in float64, on a GPU float32 stays float32.
- 1 and 2 rows: each estimator fits where scikit-learn's fits and refuses where it refuses;
  the deep model refuses fewer than n_components + 2 rows.
- ``gpu`` tests (run with ``-m gpu`` on a CUDA machine): a fit on the GPU against the same fit
  on the CPU, float64 to 1e-8 relative and float32 to the tolerances stated in each test.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn import decomposition as sk_decomposition
from sklearn import mixture as sk_mixture
from sklearn.datasets import load_iris, make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.utils._param_validation import InvalidParameterError
from threadpoolctl import threadpool_limits

from inference.estimators_sklearn import (
    PPCA,
    BayesianGaussianMixture,
    DeepLatentGaussian,
    FactorAnalysis,
    GaussianMixture,
    PyroLatentModel,
)
from zoo.errors import InputError


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _estimators(device):
    """One small estimator of each class on ``device``."""
    return [
        GaussianMixture(2, max_iter=20, random_state=0, device=device),
        GaussianMixture(2, inference="svi", steps=3, random_state=0, device=device),
        BayesianGaussianMixture(n_components=2, max_iter=20, random_state=0, device=device),
        PPCA(1, device=device),
        FactorAnalysis(1, device=device),
        DeepLatentGaussian(1, hidden=(4,), steps=3, jit=False, iwae_samples=4, random_state=0,
                           device=device),
        PyroLatentModel("gmm", model_options={"components": 2}, max_iter=5, random_state=0,
                        device=device),
    ]


X_SMALL = make_blobs(40, 3, centers=2, random_state=0)[0]
NAMES = [type(e).__name__ + ("-svi" if getattr(e, "inference", None) == "svi" else "")
         for e in _estimators("cpu")]


# --- device: validation ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["mps", "banana", "cuda:x", "CPU", "", 3, None,
                                 torch.device("meta")], ids=repr)
@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_a_bad_device_is_sklearns_invalid_parameter_error(index, bad):
    estimator = _estimators(bad)[index]
    name = type(estimator).__name__
    with pytest.raises(InvalidParameterError,
                       match=rf"^The 'device' parameter of {name} must be a str among "
                             r"\{'auto', 'cpu', 'cuda'\} or 'cuda:N' .*\. Got .* instead\.$"):
        estimator.fit(X_SMALL)


@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_cpu_spellings_give_the_cpu_fit(index, monkeypatch):
    """"cpu", torch.device("cpu") and (without CUDA) "auto" are the same fit, bit for bit."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = [_estimators(device)[index].fit(X_SMALL).score(X_SMALL)
                  for device in ("cpu", torch.device("cpu"), "auto")]
    assert np.isfinite(scores[0])
    assert scores[0] == scores[1] == scores[2]


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")], ids=str)
@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_cuda_without_cuda_is_one_clear_line(index, device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    estimator = _estimators(device)[index]
    with pytest.raises(InputError) as raised:
        estimator.fit(X_SMALL)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{type(estimator).__name__}(device='{device}'): no CUDA device "
                              "is available here")
    assert "use device='cpu' or 'auto'" in message


def test_a_gpu_index_past_the_last_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match=r"has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        GaussianMixture(2, device="cuda:2").fit(X_SMALL)


# --- dtype: scikit-learn's rules, computed in float64 on the CPU ------------------------------

FLOAT32_FITS = {
    "GaussianMixture": (lambda: GaussianMixture(2, random_state=0),
                        ("weights_", "means_", "covariances_", "precisions_cholesky_")),
    "BayesianGaussianMixture": (lambda: BayesianGaussianMixture(n_components=2, random_state=0),
                                ("weights_", "means_", "covariances_")),
    "PPCA": (lambda: PPCA(1), ("components_", "explained_variance_", "mean_")),
    "FactorAnalysis": (lambda: FactorAnalysis(1), ("components_", "noise_variance_", "mean_")),
}


@pytest.mark.parametrize("name", sorted(FLOAT32_FITS))
def test_float32_in_float32_numpy_attributes_out(name):
    make, attributes = FLOAT32_FITS[name]
    single = make().fit(X_SMALL.astype(np.float32))
    double = make().fit(X_SMALL)
    for attribute in attributes:
        value = getattr(single, attribute)
        assert isinstance(value, np.ndarray), attribute
        assert value.dtype == np.float32, attribute
        assert getattr(double, attribute).dtype == np.float64, attribute
        # computed in float64 on the CPU: the float32 attribute is the float64 one, rounded
        np.testing.assert_allclose(value, getattr(double, attribute), rtol=2e-6, atol=1e-6)
    assert single.score_samples(X_SMALL.astype(np.float32)).dtype == np.float32
    if hasattr(single, "params_"):  # the zoo's estimators: float64 tensors on the CPU
        assert all(v.dtype == torch.float64 and v.device.type == "cpu"
                   for v in single.params_.values() if v.is_floating_point())


def test_partial_fit_keeps_fits_dtype_rules():
    X32 = X_SMALL.astype(np.float32)
    online = GaussianMixture(2, inference="online-em", random_state=0).partial_fit(X32)
    assert online.means_.dtype == np.float32
    assert online.params_["means"].dtype == torch.float64  # computed in float64 on the CPU
    svi = GaussianMixture(2, inference="svi", steps=3, random_state=0).partial_fit(X32)
    assert svi.means_.dtype == np.float32 and svi.params_["means"].dtype == torch.float64


# --- 1 and 2 rows -----------------------------------------------------------------------------

SKLEARN_TWINS = [
    (lambda: GaussianMixture(), lambda: sk_mixture.GaussianMixture()),
    (lambda: GaussianMixture(2), lambda: sk_mixture.GaussianMixture(2)),
    (lambda: BayesianGaussianMixture(), lambda: sk_mixture.BayesianGaussianMixture()),
    (lambda: BayesianGaussianMixture(n_components=2),
     lambda: sk_mixture.BayesianGaussianMixture(n_components=2)),
    (lambda: PPCA(), lambda: sk_decomposition.PCA()),
    (lambda: PPCA(1), lambda: sk_decomposition.PCA(1)),
    (lambda: FactorAnalysis(), lambda: sk_decomposition.FactorAnalysis()),
    (lambda: FactorAnalysis(1), lambda: sk_decomposition.FactorAnalysis(1)),
]


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("index", range(len(SKLEARN_TWINS)))
def test_one_and_two_rows_fit_where_sklearn_fits(index, rows):
    """Ours fits where scikit-learn's fits and raises a ValueError where it raises."""
    ours, theirs = (make() for make in SKLEARN_TWINS[index])
    X = X_SMALL[:rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            theirs.fit(X)
            refused = None
        except ValueError as error:
            refused = error
        if refused is None:
            ours.fit(X)
            assert ours.n_features_in_ == 3
        else:
            with pytest.raises(ValueError, match="sample|n_components|rows"):
                ours.fit(X)


@pytest.mark.parametrize("rows", [1, 2])
def test_zoo_strategies_on_one_and_two_rows_say_what_they_need(rows):
    X = X_SMALL[:rows]
    with pytest.raises(ValueError, match=r"needs at least|minimum of 2|takes min"):
        PPCA(inference="svi", steps=3).fit(X)
    with pytest.raises(ValueError, match=r"needs at least|minimum of 2|takes min"):
        FactorAnalysis(inference="svi", steps=3).fit(X)
    with pytest.raises(ValueError, match=r"n_components \+ 2 = 4 rows|minimum of 2"):
        DeepLatentGaussian(steps=5).fit(X)
    with pytest.raises(ValueError, match=r"n_components = 3|minimum of 2"):
        GaussianMixture(3, inference="svi", steps=3).fit(X)
    if rows == 2:  # as scikit-learn's EM: K <= N rows is enough
        assert np.isfinite(GaussianMixture(2, inference="svi", steps=3).fit(X).lower_bound_)


def test_deep_model_needs_n_components_plus_two_rows():
    with pytest.raises(ValueError, match=r"n_components=2\) needs at least n_components \+ 2 "
                                         r"= 4 rows to fit, got n_samples=3"):
        DeepLatentGaussian(steps=5).fit(X_SMALL[:3])
    fitted = DeepLatentGaussian(steps=5, hidden=(4,), jit=False, iwae_samples=4,
                                random_state=0, validation=0.0).fit(X_SMALL[:4])
    assert fitted.n_iter_ == 5 and np.isfinite(fitted.lower_bound_)
    # the default holds out a share of the rows: on 4 it would hold out none, and says so
    with pytest.raises(ValueError, match=r"validation=0.1 of 4 training rows holds out 0"):
        DeepLatentGaussian(steps=5, hidden=(4,), jit=False).fit(X_SMALL[:4])
    # a partial_fit batch may be smaller than a fit's data
    online = DeepLatentGaussian(hidden=(4,), jit=False, random_state=0).partial_fit(X_SMALL[:2])
    assert online.n_iter_ == 1


# --- on a GPU ---------------------------------------------------------------------------------

def _blobs():
    return make_blobs(2000, 8, centers=4, cluster_std=2.0, random_state=0)[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("data", ["iris", "blobs"])
def test_gaussian_mixture_on_cuda_is_the_cpu_fit(data, covariance_type):
    X, k = (load_iris().data, 3) if data == "iris" else (_blobs(), 4)
    options = {"covariance_type": covariance_type, "random_state": 0}
    cpu = GaussianMixture(k, **options).fit(X)
    gpu = GaussianMixture(k, device="cuda", **options).fit(X)
    # float64 on the GPU: the same iterations, the same numbers to rounding
    assert gpu.n_iter_ == cpu.n_iter_
    assert gpu.lower_bound_ == pytest.approx(cpu.lower_bound_, rel=1e-9)
    np.testing.assert_allclose(gpu.means_, cpu.means_, rtol=1e-7, atol=1e-9)
    assert isinstance(gpu.means_, np.ndarray) and gpu.means_.dtype == np.float64
    assert gpu.params_["means"].device.type == "cpu"
    np.testing.assert_array_equal(gpu.predict(X), cpu.predict(X))
    # float32 kept float32 on the GPU: fitted attributes float32 numpy; the fit agrees with
    # the float64 one to float32's accuracy (lower bound 1e-4 relative, labels ARI >= 0.99)
    single = GaussianMixture(k, device="cuda", **options).fit(X.astype(np.float32))
    assert single.params_["means"].dtype == torch.float32
    assert single.means_.dtype == single.covariances_.dtype == np.float32
    assert single.lower_bound_ == pytest.approx(cpu.lower_bound_, rel=1e-4)
    assert adjusted_rand_score(cpu.predict(X), single.predict(X.astype(np.float32))) >= 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["PPCA", "FactorAnalysis", "BayesianGaussianMixture"])
def test_linear_models_and_bayesian_mixture_on_cuda_are_the_cpu_fit(name):
    X = _blobs()
    make = {"PPCA": lambda device: PPCA(3, device=device),
            "FactorAnalysis": lambda device: FactorAnalysis(3, svd_method="lapack",
                                                            device=device),
            "BayesianGaussianMixture": lambda device: BayesianGaussianMixture(
                n_components=4, random_state=0, device=device)}[name]
    cpu, gpu = make("cpu").fit(X), make("cuda").fit(X)
    assert gpu.score(X) == pytest.approx(cpu.score(X), rel=1e-8)
    if name != "PPCA":
        assert gpu.n_iter_ == cpu.n_iter_
    single = make("cuda").fit(X.astype(np.float32))
    attribute = "means_" if name == "BayesianGaussianMixture" else "components_"
    assert isinstance(getattr(single, attribute), np.ndarray)
    assert getattr(single, attribute).dtype == np.float32
    # float32 on the GPU: the mean log-likelihood to 1e-4 relative
    assert single.score(X.astype(np.float32)) == pytest.approx(cpu.score(X), rel=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_svi_and_deep_fits_run_on_cuda_in_float32():
    X = _blobs().astype(np.float32)
    for estimator in (GaussianMixture(4, inference="svi", steps=200, random_state=0,
                                      device="cuda"),
                      DeepLatentGaussian(2, hidden=(16,), steps=200, iwae_samples=16,
                                         random_state=0, device="cuda")):
        estimator.fit(X)
        assert all(v.dtype == torch.float32 for v in estimator.params_.values()
                   if v.is_floating_point())
        assert np.isfinite(estimator.score(X))
        assert estimator.n_iter_ == 200
