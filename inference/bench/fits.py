"""One posterior fitted by one strategy, and the draws and log-weights the metrics need.

A posteriordb posterior (:class:`zoo.posteriordb.Posterior`) is declared with
:func:`zoo.declare` (its local sites as given, every other latent site global), and the four
variational strategies are the ``svi`` strategy as ``lvm-zoo fit`` runs a declared model
(:func:`inference.strategies.fit`: the schedule, iterate averaging and stopping rule of every
fit) with the generic guides of :mod:`guides.generic` (``auto-normal``, ``auto-lowrank``,
``auto-mvn``) or this module's ``flow``. The fit is not judged by
:func:`inference.fitting.run`'s yardstick: that registers a guide's parameters on a few rows
and draws its probes on three, which the suite's time series and Gaussian processes refuse
(their rows are not exchangeable). The bench draws every row instead (:func:`guide_draws`):
the log-weights log p(θ, x) − log q(θ) of the guide's draws give k̂, the whole-data ELBO
(their mean) and the log-evidence estimate (their log-mean-exp).

- **flow**: the generic ``flow`` guide flows the *local* latents (an amortized encoder; the
  globals stay mean-field), which leaves nothing to flow in a posterior of global parameters,
  most of this suite. The bench's ``flow`` is :class:`GlobalFlowGuide`: a normalizing flow over
  all continuous global sites jointly, in unconstrained space: a standard normal through two
  inverse autoregressive layers (Pyro's ``affine_autoregressive``; a monotone spline for one
  dimension), each started at (or near) the identity, then a learned shift and scale started
  at the prior's median and 0.1, so that it starts where the generic Gaussians start; local
  sites (if any) mean-field as in ``auto-lowrank``.
- **nuts**: Pyro's NUTS on the declared model, chains one after another with the JIT-compiled
  potential where the model traces (as :func:`inference.nuts_reference.nuts_reference`), run
  here rather than there because the bench counts its gradient evaluations (every potential
  evaluation, each with its gradient, warm-up included) and keeps the chains apart per
  reported parameter for the Monte Carlo standard errors.
- **CAVI** applies to models that offer closed-form conjugate updates (``bayesian-gmm``);
  no posterior of the suite does, so it is not a column.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import affine_autoregressive, spline
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide import AutoContinuous
from pyro.poutine.subsample_messenger import _Subsample
from torch import nn

from guides.generic import INIT_LOC, GlobalGaussianGuide, generic_guides
from inference import strategies
from inference.evaluate import load_params
from inference.sampling import broadcasts_over_particles, own_random_stream, particle_traces
from zoo import declare
from zoo.declare import LatentSites
from zoo.errors import InputError
from zoo.posteriordb import model_draws, nuts_model
from zoo.registry import DATA_PLATE, ModelSpec

VARIATIONAL = ("auto-normal", "auto-lowrank", "auto-mvn", "flow")
STRATEGIES = (*VARIATIONAL, "nuts")
PREFIX = "posteriordb-"  # the declared model's name: PREFIX + the posterior's name
MAX_ELEMENTS = 2 ** 22  # particles x rows x values per chunk of the draws' traces
TARGET_ACCEPT = 0.9  # NUTS's step-size target: fewer divergences on funnels than 0.8


@dataclass(frozen=True)
class Budget:
    """What each strategy may spend on one posterior (the bench's defaults fit the whole
    suite in 30 minutes with two processes on a laptop CPU)."""

    steps: int = 3000  # SVI steps at most; the schedule stops a stationary fit sooner
    lr: float | None = None  # Adam's rate (None: SVI's default, 0.01)
    draws: int = 2000  # draws from each fitted guide (moments, W1, k̂)
    nuts_warmup: int = 400  # per chain
    nuts_samples: int = 500  # per chain, kept
    nuts_chains: int = 2
    seed: int = 0

    def check(self) -> None:
        for name, least in (("steps", 1), ("draws", 100), ("nuts_warmup", 0),
                            ("nuts_samples", 10), ("nuts_chains", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(f"--{name.replace('_', '-')} {value!r}: give an integer of "
                                 f"at least {least}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"--lr {self.lr}: give a positive learning rate, e.g. 0.01")


@dataclass
class Draws:
    """A fit's draws of the reported parameters, ``(chains, S, P)`` (one chain for a guide),
    and for a guide the log-weights ``(S,)`` of its draws as proposals, with what it cost."""

    values: np.ndarray
    log_weights: np.ndarray | None
    gradient_evaluations: int
    seconds: float
    info: dict


# --- the posterior as a declared model ---------------------------------------------------------


def _config(posterior, dim: int):
    fields = {f.name for f in dataclasses.fields(posterior.config)}
    return posterior.config(dim=dim) if "dim" in fields else posterior.config()


def latent_sites(posterior) -> LatentSites:
    """The posterior's latent sites from one trace on its rows: the declared local ones, every
    other unobserved sample site global, and which of them are discrete."""
    x = posterior.x
    with pyro.get_param_store().scope(), torch.no_grad(), own_random_stream(0):
        trace = poutine.block(poutine.trace(posterior.model).get_trace)(
            x, num_data=None, subsample_size=None, config=_config(posterior, x.shape[1]))
    latent = [name for name, site in trace.nodes.items()
              if site["type"] == "sample" and not site["is_observed"]
              and not isinstance(site["fn"], _Subsample) and name != DATA_PLATE]
    local = tuple(posterior.local_sites)
    missing = sorted(set(local) - set(latent))
    if missing:
        raise InputError(f"posterior '{posterior.name}': local_sites {', '.join(missing)} are "
                         "not latent sample sites of its model")
    discrete = tuple(n for n in latent if trace.nodes[n]["fn"].support.is_discrete)
    return LatentSites(local=local, global_=tuple(n for n in latent if n not in local),
                       find_discrete=discrete)


def declared(posterior) -> ModelSpec:
    """The posterior declared as a model (``posteriordb-<name>``) with the bench's guides: the
    generic ones that apply and ``flow`` (:class:`GlobalFlowGuide`)."""
    sites = latent_sites(posterior)
    guides, elbos = generic_guides(sites)
    guides = {name: guides[name] for name in VARIATIONAL if name in guides}
    if sites.continuous_global:
        guides["flow"] = flow_factory
        elbos["flow"] = "Trace_ELBO"
    spec = declare(PREFIX + posterior.name, posterior.model, config=posterior.config,
                   local_sites=sites.local, global_sites=sites.global_, guides=guides,
                   default_elbo={name: elbos[name] for name in guides},
                   summary=f"posteriordb {posterior.name}", notes=posterior.notes,
                   replace=True)
    from inference.catalog import get_model

    return get_model(spec)


# --- the flow over the global sites --------------------------------------------------------


class _ShiftScale(dist.torch_transform.TransformModule):
    """y = loc + scale * x elementwise on vectors, both learned (scale kept positive)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, loc: torch.Tensor, scale: float):
        super().__init__(cache_size=1)
        self.loc = nn.Parameter(loc.detach().clone())
        self.raw_scale = nn.Parameter(torch.full_like(loc, math.log(math.expm1(scale))))

    def _scale(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_scale) + 1e-6

    def _call(self, x):
        return self.loc + self._scale() * x

    def _inverse(self, y):
        return (y - self.loc) / self._scale()

    def log_abs_det_jacobian(self, x, y):
        return self._scale().log().expand(x.shape).sum(-1)


