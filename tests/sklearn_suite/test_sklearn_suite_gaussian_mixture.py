"""scikit-learn's ``mixture/tests/test_gaussian_mixture.py`` against the zoo's GaussianMixture."""

from _shim import load_suite

globals().update(load_suite("mixture/tests/test_gaussian_mixture.py", {
    ("sklearn.mixture", "GaussianMixture"): "GaussianMixture"}))
