"""Generic guides: q(z | x) for any model with the zoo's signature, built from its trace.

Every guide here is a factory ``(model, config) -> guide`` and the guide, a
:class:`~pyro.nn.PyroModule`, has the model's signature,
``guide(x=None, *, num_data=None, subsample_size=None)``. Its parts (Pyro's autoguides, the
encoder) are its submodules, so its state is its ``state_dict()``; their param-store names come
from the module's own ``name`` (``""`` by default: ``AutoNormal.locs.mu``, ``encoder$$$...``).
On its first call it traces the model once with the same arguments (as Pyro's autoguides
set up their prototype) and reads the latent sites: local ones (inside ``pyro.plate("data")``,
one value per datapoint, shape per datapoint found from the trace), global ones (outside it),
discrete ones (finite support). Global latents start where Pyro's autoguides start them, at
the prior's median (``init_to_median``, falling back to ``init_to_feasible`` where the median
is undefined), so heavy-tailed priors (HalfCauchy, half-Student-t) start finite; before SVI
(``setup(x)``) the Gaussian guides below move that start to the Laplace approximation where it
applies and is better (:mod:`guides.laplace`) and have SVI step on their locations in its
whitened units (``preconditioners()``). Then:

- ``auto-normal``: mean-field. Pyro's :class:`~pyro.infer.autoguide.AutoNormal` over every
  continuous latent (one Normal per datapoint for local sites, in unconstrained space), and a
  free categorical (or Bernoulli) per datapoint for each discrete local site, enumerated in the
  guide by ``TraceEnum_ELBO``. Subsampling-aware: the guide's data plate is the model's, with
  the same ``subsample_size``, so minibatches index the per-datapoint parameters.
  ``per_datapoint = True`` when the model has local sites (nothing to say about new rows).
- ``auto-lowrank`` / ``auto-mvn`` (only for models with continuous global sites): a low-rank
  plus diagonal (:class:`~pyro.infer.autoguide.AutoLowRankMultivariateNormal`) or full
  covariance (:class:`~pyro.infer.autoguide.AutoMultivariateNormal`) Gaussian over the global
  sites jointly, local sites mean-field as in ``auto-normal``. A full covariance over the
  local sites would be (N q)² numbers and cannot be subsampled, so it is not offered.
- ``amortized``: an MLP encoder x_n -> the parameters of q(z_n | x_n) for every local site
  (loc and scale in unconstrained space; logits for discrete sites), its output layout built
  from the per-datapoint shapes in the trace; global sites get AutoNormal.
  ``per_datapoint = False``: it describes rows it has never seen.
- ``flow``: a standard normal pushed through normalizing-flow layers conditioned on the
  encoder's features, then through the amortized Gaussian's affine map: affine coupling layers
  (RealNVP, as in the course notes: half of z passes through, the other half is scaled and
  shifted by a network of the first half and x), with the halves swapped between layers;
  monotone spline layers for a one-dimensional latent, which cannot be split. It can close part
  of the Gaussian's gap (a skewed or two-mode posterior); ``lvm-zoo compare`` shows by how much.
  ``per_datapoint = False``.

With one discrete local site (a mixture's component c) the amortized and flow guides draw the
continuous local sites from q(z_n | x_n, c_n): one Gaussian per category.

Models with discrete local sites are fitted with ``TraceEnum_ELBO`` (:func:`generic_guides`
says so); their model code must broadcast over an enumeration dimension on the left.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import (
    AffineTransform,
    ConditionalAffineCoupling,
    Permute,
    ReshapeTransform,
    conditional_spline,
)
from pyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_feasible,
    init_to_median,
)
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import ConditionalDenseNN, PyroModule, PyroParam
from pyro.poutine.runtime import get_plates
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform, IndependentTransform

from guides.laplace import forked_stream, laplace_start
from zoo.errors import InputError
from zoo.registry import DATA_PLATE

__all__ = [
    "AmortizedGuide",
    "FlowGuide",
    "GlobalGaussianGuide",
    "LatentSite",
    "MeanFieldGuide",
    "discover_sites",
    "generic_guides",
]

HIDDEN = 64  # encoder width
FLOW_LAYERS = 4  # coupling (or spline) layers of the flow guide
INIT_SCALE = 0.5  # initial scale of the encoder's Gaussians, in unconstrained units
# AutoGuides over global sites start at the prior's median, as Pyro's autoguides do (a prior
# mean can be infinite: HalfCauchy's), falling back to a feasible point where the median is
# undefined; over local sites at 0 in unconstrained space, as Pyro's AutoNormal does (their
# prior depends on globals drawn at random when it is set up)
INIT_LOC = init_to_median(fallback=init_to_feasible)


# --- what the model's trace says ------------------------------------------------------------


@dataclass(frozen=True)
class LatentSite:
    """A latent site as a guide needs it.

    ``shape`` is the value's shape per datapoint for a local site (its event shape), the full
    shape for a global one; ``categories`` is K for a discrete site (2 for Bernoulli);
    ``kind`` is ``"continuous"``, ``"categorical"``, ``"bernoulli"`` or ``"one-hot"``.
    ``init`` is the mean over rows of the prototype's unconstrained value (continuous) or of
    the prior's log-probabilities (discrete), a starting point near the prior.
    """

    name: str
    local: bool
    kind: str
    shape: tuple[int, ...]
    support: constraints.Constraint
    categories: int | None
    init: torch.Tensor
    plates: tuple[str, ...]
    plate_dim: int | None

    @property
    def discrete(self) -> bool:
        return self.kind != "continuous"

    def unconstrained_shape(self) -> tuple[int, ...]:
        return tuple(biject_to(self.support).inv.forward_shape(self.shape))


def trace_model(model, x, num_data=None, subsample_size=None):
    """One trace of ``model`` with the given arguments, hidden from outer handlers."""
    return poutine.block(poutine.trace(model).get_trace)(
        x, num_data=num_data, subsample_size=subsample_size)


def discover_sites(model, x=None, num_data=None, subsample_size=None) -> list[LatentSite]:
    """The latent sample sites of ``model`` in the order it samples them."""
    trace = trace_model(model, x, num_data, subsample_size)
    found = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if site["infer"].get("is_auxiliary"):
            continue
        found.append(_describe(name, site))
    return found


def _describe(name: str, site: dict) -> LatentSite:
    fn, value = site["fn"], site["value"].detach()
    frames = [f for f in site["cond_indep_stack"] if f.vectorized]
    data = next((f for f in frames if f.name == DATA_PLATE), None)
    local = data is not None
    event_dim = fn.event_dim
    shape = tuple(value.shape[value.dim() - event_dim:]) if local else tuple(value.shape)
    support = fn.support
    kind, categories = "continuous", None
    if support.is_discrete:
        kind, categories = _discrete_kind(name, fn, support)
    if kind == "continuous":
        unconstrained = biject_to(support).inv(value)
        if local:
            per_row = tuple(biject_to(support).inv.forward_shape(shape))
            init = unconstrained.reshape(-1, *per_row).mean(0)
        else:
            init = unconstrained
    else:
        init = _prior_logits(fn, kind, categories)
    return LatentSite(name=name, local=local, kind=kind, shape=shape, support=support,
                     categories=categories, init=init.detach(),
                     plates=tuple(f.name for f in frames),
                     plate_dim=None if data is None else data.dim)


def _discrete_kind(name: str, fn, support) -> tuple[str, int | None]:
    if isinstance(support, constraints.integer_interval) and support.lower_bound == 0 \
            and fn.event_dim == 0:
        return "categorical", int(support.upper_bound) + 1
    if support is constraints.boolean and fn.event_dim == 0:
        return "bernoulli", 2
    if support is constraints.one_hot:
        return "one-hot", int(fn.event_shape[-1])
    return "unsupported", None


def _prior_logits(fn, kind: str, categories: int | None) -> torch.Tensor:
    """Mean over rows of the prior's log-probabilities: (K,) or () for Bernoulli."""
    if kind == "unsupported":
        return torch.zeros(())
    base = fn
    while hasattr(base, "base_dist"):
        base = base.base_dist
    logits = getattr(base, "logits", None)
    if logits is None:
        return torch.zeros(categories if kind != "bernoulli" else ())
    logits = logits.detach()
    if kind == "bernoulli":
        return logits.reshape(-1).mean() if logits.dim() else logits
    return torch.log_softmax(logits.reshape(-1, logits.shape[-1]), -1).mean(0)


