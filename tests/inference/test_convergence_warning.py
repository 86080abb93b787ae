"""A fit that stops at max_iter warns with ConvergenceWarning: scikit-learn's where scikit-learn
is imported (so its users' filters apply), and the zoo's own otherwise, without importing
scikit-learn (1.3 s of a command)."""

import subprocess
import sys
import warnings

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

from inference import convergence
from inference.kmeans import kmeans
from zoo import gmm

UNCONVERGED_WITHOUT_SKLEARN = """
import sys, warnings
import torch
from inference import convergence
from inference.catalog import get_model
from inference.em import fit_em
from zoo import gmm
x, _, _ = gmm.synthetic(300, torch.Generator().manual_seed(0), torch.float64)
spec = get_model("gmm")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fit_em(spec, spec.make_config(x.shape[1], components=3), x, max_iter=1, tol=0.0)
categories = {w.category for w in caught}
assert categories == {convergence.ConvergenceWarning}, categories
assert issubclass(convergence.ConvergenceWarning, UserWarning)
assert "sklearn" not in sys.modules, "warning imported scikit-learn"
print("ok")
"""


def test_without_sklearn_the_warning_is_ours_and_sklearn_stays_unimported():
    done = subprocess.run([sys.executable, "-c", UNCONVERGED_WITHOUT_SKLEARN],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_with_sklearn_imported_its_filters_apply():
    x, _, _ = gmm.synthetic(300, torch.Generator().manual_seed(0), torch.float64)
    assert convergence.category() is SklearnConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error", SklearnConvergenceWarning)
        with pytest.raises(SklearnConvergenceWarning, match="did not converge"):
            kmeans(x, 3, max_iter=1, tol=0.0)
