"""Where a generic Gaussian guide starts: at the posterior's mode, shaped by its curvature.

Pyro's autoguides start every latent at the prior's median with scale 0.1 in unconstrained
space. For a model written as people write it (a regression on raw incomes, heights or years,
a prior of N(0, 100) on an intercept of 26, a coefficient whose posterior sd is 0.001) that
start is hundreds of posterior sds from the answer, and Adam, whose steps are about ``lr`` per
coordinate whatever the scale, needs tens of thousands of steps to cross the distance (and to
shrink a scale from 0.1 to 0.001). The field's remedy is to start a variational family where
a quasi-Newton optimizer finds the mode, with the curvature there: the Laplace approximation
(Pathfinder, Zhang et al. 2022, starts from points of an L-BFGS path; Stan's ADVI users are told
to do so by hand).

:func:`laplace_start` finds the mode of log p(x, z) over every continuous latent in the
unconstrained space the guides work in (the log-Jacobian of each site's bijection included,
so the Gaussian is a density over the same coordinates as the guide's), with
:class:`torch.optim.LBFGS` (strong-Wolfe line search) from the prior median, and the Hessian
there by automatic differentiation. It keeps the start only when it is a proper one:

- L-BFGS ended at a stationary point (the Newton decrement gᵀH⁻¹g below ``0.01``: the mode is
  within a tenth of a posterior sd of where it stopped), every value finite;
- the Hessian is positive definite (a funnel's neck or a saddle has no Laplace approximation);
- the Gaussian N(mode, H⁻¹)'s ELBO, estimated from the same draws for both, is above that of
  the autoguides' own start (prior median, scale 0.1), so the start never makes a fit begin
  further from the posterior than it would have.

Models with discrete latents, or with more than ``MAX_DIM`` unconstrained latent values (a
model with one latent per datapoint on many rows), keep Pyro's start. Everything draws from a
fork of torch's random stream seeded with ``seed``: a fit that keeps Pyro's start is the same,
draw for draw, as it was without this step.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import pyro
import torch
from pyro.infer.mcmc.util import initialize_model

MAX_DIM = 400  # unconstrained latent values at most (the Hessian is MAX_DIM backward passes)
MAX_ITER = 500  # L-BFGS iterations at most
NEWTON_DECREMENT = 1e-2  # g' H^-1 g at the mode: within a tenth of an sd of the stationary point
ELBO_DRAWS = 64  # draws per candidate start in the comparison of ELBOs
PRIOR_SCALE = 0.1  # the autoguides' own start: scale 0.1 around the prior median


@dataclass(frozen=True)
class LaplaceStart:
    """The mode (flat, unconstrained), its covariance H⁻¹ and precision H, and where each
    site sits in the flat vector (``slices[name] = (start, stop, unconstrained shape)``)."""

    mode: torch.Tensor
    covariance: torch.Tensor
    precision: torch.Tensor
    slices: dict
    elbo: float
    prior_start_elbo: float
    iterations: int

    def value(self, name: str) -> torch.Tensor:
        start, stop, shape = self.slices[name]
        return self.mode[start:stop].reshape(shape)

    def mean_field_scale(self, name: str) -> torch.Tensor:
        """1/sqrt(H_ii): the sds of the mean-field Gaussian closest to N(mode, H⁻¹) in
        KL(q || p), the one a mean-field guide converges to on a Gaussian posterior."""
        start, stop, shape = self.slices[name]
        return self.precision.diagonal()[start:stop].rsqrt().reshape(shape)

    def joint(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The mode and the marginal covariance of these sites, flat, in this order."""
        index = torch.cat([torch.arange(*self.slices[n][:2], device=self.mode.device)
                           for n in names])
        return self.mode[index], self.covariance[index][:, index]

    def record(self) -> dict:
        return {"start": "laplace", "start_elbo": self.elbo,
                "prior_start_elbo": self.prior_start_elbo, "start_iterations": self.iterations}


