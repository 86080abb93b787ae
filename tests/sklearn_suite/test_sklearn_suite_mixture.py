"""scikit-learn's ``mixture/tests/test_mixture.py`` against the zoo's GaussianMixture (and
its BayesianGaussianMixture, where the zoo has one)."""

from _shim import load_suite
from expected_failures import HAS_BAYESIAN_MIXTURE

REPLACE = {("sklearn.mixture", "GaussianMixture"): "GaussianMixture"}
if HAS_BAYESIAN_MIXTURE:
    REPLACE[("sklearn.mixture", "BayesianGaussianMixture")] = "BayesianGaussianMixture"

globals().update(load_suite("mixture/tests/test_mixture.py", REPLACE))
