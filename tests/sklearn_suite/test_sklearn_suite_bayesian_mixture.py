"""scikit-learn's ``mixture/tests/test_bayesian_mixture.py`` against the zoo's
BayesianGaussianMixture (CAVI, :mod:`inference.estimators_sklearn.bayesian_mixture`)."""

from _shim import load_suite

globals().update(load_suite("mixture/tests/test_bayesian_mixture.py", {
    ("sklearn.mixture", "BayesianGaussianMixture"): "BayesianGaussianMixture"}))