def _unsupported(sites: list[LatentSite], guide: str) -> None:
    for site in sites:
        if site.kind == "unsupported":
            raise InputError(
                f"site '{site.name}' is discrete without a finite support the guide can "
                f"enumerate ({site.support}); the {guide} guide handles Categorical, Bernoulli "
                "and OneHotCategorical sites only: make it one of those or write a guide for it")
        if site.discrete and not site.local:
            raise InputError(
                f"site '{site.name}' is a discrete global latent; the {guide} guide covers "
                "discrete sites inside pyro.plate('data') only: write a guide for it, or "
                "marginalize it in the model")


# --- the shared frame of every generic guide ------------------------------------------------


class _GenericGuide(PyroModule):
    """Traces the model on the first call, then builds the guide's parts (``_build``).
    ``name`` prefixes the param-store names of its parameters."""

    kind = "generic"

    def __init__(self, model, config, *, name: str = ""):
        super().__init__(name)
        object.__setattr__(self, "model", model)  # the model's modules are not the guide's
        self.config = config
        self.sites: list[LatentSite] | None = None
        self._plate: pyro.plate | None = None

    def _prepare(self, x=None, *, num_data=None, subsample_size=None) -> None:
        """Read the model's latent sites from one trace with these arguments and build the
        guide's parts (their parameters start when called, as Pyro's autoguides do)."""
        if self.sites is not None:
            return
        self.sites = discover_sites(self.model, x, num_data, subsample_size)
        _unsupported(self.sites, self.kind)
        self._build(x, num_data, subsample_size)

    def forward(self, x=None, *, num_data=None, subsample_size=None):
        self._prepare(x, num_data=num_data, subsample_size=subsample_size)
        return self._guide(x, num_data=num_data, subsample_size=subsample_size)

    def _hold(self, role: str, guide: PyroModule | None) -> None:
        """Hold an autoguide as a submodule under its class's name (so its parameters keep
        Pyro's names, ``AutoNormal.locs.mu``, under this guide's prefix), reachable as
        ``self.<role>``."""
        if guide is not None:
            self.add_module(type(guide).__name__, guide)
        object.__setattr__(self, role, guide)  # one registration: under the class's name

    # parts

    def _local(self, *, discrete: bool | None = None) -> list[LatentSite]:
        return [s for s in self.sites if s.local and (discrete is None or s.discrete == discrete)]

    def _global(self) -> list[LatentSite]:
        return [s for s in self.sites if not s.local]

    def _data_plate(self, x, num_data, subsample_size) -> pyro.plate:
        size = x.shape[0] if x is not None else num_data
        if size is None:
            raise InputError(f"the {self.kind} guide needs data x or num_data")
        dims = {s.plate_dim for s in self._local()}
        device = x.device if x is not None else None
        self._plate = pyro.plate(DATA_PLATE, size, subsample_size=subsample_size,
                                 dim=dims.pop() if len(dims) == 1 else None, device=device)
        return self._plate

    def _plates(self, *args, **kwargs) -> pyro.plate:
        return self._plate  # AutoNormal's create_plates: the plate made for this call

    def _auto_normal(self, sites: list[LatentSite]) -> AutoNormal | None:
        if not sites:
            return None
        names = [s.name for s in sites]
        plates = self._plates if any(s.local for s in sites) else None
        return AutoNormal(poutine.block(self.model, expose=names), create_plates=plates,
                          init_loc_fn=_by_site(sites, INIT_LOC, init_to_feasible))

    def _build(self, x, num_data, subsample_size) -> None:
        raise NotImplementedError

    def _guide(self, x, *, num_data, subsample_size):
        raise NotImplementedError