class AutoFlow(AutoContinuous):
    """A flow over the model's latent sites jointly (unconstrained): N(0, I) through
    ``layers`` inverse autoregressive layers (a spline for one dimension), then a learned
    shift (started at ``init_loc_fn``'s point) and scale (started at ``init_scale``)."""

    def __init__(self, model, *, layers: int = 2, init_scale: float = 0.1,
                 init_loc_fn=INIT_LOC):
        self.layers, self.init_scale = layers, init_scale
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        width = self.latent_dim
        init = self._init_loc()  # the model's dtype and device
        flows = ([spline(1, count_bins=8)] if width == 1 else
                 [affine_autoregressive(width) for _ in range(self.layers)])
        with torch.no_grad():  # start at (or near) the identity: q starts as a Gaussian
            for flow in flows:
                last = flow.arn.layers[-1] if hasattr(flow, "arn") else None
                for parameter in (last.parameters() if last is not None
                                  else flow.parameters()):
                    parameter.zero_()
        self.flows = nn.ModuleList(flows).to(init)
        self.shift_scale = _ShiftScale(init, self.init_scale)

    def start_at(self, loc: torch.Tensor, covariance: torch.Tensor) -> dict:
        """Start at a Gaussian's mean with its marginal sds (the flow's layers stay at the
        identity): the generic guides' Laplace start (:mod:`guides.laplace`). Returns the
        parameter SVI steps on in the Gaussian's whitened units (the shift) with its
        ``(anchor, factor)``."""
        sd = covariance.diagonal().sqrt()
        self.shift_scale.loc.data.copy_(loc)
        wanted = (sd - 1e-6).clamp_min(1e-6)  # softplus(raw) + 1e-6 = sd, without overflow
        self.shift_scale.raw_scale.data.copy_(wanted + torch.log(-torch.expm1(-wanted)))
        return {"shift_scale$$$loc": (loc.clone(), torch.linalg.cholesky(covariance))}

    def get_base_dist(self):
        zeros = self.shift_scale.loc.new_zeros(self.latent_dim).detach()
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args, **kwargs):
        raise NotImplementedError("AutoFlow has no closed-form transform of a normal")

    def get_posterior(self, *args, **kwargs):
        return dist.TransformedDistribution(self.get_base_dist(),
                                            [*self.flows, self.shift_scale])


