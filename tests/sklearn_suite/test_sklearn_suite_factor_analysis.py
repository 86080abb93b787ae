"""scikit-learn's ``decomposition/tests/test_factor_analysis.py`` against the zoo's
FactorAnalysis."""

from _shim import load_suite

globals().update(load_suite("decomposition/tests/test_factor_analysis.py", {
    ("sklearn.decomposition", "FactorAnalysis"): "FactorAnalysis"}))