def _by_site(sites: list[LatentSite], global_init: Callable, local_init: Callable) -> Callable:
    """An ``init_loc_fn`` that starts the global sites with ``global_init``, the local ones
    with ``local_init``."""
    local = {s.name for s in sites if s.local}

    def init(site: dict):
        return (local_init if site["name"] in local else global_init)(site)
    return init


def _set_param(module: PyroModule, name: str, value: torch.Tensor) -> None:
    """Set the (constrained) value of the PyroParam ``name`` (dots: nested modules)."""
    *path, last = name.split(".")
    owner = functools.reduce(getattr, path, module)
    setattr(owner, last, value.to(getattr(owner, last)).clone())  # its own storage


def _fullname(module: PyroModule, name: str) -> str:
    """The param-store name of the parameter ``name`` (dots: nested modules) of ``module``
    (defined once the guide has been called)."""
    *path, last = name.split(".")
    return functools.reduce(getattr, path, module)._pyro_get_fullname(last)


def _distributed() -> bool:
    """Whether this process is one of several: each holds its own rows, so a start read from
    them would differ between ranks."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _discrete_distribution(site: LatentSite, logits: torch.Tensor):
    if site.kind == "categorical":
        return dist.Categorical(logits=logits)
    if site.kind == "bernoulli":
        return dist.Bernoulli(logits=logits)
    return dist.OneHotCategorical(logits=logits)


def _sample_discrete(site: LatentSite, logits: torch.Tensor):
    return pyro.sample(site.name, _discrete_distribution(site, logits),
                       infer={"enumerate": "parallel"})


# --- mean-field and joint Gaussians over the globals ----------------------------------------


class MeanFieldGuide(_GenericGuide):
    """``auto-normal``: AutoNormal over every continuous latent, a free categorical per
    datapoint for each discrete local site.

    ``setup(x)`` (run before SVI, never when a fitted guide is rebuilt) starts the continuous
    latents at the posterior's mode with the Laplace approximation's scales where that is a
    better start than Pyro's (:mod:`guides.laplace`: models without discrete latents and with
    few latent values); ``start = "prior"`` keeps Pyro's. ``start_record`` says which."""

    kind = "auto-normal"
    per_datapoint = True
    start = "laplace"

    def setup(self, x: torch.Tensor) -> None:
        self.start_record = {"start": "prior"}
        if self.start != "laplace" or x is None or _distributed():
            return
        with forked_stream(0, x.device):
            sites = discover_sites(self.model, x)
        start = laplace_start(self.model, x, sites, INIT_LOC)
        if start is None:
            return
        with forked_stream(1, x.device):  # the parts' parameters, made now, from the same fork
            self._prepare(x)
            for part in (getattr(self, "joint", None), self.normal):
                if part is not None and part.prototype_trace is None:
                    part._setup_prototype(x, num_data=None, subsample_size=None)
        self._whitening = {}
        with torch.no_grad():
            self._start_at(start)
        self.start_record = start.record()

    def preconditioners(self) -> dict:
        """``{param-store name: (anchor, factor)}``: after a Laplace start, the locations in
        units of the posterior's sds (SVI's Adam steps on w in loc = anchor + factor · w;
        :class:`inference.svi_step.Whitened`); none otherwise."""
        return {_fullname(module, name): factors
                for (module, name), factors in getattr(self, "_whitening", {}).items()}

    def _start_at(self, start) -> None:
        if self.normal is None:
            return
        local = {s.name for s in self._local()}
        for name in list(self.normal._event_dims):
            loc, scale = start.value(name), start.mean_field_scale(name)
            _set_param(self.normal.locs, name, loc)
            _set_param(self.normal.scales, name, scale)
            # a location moves in units of the posterior's own spread: the site's marginal
            # covariance (a global site's values jointly; a local site's one by one)
            _, covariance = start.joint([name])
            self._whitening[self.normal.locs, name] = (
                loc, covariance.diagonal().sqrt() if name in local
                else torch.linalg.cholesky(covariance))

    def _build(self, x, num_data, subsample_size):
        continuous = [s for s in self.sites if not s.discrete]
        self._hold("normal", self._auto_normal(continuous))
        self.size = x.shape[0] if x is not None else num_data

    def _discrete_part(self, x):
        for site in self._local(discrete=True):
            init = site.init.to(device=x.device if x is not None else None)
            shape = (self.size, *init.shape)
            path = f"mean_field.{site.name}.logits"  # a PyroParam of nested submodules
            try:
                logits = functools.reduce(getattr, path.split("."), self)
            except AttributeError:
                deep_setattr(self, path, PyroParam(
                    lambda init=init, shape=shape: init.expand(shape).clone(),
                    event_dim=init.dim()))
                logits = functools.reduce(getattr, path.split("."), self)
            _sample_discrete(site, logits)

    def _guide(self, x, *, num_data, subsample_size):
        plate = self._data_plate(x, num_data, subsample_size) if self._local() else None
        result = self.normal(x, num_data=num_data, subsample_size=subsample_size) \
            if self.normal is not None else {}
        if self._local(discrete=True):
            with plate:
                self._discrete_part(x)
        return result


