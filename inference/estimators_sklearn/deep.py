"""``DeepLatentGaussian``: the deep Gaussian latent-variable model (the VAE) as an estimator.

    z ~ N(0, I_q),  x | z ~ N(mu(z), diag sigma^2(z))  (or Bernoulli(sigmoid(f(z))))

fitted by SVI with the amortized encoder (default) or free per-row Gaussians
(``guide="mean-field"``). ``n_components`` is q (the config's ``latent_dim``); ``hidden``,
``likelihood``, ``variance``, ``fixed_variance``, ``min_scale``, ``beta`` and ``epochs`` are the
config's fields (:class:`zoo.dglvm.DGLVMConfig`); ``steps`` (default: ``epochs`` passes over
the data), ``lr``, ``batch_size``, ``elbo``, ``num_particles``, ``jit`` (None: the model's
choice, a JIT-compiled ELBO) are SVI's and ``tol`` its stopping rule's ``stop_tol`` (nats per
datapoint per window; 0 runs every step); ``validation`` is the share of the rows SVI holds out
to choose the parameters kept and stop early (None: the model's default; 0: none; see
:mod:`inference.svi_validation`).

Methods: ``transform`` (the encoder's mean E_q[z | x]), ``inverse_transform`` (the decoder's
mean E[x | z]), ``reconstruct`` (both), ``score_samples`` (the IWAE bound on log p(x) with
``iwae_samples`` draws from the encoder, from a stream seeded by the fit's seed: the same
numbers on every call, but a row's value depends on the other rows of the call),
``score``, ``sample``, ``partial_fit`` (one epoch of SVI on a batch, continuing the fit).
``fit`` needs at least ``n_components + 2`` rows (PPCA's least, which the model contains;
a ``partial_fit`` batch may be smaller).
With ``guide="mean-field"`` there is no encoder: transform and score_samples refuse new rows.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    DensityMixin,
    TransformerMixin,
)
from sklearn.utils._param_validation import Interval, StrOptions

from inference.estimators_sklearn.base import (
    COMMON_CONSTRAINTS,
    LatentModelEstimator,
    as_numpy,
    check_latent,
    register_estimator,
    strategy_options,
)
from inference.estimators_sklearn.support import StrategyOption
from inference.svi import STOP_TOL
from zoo import dglvm


@register_estimator
class DeepLatentGaussian(LatentModelEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin,
                         DensityMixin, BaseEstimator):
    """Deep Gaussian latent-variable model (VAE) fitted by SVI.

    Fitted attributes: ``n_components_``, ``n_iter_`` (SVI steps), ``converged_`` (the stopping
    rule), ``lower_bound_`` (the last ELBO, nats per datapoint), ``history_`` (``{"elbo":
    [...]}``), ``params_`` (decoder weights keyed ``decoder$$$net.0.weight``, ...),
    ``guide_params_`` (encoder weights), ``n_features_in_``, ``seed_``.
    """

    _model = "dglvm"
    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "hidden": [tuple, list, str, Integral],
        "likelihood": [StrOptions(set(dglvm.LIKELIHOODS))],
        "variance": [StrOptions(set(dglvm.VARIANCES))],
        "fixed_variance": [Interval(Real, 0.0, None, closed="neither")],
        "min_scale": [Interval(Real, 0.0, None, closed="neither")],
        "beta": [Interval(Real, 0.0, None, closed="neither")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "inference": [StrategyOption("dglvm")],
        "num_particles": [Interval(Integral, 1, None, closed="left"), None],
        "jit": ["boolean", None],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "validation": [Interval(Real, 0.0, 1.0, closed="left"), None],
        "iwae_samples": [Interval(Integral, 1, None, closed="left")],
        **COMMON_CONSTRAINTS,
    }

    def __init__(self, n_components=2, *, hidden=(400,), likelihood="gaussian",
                 variance="learned", fixed_variance=1.0, min_scale=0.01, beta=1.0, epochs=200,
                 inference="svi", guide=None, elbo=None, steps=None, lr=None, batch_size=None,
                 num_particles=None, jit=None, tol=STOP_TOL, validation=None, iwae_samples=1000,
                 random_state=None, device="cpu"):
        self.n_components = n_components
        self.hidden = hidden
        self.likelihood = likelihood
        self.variance = variance
        self.fixed_variance = fixed_variance
        self.min_scale = min_scale
        self.beta = beta
        self.epochs = epochs
        self.inference = inference
        self.guide = guide
        self.elbo = elbo
        self.steps = steps
        self.lr = lr
        self.batch_size = batch_size
        self.num_particles = num_particles
        self.jit = jit
        self.tol = tol
        self.validation = validation
        self.iwae_samples = iwae_samples
        self.random_state = random_state
        self.device = device

    def _config_options(self, n_samples, n_features) -> dict:
        return {"latent_dim": self.n_components, "hidden": dglvm.parse_widths(self.hidden),
                "likelihood": self.likelihood, "variance": self.variance,
                "fixed_variance": float(self.fixed_variance),
                "min_scale": float(self.min_scale), "beta": float(self.beta),
                "epochs": self.epochs}

    def _inspect(self, X: np.ndarray) -> None:  # fit's data (not a partial_fit batch)
        n_samples = X.shape[0]
        # the model holds PPCA (a linear decoder): with N <= q + 1 rows the centred data span
        # at most q dimensions, the decoder can pass through every row and the likelihood has
        # no maximum (sigma -> min_scale); PPCA's rule, N >= q + 2, is the least a fit needs
        needed = self.n_components + 2
        if n_samples < needed:
            raise ValueError(f"DeepLatentGaussian(n_components={self.n_components}) needs at "
                             f"least n_components + 2 = {needed} rows to fit, got "
                             f"n_samples={n_samples}: with fewer the decoder passes through "
                             "every row; give more rows or a smaller n_components")

    def _candidate_options(self, n_samples) -> dict:
        return {"steps": self.steps, "lr": self.lr, "batch_size": self.batch_size,
                "elbo": self.elbo, "num_particles": self.num_particles, "jit": self.jit,
                "stop_tol": float(self.tol), "validation": self.validation}

    @property
    def _n_features_out(self) -> int:
        return self.n_components_

    def _derive(self) -> None:
        self.n_components_ = int(self._config_fields["latent_dim"])

    # --- the encoder and the decoder ----------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if not any(k.startswith("encoder$$$") for k in self.guide_params_):
            raise ValueError(f"DeepLatentGaussian: guide={self.guide_!r} has no encoder, so it "
                             "says nothing about new rows; fit with guide='amortized'")
        encoder = dglvm.Encoder(self._config())
        dglvm.load_module(encoder, "encoder", self._params_on(x, self.guide_params_))
        with torch.no_grad():
            return encoder.to(x)(x)[0]

    def transform(self, X) -> np.ndarray:
        """The encoder's mean of q(z | x) for every row, shape (n_samples, n_components)."""
        return as_numpy(self._encode(self._checked(X)))

    def inverse_transform(self, X) -> np.ndarray:
        """The decoder's mean E[x | z] (Bernoulli: the probabilities) for latent rows ``X``."""
        z = check_latent(self, X, self.n_components_)
        return as_numpy(dglvm.decode(self._config(), self._params_on(z), z))

    def reconstruct(self, X) -> np.ndarray:
        """E[x | z = encoder mean of x] for every row of ``X``, shape (n_samples, n_features)."""
        x = self._checked(X)
        return as_numpy(dglvm.decode(self._config(), self._params_on(x), self._encode(x)))

    def sample(self, n_samples: int = 1) -> np.ndarray:
        """``n_samples`` rows drawn from the prior and the decoder (noise included)."""
        return super().sample(n_samples)

    @classmethod
    def _params_from_run(cls, spec, config, run, metrics) -> dict:
        options = strategy_options(run)
        chosen = {"n_components": config.latent_dim, "hidden": tuple(config.hidden),
                  "likelihood": config.likelihood, "variance": config.variance,
                  "fixed_variance": config.fixed_variance, "min_scale": config.min_scale,
                  "beta": config.beta, "epochs": config.epochs, "guide": run["guide"],
                  "random_state": run["seed"], "steps": options.get("steps"),
                  "lr": options.get("lr"), "batch_size": options.get("batch_size"),
                  "elbo": options.get("elbo"), "num_particles": options.get("num_particles"),
                  "jit": options.get("jit"),
                  "tol": options.get("stop_tol", STOP_TOL),
                  "validation": options.get("validation"),
                  "iwae_samples": run.get("iwae_samples", 1000)}
        return {k: v for k, v in chosen.items() if v is not None or k == "guide"}