@contextlib.contextmanager
def forked_stream(seed: int, device: torch.device):
    """Draw from a fork of torch's random stream (and of CUDA's on ``device``) seeded with
    ``seed``; the stream outside is left as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def laplace_start(model, x: torch.Tensor, sites, init_strategy, *, seed: int = 0,
                  max_dim: int = MAX_DIM) -> LaplaceStart | None:
    """The Laplace approximation of ``model``'s posterior given all of ``x`` over its
    continuous latents ``sites`` (:class:`guides.generic.LatentSite`), or ``None`` where it
    does not apply or is not a better start (the module's docstring says when). The search
    begins where ``init_strategy`` (the guides' ``init_loc_fn``) puts each latent."""
    if x is None or any(s.discrete for s in sites) or not sites:
        return None
    if sum(_size(s, x) for s in sites) > max_dim:
        return None
    with forked_stream(seed, x.device), pyro.get_param_store().scope(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a trial start's overflow is judged below, not shown
        try:
            return _laplace(model, x, init_strategy)
        except (ValueError, RuntimeError, NotImplementedError):
            return None  # a model the potential cannot be built for: Pyro's start


def _size(site, x: torch.Tensor) -> int:
    per = math.prod(site.unconstrained_shape())
    return per * x.shape[0] if site.local else per


def _laplace(model, x: torch.Tensor, init_strategy) -> LaplaceStart | None:
    kwargs = {"num_data": None, "subsample_size": None}
    init, potential, _, _ = initialize_model(
        model, model_args=(x,), model_kwargs=kwargs, init_strategy=init_strategy)
    names = list(init)
    slices, position = {}, 0
    for name in names:
        size = init[name].numel()
        slices[name] = (position, position + size, tuple(init[name].shape))
        position += size

    def energy(flat: torch.Tensor) -> torch.Tensor:
        return potential({n: flat[a:b].reshape(shape) for n, (a, b, shape) in slices.items()})

    start = torch.cat([init[n].detach().reshape(-1) for n in names])
    mode, iterations = _mode(energy, start)
    if mode is None:
        return None
    precision = torch.autograd.functional.hessian(energy, mode)
    precision = (precision + precision.T) / 2
    values, vectors = torch.linalg.eigh(precision)
    if not torch.isfinite(values).all() or values.min() <= 0:
        return None  # not a proper maximum: no Laplace approximation
    gradient = torch.autograd.functional.jacobian(energy, mode)
    covariance = (vectors / values) @ vectors.T
    if float(gradient @ covariance @ gradient) > NEWTON_DECREMENT:
        return None  # L-BFGS stopped short of the mode
    eps = torch.randn(ELBO_DRAWS, mode.numel(), dtype=mode.dtype, device=mode.device)
    laplace = _elbo(energy, mode, torch.linalg.cholesky(covariance), eps)
    prior = _elbo(energy, start, PRIOR_SCALE * torch.eye(start.numel()).to(start), eps)
    if not math.isfinite(laplace) or (math.isfinite(prior) and laplace <= prior):
        return None
    return LaplaceStart(mode=mode, covariance=covariance, precision=precision, slices=slices,
                        elbo=laplace, prior_start_elbo=prior, iterations=iterations)


def _mode(energy, start: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """L-BFGS on ``energy`` from ``start``: the point it stopped at (None if not finite)."""
    point = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([point], lr=1.0, max_iter=MAX_ITER, max_eval=2 * MAX_ITER,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = energy(point)
        if not torch.isfinite(value):  # outside the support's numerics: a wall, not a NaN
            return value.detach().new_tensor(float("inf")).requires_grad_(True)
        value.backward()
        return value
    optimizer.step(closure)
    iterations = int(optimizer.state[point].get("n_iter", 0))
    mode = point.detach()
    if not torch.isfinite(mode).all() or not torch.isfinite(energy(mode)):
        return None, iterations
    return mode, iterations


def _elbo(energy, loc: torch.Tensor, scale_tril: torch.Tensor, eps: torch.Tensor) -> float:
    """E_q[log p] + H[q] for q = N(loc, LLᵀ) over the unconstrained latents, from the draws
    loc + L eps (the energy is −log p, Jacobians included)."""
    with torch.no_grad():
        draws = loc + eps @ scale_tril.T
        log_p = torch.stack([-energy(draw) for draw in draws])
        if not torch.isfinite(log_p).all():
            return -math.inf
        entropy = (0.5 * loc.numel() * (1 + math.log(2 * math.pi))
                   + scale_tril.diagonal().log().sum())
        return float(log_p.mean() + entropy)