class GlobalGaussianGuide(MeanFieldGuide):
    """``auto-lowrank`` / ``auto-mvn``: one Gaussian over all continuous global sites jointly
    (low-rank plus diagonal, or full covariance), the local sites mean-field."""

    def __init__(self, model, config, *, covariance: str = "lowrank", rank: int | None = None,
                 name: str = "", init_loc_fn: Callable | None = None):
        super().__init__(model, config, name=name)
        if covariance not in ("lowrank", "full"):
            raise InputError(f"covariance={covariance!r}: choose 'lowrank' or 'full'")
        self.covariance, self.rank = covariance, rank
        self.init_loc_fn = init_loc_fn or INIT_LOC  # where the global sites start
        self.kind = "auto-lowrank" if covariance == "lowrank" else "auto-mvn"

    def _build(self, x, num_data, subsample_size):
        globals_ = [s.name for s in self._global()]
        if not globals_:
            raise InputError(f"the {self.kind} guide needs global latent sites (outside "
                             "pyro.plate('data')) and the model has none; use auto-normal")
        blocked = poutine.block(self.model, expose=globals_)
        if self.covariance == "lowrank":
            joint = AutoLowRankMultivariateNormal(blocked, rank=self.rank, init_scale=0.1,
                                                  init_loc_fn=self.init_loc_fn)
        else:
            joint = AutoMultivariateNormal(blocked, init_scale=0.1,
                                           init_loc_fn=self.init_loc_fn)
        self._hold("joint", joint)
        self._hold("normal", self._auto_normal(self._local(discrete=False)))
        self.size = x.shape[0] if x is not None else num_data

    def _start_at(self, start) -> None:
        super()._start_at(start)
        joint = self.joint
        loc, covariance = start.joint(list(joint._unconstrained_shapes))
        if hasattr(joint, "start_at"):  # a family of its own (the bench's flow) starts itself
            for name, factors in joint.start_at(loc, covariance).items():  # and whitens these
                self._whitening[joint, name] = factors
            return
        joint.loc.data.copy_(loc)
        self._whitening[joint, "loc"] = (loc, torch.linalg.cholesky(covariance))
        if isinstance(joint, AutoMultivariateNormal):
            tril = torch.linalg.cholesky(covariance)
            joint.scale = tril.diagonal()
            joint.scale_tril = tril / tril.diagonal()[:, None]
            return
        # low rank: cov = diag(s) (F Fᵀ + I) diag(s); the correlations' leading factors
        # (as factor analysis would fit them), the rest on the diagonal
        sd = covariance.diagonal().sqrt()
        values, vectors = torch.linalg.eigh(covariance / sd[:, None] / sd)
        top = values.flip(0)[:joint.rank].clamp_min(0)
        factors = vectors.flip(1)[:, :joint.rank] * top.sqrt()
        rest = (1 - factors.pow(2).sum(-1)).clamp_min(1e-6)
        joint.scale = sd * rest.sqrt()
        joint.cov_factor.data.copy_(factors / rest.sqrt()[:, None])

    def _guide(self, x, *, num_data, subsample_size):
        result = dict(self.joint(x, num_data=num_data, subsample_size=subsample_size))
        plate = self._data_plate(x, num_data, subsample_size) if self._local() else None
        if self.normal is not None:
            result.update(self.normal(x, num_data=num_data, subsample_size=subsample_size))
        if self._local(discrete=True):
            with plate:
                self._discrete_part(x)
        return result