class GlobalFlowGuide(GlobalGaussianGuide):
    """``flow`` of the bench: :class:`AutoFlow` over the continuous global sites jointly, the
    local sites mean-field (as the generic ``auto-lowrank`` does)."""

    def __init__(self, model, config, *, layers: int = 2, name: str = ""):
        super().__init__(model, config, covariance="full", name=name)
        self.kind, self.layers = "flow", layers

    def _build(self, x, num_data, subsample_size):
        globals_ = [s.name for s in self._global() if not s.discrete]
        if not globals_:
            raise InputError("the bench's flow guide needs continuous global latent sites; the "
                             "model has none")
        self._hold("joint", AutoFlow(poutine.block(self.model, expose=globals_),
                                     layers=self.layers))
        self._hold("normal", self._auto_normal(self._local(discrete=False)))
        self.size = x.shape[0] if x is not None else num_data


def flow_factory(model, config):
    return GlobalFlowGuide(model, config)


flow_factory.per_datapoint = False


# --- fitting -----------------------------------------------------------------------------------


def reported(posterior, values: Mapping[str, torch.Tensor]) -> np.ndarray:
    """``(S, P)``: the reported parameters, in the reference's column order, of site values
    with a leading draw dimension."""
    columns = posterior.reported(values)
    names = posterior.reference.names
    missing = [n for n in names if n not in columns]
    if missing:
        raise InputError(f"posterior '{posterior.name}': reported() gives no column "
                         f"{', '.join(missing[:3])}")
    return np.stack([torch.as_tensor(columns[n]).detach().double().cpu().reshape(-1).numpy()
                     for n in names], axis=-1)


