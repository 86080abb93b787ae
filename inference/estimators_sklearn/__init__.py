"""The zoo's models as scikit-learn estimators.

``GaussianMixture``, ``PPCA`` and ``FactorAnalysis`` are drop-in for scikit-learn's
``GaussianMixture``, ``PCA`` (as a density) and ``FactorAnalysis``: the same parameter names,
defaults and fitted attributes, plus ``inference`` / ``guide`` / ``elbo`` / ``steps`` / ``lr``
/ ``device``. ``DeepLatentGaussian`` is the deep latent-variable model (the VAE), and
``PyroLatentModel("file.py:NAME")`` any model declared with :func:`zoo.declare`. All of them
fit through :func:`inference.strategies.fit` and judge by the zoo's yardstick (exact log p(x)
or IWAE-K), so they work in ``Pipeline``, ``GridSearchCV`` (``score`` is the mean held-out
log-likelihood) and ``clone``. :func:`load` turns a saved run folder into a fitted estimator::

    from inference.estimators_sklearn import GaussianMixture, load
    GaussianMixture(3, inference="svi", guide="amortized").fit(X).score(X_test)
    load("runs/my-fit").score_samples(X)

scikit-learn's own test files run against these estimators (``tests/sklearn_suite``: the
installed scikit-learn's ``test_gaussian_mixture.py``, ``test_mixture.py``,
``test_factor_analysis.py`` and the density tests of ``test_pca.py``, imports rewritten), with
the expected failures listed there, each with its reason. Documented differences:

- ``PPCA.transform`` is the posterior mean E[z | x] (a shrunken projection on PCA's subspace),
  its covariance the maximum-likelihood one (divided by N, not N - 1), its noise variance the
  mean of all D - q discarded eigenvalues (Tipping & Bishop); every ``svd_solver`` is the
  exact eigendecomposition. ``whiten=True`` is scikit-learn's: ``score``, ``score_samples``,
  ``get_covariance`` and ``get_precision`` describe ``PCA``'s whitened density (each
  component scaled by the square root of its explained variance, scikit-learn's issue
  #13898), not the fitted model that ``sample`` draws from; ``transform`` whitens the
  posterior mean.
- ``FactorAnalysis(svd_method="randomized")`` computes the SVD exactly.
- ``GaussianMixture.history_`` ends with log p(x) of the returned parameters.
- Every estimator adds ``inference`` / ``guide`` / ``elbo`` / ``steps`` / ``lr`` /
  ``device``, and the fitted ``params_`` / ``history_``.

Layout: :mod:`.base` (data, fit, partial_fit, score_samples, sample, loading hooks) with
:mod:`.support` (its helpers) and :mod:`.continuation` (SVI ``partial_fit``), :mod:`.mixture`
with :mod:`.mixture_init` (the ``*_init`` checks) and :mod:`.mixture_online` (online EM),
:mod:`.starts` (scikit-learn's mixture starts), :mod:`.linear`,
:mod:`.deep`, :mod:`.generic`, :mod:`.loading` (``load``),
:mod:`.commands` (``sample_run``, ``predict_run``: the ``lvm-zoo sample`` / ``predict``
commands).
"""

from inference.estimators_sklearn.base import LatentModelEstimator
from inference.estimators_sklearn.bayesian_mixture import BayesianGaussianMixture
from inference.estimators_sklearn.deep import DeepLatentGaussian
from inference.estimators_sklearn.generic import PyroLatentModel
from inference.estimators_sklearn.linear import PPCA, FactorAnalysis
from inference.estimators_sklearn.loading import load
from inference.estimators_sklearn.mixture import GaussianMixture

__all__ = ["PPCA", "BayesianGaussianMixture", "DeepLatentGaussian", "FactorAnalysis",
           "GaussianMixture", "LatentModelEstimator", "PyroLatentModel", "load"]