# --- amortized encoders ---------------------------------------------------------------------


class Encoder(nn.Module):
    """x : (..., D) standardized by the training data's mean and scale (learnable, so they
    travel with the guide's parameters) -> features (..., H) -> one output block per site."""

    def __init__(self, x: torch.Tensor, sizes: dict[str, int], hidden: int = HIDDEN):
        super().__init__()
        rows = x.reshape(x.shape[0], -1)
        self.input_loc = nn.Parameter(rows.mean(0).detach().clone())
        self.input_log_scale = nn.Parameter(rows.std(0).clamp_min(1e-3).log().detach()
                                            if rows.shape[0] > 1 else torch.zeros_like(rows[0]))
        self.trunk = nn.Sequential(nn.Linear(rows.shape[1], hidden), nn.Softplus(),
                                   nn.Linear(hidden, hidden), nn.Softplus())
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, size) for name, size in sizes.items()})
        for head in self.heads.values():
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(x.shape[0], -1)
        return self.trunk((rows - self.input_loc) * torch.exp(-self.input_log_scale))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.features(x)
        return features, {name: head(features) for name, head in self.heads.items()}


def _safe(name: str) -> str:
    return name.replace(".", "_")  # nn.ModuleDict keys cannot hold dots


class AmortizedGuide(_GenericGuide):
    """``amortized``: an MLP encoder from x_n to q(z_n | x_n) for every local site, a diagonal
    Gaussian in unconstrained space (categorical logits for discrete sites); AutoNormal for
    the global sites.

    With one discrete local site c (a mixture's component), the continuous sites are drawn
    after it from q(z_n | x_n, c_n): the encoder gives one Gaussian per category and c picks
    one, as the posterior of a mixture of subspaces or of scales needs. Under ``TraceEnum_ELBO``
    c is enumerated in the guide, so every category's Gaussian is trained.
    """

    kind = "amortized"
    per_datapoint = False

    def __init__(self, model, config, *, hidden: int = HIDDEN, name: str = ""):
        super().__init__(model, config, name=name)
        if hidden < 1:
            raise InputError(f"hidden={hidden} must be at least 1")
        self.hidden = hidden

    def _check_local(self) -> None:
        for site in self._local():
            if site.plates != (DATA_PLATE,):
                raise InputError(
                    f"site '{site.name}' sits in plates {', '.join(site.plates)}; the "
                    f"{self.kind} guide encodes local sites in pyro.plate('{DATA_PLATE}') alone: "
                    "declare per-datapoint dimensions with .to_event(), or use auto-normal")

    def _ordered(self) -> list[LatentSite]:
        """Local sites, discrete ones first (the continuous ones may depend on them)."""
        return self._local(discrete=True) + self._local(discrete=False)

    def _given(self) -> LatentSite | None:
        """The discrete local site the continuous ones are conditioned on: the only one."""
        discrete = self._local(discrete=True)
        return discrete[0] if len(discrete) == 1 else None

    def _sizes(self) -> dict[str, int]:
        given = self._given()
        copies = given.categories if given is not None else 1
        sizes = {}
        for site in self._local():
            if site.discrete:
                sizes[_safe(site.name)] = 1 if site.kind == "bernoulli" else site.categories
            else:
                sizes[_safe(site.name)] = copies * 2 * math.prod(site.unconstrained_shape())
        return sizes

    def _build(self, x, num_data, subsample_size):
        if x is None:
            raise InputError(f"the {self.kind} guide needs data x; it encodes q(z | x)")
        self._check_local()
        self._hold("global_guide", self._auto_normal(self._global()))
        self.encoder = Encoder(x, self._sizes(), self.hidden).to(x)
        encoder = self._modules["encoder"]  # self.encoder would register it with Pyro now
        with torch.no_grad():  # start every site at the prior's centre
            for site in self._local():
                bias = encoder.heads[_safe(site.name)].bias
                init = site.init.to(bias).reshape(-1)
                if site.discrete:
                    bias.copy_(init)
                else:
                    width = init.shape[0]
                    per_category = bias.view(-1, 2 * width)
                    per_category[:, :width] = init
                    per_category[:, width:] = _softplus_inverse(INIT_SCALE)

    def _continuous(self, site: LatentSite, out: torch.Tensor, features: torch.Tensor):
        shape = site.unconstrained_shape()
        loc, raw_scale = out.chunk(2, dim=-1)
        scale = nn.functional.softplus(raw_scale) + 1e-5
        transforms = [ReshapeTransform((loc.shape[-1],), shape)] if shape != (loc.shape[-1],) \
            else []
        return _constrained(dist.Normal(loc, scale).to_event(1), transforms, site)

    def _guide(self, x, *, num_data, subsample_size):
        # update_module_params: a new guide over a filled param store takes the stored weights
        encoder = pyro.module(self._pyro_get_fullname("encoder"), self._modules["encoder"],
                              update_module_params=True)
        result = self.global_guide(x, num_data=num_data, subsample_size=subsample_size) \
            if self.global_guide is not None else {}
        result = dict(result)
        if not self._local():
            return result
        given = self._given()
        with self._data_plate(x, num_data, subsample_size) as rows:
            features, outputs = encoder(x[rows])
            for site in self._ordered():
                out = outputs[_safe(site.name)]
                if site.discrete:
                    logits = out.squeeze(-1) if site.kind == "bernoulli" else out
                    result[site.name] = _sample_discrete(site, logits)
                    continue
                context = features
                if given is not None:  # pick the Gaussian of the drawn category, row by row
                    category = _category(given, result[given.name])
                    out = out.unflatten(-1, (given.categories, -1))
                    out = out[torch.arange(out.shape[0], device=out.device), category]
                    batch = torch.broadcast_shapes(category.shape, features.shape[:-1])
                    one_hot = nn.functional.one_hot(category, given.categories).to(features)
                    context = torch.cat([features.expand(*batch, -1),
                                         one_hot.expand(*batch, -1)], -1)
                result[site.name] = pyro.sample(site.name,
                                                self._continuous(site, out, context))
        return result


