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

Layout: :mod:`.base` (data, fit, partial_fit, score_samples, sample, loading hooks),
:mod:`.mixture`, :mod:`.linear`, :mod:`.deep`, :mod:`.generic`, :mod:`.loading` (``load``),
:mod:`.commands` (``sample_run``, ``predict_run``: the ``lvm-zoo sample`` / ``predict``
commands).
"""

from inference.estimators_sklearn.base import LatentModelEstimator
from inference.estimators_sklearn.deep import DeepLatentGaussian
from inference.estimators_sklearn.generic import PyroLatentModel
from inference.estimators_sklearn.linear import PPCA, FactorAnalysis
from inference.estimators_sklearn.loading import load
from inference.estimators_sklearn.mixture import GaussianMixture

__all__ = ["PPCA", "DeepLatentGaussian", "FactorAnalysis", "GaussianMixture",
           "LatentModelEstimator", "PyroLatentModel", "load"]
