"""What scikit-learn's own tests show of the zoo's estimators that we do not match.

``EXPECTED_FAILURES[file][pattern]``: a one-line reason; the pattern (``fnmatch``) is a test's
pytest name, with its parameters. Those tests run as strict expected failures inside
``MADE_FOR`` (scikit-learn versions, low inclusive, high exclusive), non-strict outside it. A
pattern that matches nothing (a test missing from the installed scikit-learn) does no harm.
``NOT_APPLICABLE``: tests that never touch the estimator under test (scikit-learn's private
helpers alone, its array-API dispatch, an estimator the zoo lacks); they are deselected, and
the counts in the report leave them out.
"""

import inference.estimators_sklearn as ours

MADE_FOR = ("1.9", "1.10")
HAS_BAYESIAN_MIXTURE = hasattr(ours, "BayesianGaussianMixture")

NOT_APPLICABLE: dict[str, dict[str, str]] = {
    "test_sklearn_suite_mixture.py": {} if HAS_BAYESIAN_MIXTURE else {
        "*BayesianGaussianMixture*": "no BayesianGaussianMixture in the zoo yet",
    },
    "test_sklearn_suite_gaussian_mixture.py": {
        "test_suffstat_sk_*": "scikit-learn's private _estimate_gaussian_covariances_* alone",
        "test_gaussian_suffstat_sk_spherical*": "scikit-learn's private helpers alone",
        "test_compute_log_det_cholesky*": "scikit-learn's private _compute_log_det_cholesky",
        "*array_api*": "scikit-learn's array-API dispatch; the zoo's estimators take device=",
    },
    "test_sklearn_suite_pca.py": {
        "*array_api*": "scikit-learn's array-API dispatch; the zoo's estimators take device=",
    },
    "test_sklearn_suite_bayesian_mixture.py": {
        "test_log_dirichlet_norm": "scikit-learn's private _log_dirichlet_norm alone",
        "test_log_wishart_norm": "scikit-learn's private _log_wishart_norm alone",
    },
}

EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    "test_sklearn_suite_gaussian_mixture.py": {
        "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters*":
            "mocks scikit-learn's private _estimate_gaussian_parameters, which we never call",
    },
}