def _category(site: LatentSite, value: torch.Tensor) -> torch.Tensor:
    """The category index of a discrete site's value (one-hot, boolean or integer)."""
    if site.kind == "one-hot":
        return value.argmax(-1)
    return value.long()


def _constrained(base, transforms: list, site: LatentSite) -> dist.TorchDistribution:
    """``base`` over the flat unconstrained values, then ``transforms``, then the bijection
    onto the site's support. Every transform caches its last pair, so the log-density of a draw
    never inverts a planar layer (which has no closed-form inverse)."""
    to_support = biject_to(site.support)
    transforms = [t.with_cache(1) for t in transforms]
    if not _is_identity(to_support):
        transforms.append(to_support.with_cache(1))
    if not transforms:
        return base
    return dist.TransformedDistribution(base, transforms)


def _is_identity(transform) -> bool:
    if isinstance(transform, IndependentTransform):
        return _is_identity(transform.base_transform)
    return isinstance(transform, ComposeTransform) and not transform.parts


def _softplus_inverse(value: float) -> float:
    return math.log(math.expm1(value))


class FlowGuide(AmortizedGuide):
    """``flow``: for each continuous local site, a standard normal pushed through ``layers``
    normalizing-flow layers conditioned on the encoder's features, then through the amortized
    Gaussian's affine map x -> loc(x) + scale(x) * (.): affine coupling layers with the halves
    swapped between them (dimension >= 2, RealNVP), monotone rational-linear spline layers on
    [-3, 3] (dimension 1, which cannot be split). Each layer starts at (or near) the identity,
    so the flow starts as the amortized guide."""

    kind = "flow"

    def __init__(self, model, config, *, hidden: int = HIDDEN, layers: int = FLOW_LAYERS,
                 name: str = ""):
        super().__init__(model, config, hidden=hidden, name=name)
        if layers < 1:
            raise InputError(f"layers={layers} must be at least 1")
        self.layers = layers

    def _build(self, x, num_data, subsample_size):
        super()._build(x, num_data, subsample_size)
        flows = nn.ModuleDict()
        given = self._given()
        context = self.hidden + (given.categories if given is not None else 0)
        for site in self._local(discrete=False):
            width = math.prod(site.unconstrained_shape())
            layers = nn.ModuleList(
                _coupling(width, context, self.hidden) if width > 1
                else conditional_spline(1, context, [self.hidden])
                for _ in range(self.layers))
            for layer in layers:
                _zero_last(getattr(layer, "nn", None) or layer)
            flows[_safe(site.name)] = layers
        self._modules["encoder"].flows = flows.to(x)

    def _continuous(self, site: LatentSite, out: torch.Tensor, features: torch.Tensor):
        shape = site.unconstrained_shape()
        loc, raw_scale = out.chunk(2, dim=-1)
        scale = nn.functional.softplus(raw_scale) + 1e-5
        width = loc.shape[-1]
        # the flow's layers see every batch dimension the draw will have (particles included):
        # a spline's parameters do not broadcast against its input
        batch = _plate_batch(torch.broadcast_shapes(loc.shape[:-1], features.shape[:-1]))
        loc, scale = loc.expand(*batch, width), scale.expand(*batch, width)
        context = features.expand(*batch, features.shape[-1])
        transforms = []
        for i, layer in enumerate(self._modules["encoder"].flows[_safe(site.name)]):
            if i and width > 1:
                transforms.append(_swap(width, loc.device))
            transforms.append(layer.condition(context))
        transforms.append(AffineTransform(loc, scale, event_dim=1))
        if shape != (width,):
            transforms.append(ReshapeTransform((width,), shape))
        base = dist.Normal(torch.zeros_like(loc), torch.ones_like(scale)).to_event(1)
        return _constrained(base, transforms, site)