def fit_guide(posterior, spec: ModelSpec, guide: str, budget: Budget) -> Draws:
    """SVI with ``guide`` (the ``svi`` strategy, as ``lvm-zoo fit`` runs it), then
    ``budget.draws`` draws of the fitted guide with their log-weights log p(θ, x) − log q(θ):
    their mean is the whole-data ELBO, their log-mean-exp the log-evidence estimate."""
    if guide not in spec.guides:
        raise InputError(f"the {guide} guide does not apply to '{posterior.name}' (its "
                         f"guides: {', '.join(spec.guides)})")
    x = posterior.x
    config = spec.make_config(dim=x.shape[1])
    config.validate(x.shape[0])
    with pyro.get_param_store().scope():
        result = strategies.fit(spec, config, x, inference="svi", guide=guide,
                                seed=budget.seed, steps=budget.steps, lr=budget.lr)
    values, log_weights = guide_draws(spec, config, result, x, guide, budget.draws,
                                      seed=budget.seed)
    particles = result.info.get("num_particles") or 1
    finite = log_weights[np.isfinite(log_weights)]
    info = {"steps": result.steps, "converged": result.converged,
            "kept": result.info.get("kept"),
            "elbo": float(finite.mean()) if finite.size else None,
            "log_evidence": (float(np.logaddexp.reduce(finite) - math.log(finite.size))
                             if finite.size else None),
            "num_particles": particles, "start": result.info.get("start")}
    return Draws(reported(posterior, values)[None], log_weights,
                 gradient_evaluations=int(result.steps * particles), seconds=result.seconds,
                 info=info)


@contextmanager
def _fitted(spec: ModelSpec, config, result, x: torch.Tensor, guide: str):
    """``(model, guide)`` of a fit in a param-store scope of their own, the parameters
    registered by one run on every row (:func:`inference.evaluate.fitted` registers them on
    a few rows, which a time series or a Gaussian process refuses)."""
    with pyro.get_param_store().scope():
        model = spec.make_model(config, {k: v.to(x.device) for k, v in result.params.items()})
        guide_fn = spec.guides[guide](model, config)
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(guide_fn).get_trace(x)
            poutine.replay(model, trace=trace)(x)
        load_params({**result.params, **(result.guide_params or {})})
        yield model, guide_fn


def per_particle_log_density(trace, num: int) -> torch.Tensor:
    """``(num,)``: each particle's summed log-density over the trace's sample sites."""
    trace.compute_log_prob()
    total = torch.zeros(num, dtype=torch.float64)
    for site in trace.nodes.values():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        term = scale_and_mask(site["log_prob"], mask=site["mask"]).double().cpu()
        if term.dim() == 0:
            term = term.expand(num)
        total = total + term.reshape(term.shape[0], -1).sum(1).expand(num)
    return total


