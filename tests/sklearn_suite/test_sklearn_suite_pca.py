"""The probabilistic-PCA tests of scikit-learn's ``decomposition/tests/test_pca.py`` against
the zoo's PPCA (as ``PCA``): those that judge the density (``score``, ``score_samples``,
``get_covariance``, ``get_precision``, ``noise_variance_``)."""

import re

from _shim import load_suite

DENSITY = re.compile(r"\.score\(|score_samples|get_covariance|get_precision|noise_variance_")

globals().update(load_suite(
    "decomposition/tests/test_pca.py", {("sklearn.decomposition", "PCA"): "PPCA"},
    select=lambda name, source: bool(DENSITY.search(source))))