def _plate_batch(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` broadcast with the sizes of the vectorized plates now active."""
    sizes = {f.dim: f.size for f in get_plates() if f.vectorized and f.dim is not None}
    length = max([len(shape), *(-dim for dim in sizes)])
    target = [1] * (length - len(shape)) + list(shape)
    for dim, size in sizes.items():
        target[dim] = size if target[dim] == 1 else target[dim]
    return tuple(target)


def _coupling(width: int, context: int, hidden: int) -> ConditionalAffineCoupling:
    split = width // 2
    hypernet = ConditionalDenseNN(split, context, [hidden], param_dims=[width - split,
                                                                        width - split])
    _zero_last(hypernet)
    return ConditionalAffineCoupling(split, hypernet)


def _zero_last(network: nn.Module) -> None:
    """Zero the last linear layer: a coupling layer starts as the identity, a spline as the
    identity on its knots."""
    last = [m for m in network.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


def _swap(width: int, device) -> Permute:
    """Move the second half in front, so the next coupling layer transforms the first."""
    split = width // 2
    order = torch.cat([torch.arange(split, width, device=device),
                       torch.arange(split, device=device)])
    return Permute(order)


# --- the set a declared model gets ----------------------------------------------------------


def _factory(guide_class: type, name: str, per_datapoint: bool, **options) -> Callable:
    def factory(model, config):
        return guide_class(model, config, **options)
    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = guide_class.__doc__
    factory.per_datapoint = per_datapoint
    return factory


def generic_guides(sites) -> tuple[dict[str, Callable], dict[str, str]]:
    """The generic guides that apply to a model with these :class:`zoo.declare.LatentSites`,
    and the ELBO estimator for each: ``TraceEnum_ELBO`` when there are discrete sites."""
    has_local = bool(sites.local)
    guides = {"auto-normal": _factory(MeanFieldGuide, "auto-normal", has_local)}
    if sites.continuous_global:
        guides["auto-lowrank"] = _factory(GlobalGaussianGuide, "auto-lowrank", has_local,
                                          covariance="lowrank")
        guides["auto-mvn"] = _factory(GlobalGaussianGuide, "auto-mvn", has_local,
                                      covariance="full")
    if has_local:
        guides["amortized"] = _factory(AmortizedGuide, "amortized", False)
        if sites.continuous_local:
            guides["flow"] = _factory(FlowGuide, "flow", False)
    elbo = "TraceEnum_ELBO" if sites.discrete else "Trace_ELBO"
    return guides, {name: elbo for name in guides}