@torch.no_grad()
def guide_draws(spec: ModelSpec, config, result, x: torch.Tensor, guide: str, num: int, *,
                seed: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """``num`` draws of every latent site from the fitted guide (``{site: (num, *shape)}``)
    and their log-weights ``(num,)``: log p(θ, x) − log q(θ) on every row, in chunks of the
    particle plate (one draw at a time for a model that does not broadcast over it)."""
    rows = torch.arange(x.shape[0], device=x.device)
    with own_random_stream(seed, x.device), _fitted(spec, config, result, x,
                                                    guide) as (model, guide_fn):
        vectorize = broadcasts_over_particles(model, guide_fn, x)
        with poutine.block():
            shapes = {name: site["value"].shape for name, site in
                      poutine.trace(guide_fn).get_trace(x).nodes.items()
                      if site["type"] == "sample" and not site["infer"].get("is_auxiliary")
                      and not isinstance(site["fn"], _Subsample)}
        chunk = max(1, min(num, MAX_ELEMENTS // max(1, x.numel())))
        values: dict[str, list] = {name: [] for name in shapes}
        weights = []
        for start in range(0, num, chunk):
            k = min(chunk, num - start)
            with poutine.block():
                guide_trace, model_trace = particle_traces(model, guide_fn, x, rows, k,
                                                           vectorize=vectorize)
            weights.append(per_particle_log_density(model_trace, k)
                           - per_particle_log_density(guide_trace, k))
            for name, shape in shapes.items():
                values[name].append(guide_trace.nodes[name]["value"].reshape(k, *shape))
    return ({name: torch.cat(parts) for name, parts in values.items()},
            torch.cat(weights).numpy())


class _CountingNUTS(pyro.infer.NUTS):
    """NUTS that counts its potential-energy evaluations (each one with its gradient)."""

    evaluations = 0

    def _initialize_model_properties(self, model_args, model_kwargs):
        super()._initialize_model_properties(model_args, model_kwargs)
        inner = self.potential_fn

        def counted(params):
            self.evaluations += 1
            return inner(params)
        self.potential_fn = counted


def _nuts_chain(model, x: torch.Tensor, samples: int, warmup: int, jit: bool,
                dense: bool):
    kernel = _CountingNUTS(model, jit_compile=jit, ignore_jit_warnings=True, full_mass=dense,
                           target_accept_prob=TARGET_ACCEPT)
    mcmc = pyro.infer.MCMC(kernel, num_samples=samples, warmup_steps=warmup, num_chains=1,
                           disable_progbar=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit.trace's notice
        mcmc.run(x)
    return mcmc, kernel.evaluations


def fit_nuts(posterior, spec: ModelSpec, budget: Budget) -> Draws:
    """``budget.nuts_chains`` NUTS chains of the declared model, one after another."""
    x = posterior.x
    config = spec.make_config(dim=x.shape[1])
    chains, evaluations, divergences, acceptance = [], 0, 0, []
    start = time.perf_counter()
    settings = posterior.extra.get("nuts", {})  # the posterior's own (noncentred sites, jit)
    jit = bool(settings.get("jit", True))
    dense = bool(posterior.extra.get("dense_mass"))  # the suite asks where Stan needs it
    with pyro.get_param_store().scope():
        declared = spec.make_model(config)
        model = nuts_model(posterior, declared)
        for chain in range(budget.nuts_chains):
            pyro.set_rng_seed(budget.seed + chain)
            try:
                mcmc, used = _nuts_chain(model, x, budget.nuts_samples, budget.nuts_warmup, jit,
                                         dense)
            except (RuntimeError, TypeError, torch.jit.Error):  # a model that does not trace
                if not jit:
                    raise
                jit = False
                pyro.set_rng_seed(budget.seed + chain)
                mcmc, used = _nuts_chain(model, x, budget.nuts_samples, budget.nuts_warmup,
                                         jit, dense)
            evaluations += used
            chains.append(reported(posterior, model_draws(posterior, declared,
                                                          mcmc.get_samples(), x)))
            diagnostics = mcmc.diagnostics()
            divergences += int(sum(len(v) for v in diagnostics.get("divergences", {}).values()))
            acceptance += list(diagnostics.get("acceptance rate", {0: math.nan}).values())
    info = {"chains": budget.nuts_chains, "warmup": budget.nuts_warmup,
            "samples": budget.nuts_samples, "divergences": divergences, "jit": jit,
            "dense_mass": dense, "target_accept": TARGET_ACCEPT,
            "reparametrized": sorted({*settings.get("noncentered", ()),
                                      *settings.get("centred", {})}),
            "acceptance_rate": float(np.mean(acceptance))}
    return Draws(np.stack(chains), None, gradient_evaluations=evaluations,
                 seconds=time.perf_counter() - start, info=info)


def fit(posterior, spec: ModelSpec, strategy: str, budget: Budget) -> Draws:
    """Run ``strategy`` (one of :data:`STRATEGIES`) on ``posterior``."""
    if strategy == "nuts":
        return fit_nuts(posterior, spec, budget)
    if strategy not in VARIATIONAL:
        raise InputError(f"unknown bench strategy '{strategy}'; choose from: "
                         + ", ".join(STRATEGIES))
    return fit_guide(posterior, spec, strategy, budget)
