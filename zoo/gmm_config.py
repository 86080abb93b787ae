"""The Gaussian mixture's configuration and the input checks every part of it shares.

:class:`GMMConfig` says what a mixture is (K components in D dimensions, the covariance
structure, the optional priors); ``_check_data`` and ``_check_params`` turn a wrong shape or
dtype into an :class:`InputError` that names the fix. The model family lives in
:mod:`zoo.gmm`, which re-exports everything here; this module imports no other part of it, so
that :mod:`zoo.gmm_em` and :mod:`zoo.gmm_init` can build on it without an import cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from zoo.errors import InputError
from zoo.registry import Params

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
# "tied": one covariance shared by every component, kept as K equal Cholesky factors, so that
# every closed form and E-step treats it as "full"; only the M-step pools the scatter
SCALE_NAME = {"full": "scale_tril", "tied": "scale_tril", "diag": "scale", "spherical": "scale"}
FULL_MATRICES = ("full", "tied")  # the covariance types whose scale is a (K, D, D) Cholesky


@dataclass(frozen=True)
class GMMConfig:
    """What a Gaussian mixture is: its size, covariance structure and optional priors."""

    # D, the observation dimension; filled in from the data
    dim: int = field(default=2, metadata={"cli": False, "help": "observation dimension D"})
    # K, the number of Gaussian components
    components: int = field(default=2, metadata={"help": "number of mixture components K"})
    # full (L L^T), tied (one L L^T shared by all components), diag (one variance per
    # dimension) or spherical (one variance per component)
    covariance_type: str = field(default="full", metadata={
        "help": "covariance of each component: full, tied (one shared full covariance), diag "
                "or spherical",
        "choices": COVARIANCE_TYPES})
    # added to every covariance diagonal in the M-step, so that no component can collapse
    reg_covar: float = field(default=1e-6, metadata={
        "help": "non-negative regularization added to the covariance diagonals (as scikit-learn)"})
    # how the M-step judges a covariance singular: "rounding" (a pivot at rounding level of the
    # data, the zoo's default) or "cholesky" (only where it is not positive definite, as
    # scikit-learn: its estimators use this)
    singular: str = field(default="rounding", metadata={
        "cli": False, "choices": ("rounding", "cholesky"),
        "help": "when the M-step refuses a covariance as singular"})
    # add log p(weights, means, scales) to the objective: SVI then finds the MAP estimate
    prior: bool = field(default=False, metadata={
        "help": "put priors on the parameters (Dirichlet weights, Normal means, LogNormal "
                "scales, LKJ correlations) so that SVI finds the MAP estimate"})
    # Dirichlet concentration of the weights' prior; above 1 keeps components from emptying
    prior_concentration: float = field(default=2.0, metadata={
        "help": "Dirichlet concentration of the prior on the weights (with --prior)"})
    # standard deviation of the Normal(0, .) prior on every coordinate of the means
    prior_mean_scale: float = field(default=10.0, metadata={
        "help": "standard deviation of the Normal(0, s) prior on the means (with --prior)"})
    # standard deviation of log sigma under the LogNormal(0, .) prior on every standard deviation
    prior_scale_spread: float = field(default=2.0, metadata={
        "help": "log-scale spread of the LogNormal(0, s) prior on the standard deviations "
                "(with --prior)"})

    @property
    def full_matrices(self) -> bool:
        """Whether the components' scales are (K, D, D) Cholesky factors (full or tied)."""
        return self.covariance_type in FULL_MATRICES

    def __post_init__(self):
        self.validate()

    def validate(self, num_data: int | None = None) -> None:
        """Raise :class:`InputError` naming the bad input and its fix; ``num_data`` = N."""
        if self.covariance_type not in COVARIANCE_TYPES:
            raise InputError(f"unknown covariance_type={self.covariance_type!r}; choose one of: "
                             + ", ".join(COVARIANCE_TYPES))
        if self.singular not in ("rounding", "cholesky"):
            raise InputError(f"unknown singular={self.singular!r}; choose rounding or cholesky")
        if self.components < 1:
            raise InputError(f"components={self.components} must be at least 1")
        if self.dim < 1:
            raise InputError(f"dim={self.dim} must be at least 1 (the data need a column)")
        if not (self.reg_covar >= 0 and math.isfinite(self.reg_covar)):
            raise InputError(f"reg_covar={self.reg_covar} must be a finite number >= 0; "
                             "use e.g. 1e-6")
        for name in ("prior_concentration", "prior_mean_scale", "prior_scale_spread"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise InputError(f"{name}={value} must be a finite positive number")
        if num_data is not None:
            check_components(self.components, num_data)


def check_components(k: int, num_data: int) -> None:
    """A mixture (or K-means) needs 1 <= k <= N components."""
    if k < 1:
        raise InputError(f"components={k} must be at least 1")
    if k > num_data:
        raise InputError(f"components={k} exceeds the {num_data} datapoints; use at most "
                         f"{num_data}")


# ---------------------------------------------------------------------------------------------
# Checks shared by every closed form
# ---------------------------------------------------------------------------------------------


def _check_data(config: GMMConfig, x: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape[1] != config.dim:
        raise InputError(f"x has shape {tuple(x.shape)} but the model has dim={config.dim}; "
                         f"give an (N, {config.dim}) tensor")
    if not x.is_floating_point():
        raise InputError(f"x has dtype {x.dtype}; convert it to float32 or float64")


def _check_params(config: GMMConfig, params: Params) -> None:
    k, d = config.components, config.dim
    scale_shape = {"full": (k, d, d), "tied": (k, d, d), "diag": (k, d),
                   "spherical": (k,)}[config.covariance_type]
    expected = {"weights": (k,), "means": (k, d), SCALE_NAME[config.covariance_type]: scale_shape}
    for name, shape in expected.items():
        if name not in params:
            raise InputError(f"parameters lack {name!r}; a {config.covariance_type} mixture "
                             f"needs {', '.join(expected)}")
        if tuple(params[name].shape) != shape:
            raise InputError(f"parameter {name!r} has shape {tuple(params[name].shape)}, "
                             f"expected {shape} for components={k}, dim={d}")
