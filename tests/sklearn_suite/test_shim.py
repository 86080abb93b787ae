"""The shim runs scikit-learn's tests against OUR estimators, and says so when it cannot."""

import pytest
from _shim import load_suite

from inference import estimators_sklearn


def test_the_rewritten_imports_are_the_zoos_and_the_rest_scikit_learns():
    names = load_suite("mixture/tests/test_mixture.py", {
        ("sklearn.mixture", "GaussianMixture"): "GaussianMixture"})
    assert names["GaussianMixture"] is estimators_sklearn.GaussianMixture
    assert names["clone"].__module__ == "sklearn.base"  # untouched imports stay as they were
    pca = load_suite("decomposition/tests/test_pca.py",
                     {("sklearn.decomposition", "PCA"): "PPCA"},
                     select=lambda name, source: name == "test_pca_score3")
    assert pca["PCA"] is estimators_sklearn.PPCA
    assert [name for name in pca if name.startswith("test_")] == ["test_pca_score3"]


def test_an_import_no_longer_in_the_file_is_an_error_not_a_silent_self_test():
    with pytest.raises(ImportError, match="no longer imports"):
        load_suite("mixture/tests/test_mixture.py",
                   {("sklearn.mixture", "NoSuchMixture"): "GaussianMixture"})
