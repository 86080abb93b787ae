"""Declare your own model: one call gives it everything the built-in models get.

A user writes a Pyro model with the zoo's signature in any Python file and declares it::

    from dataclasses import dataclass, field
    import pyro, pyro.distributions as dist, torch
    from zoo import declare

    @dataclass(frozen=True)
    class Config:
        dim: int = field(default=2, metadata={"cli": False})  # D, filled in from the data
        latent_dim: int = field(default=1, metadata={"help": "dimension of z"})

    def model(x=None, *, num_data=None, subsample_size=None, config):
        ...  # z inside pyro.plate("data", N, subsample_size=subsample_size)

    declare("my-model", model, config=Config, local_sites=("z",))

and then ``lvm-zoo fit my_model.py:my-model``, ``lvm-zoo compare my_model.py:my-model`` and
``lvm-zoo check my_model.py:my-model`` work on it. :func:`declare` builds a
:class:`~zoo.registry.ModelSpec` and calls :func:`~zoo.registry.register`, the same registry
the built-in models use; ``zoo/mppca.py`` and ``zoo/student_t_mixture.py`` are declared this
way. Without ``guides`` the model gets the generic guides of :mod:`guides.generic`
(``auto-normal``, ``amortized``, ``flow``; ``auto-lowrank`` and ``auto-mvn`` when it has global
latent sites), which :mod:`inference.catalog` attaches from the sites recorded here: the zoo
never imports the guides.

The model is traced once from its prior (``x=None``, three rows, the config's defaults, with
its own random stream and param store), only to find which latent sites are discrete: when
that is first asked (its guides are attached), not at declaration, so that a command pays for
the models it uses only. A model that cannot run that way is still declared, and ``lvm-zoo
check`` says why.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from zoo.errors import InputError
from zoo.registry import EMSteps, ModelSpec, Params, register, source_file
from zoo.seeding import own_random_stream

__all__ = ["DeclaredModel", "LatentSites", "declare"]

PRIOR_ROWS = 3  # rows drawn from the prior when the model is traced at declaration


@dataclass(frozen=True)
class LatentSites:
    """Which latent sample sites of a model are local (one value per datapoint, inside
    ``pyro.plate("data")``) and which global, and which of them are discrete.

    ``find_discrete`` is the discrete sites' names, or a function that finds them; a declared
    model's traces the model once from its prior, at the first use of :attr:`discrete`, not at
    declaration: a first trace can pay torch's lazy imports (a multivariate normal's shape
    check imports SymPy, 0.6 s), and every command would pay them for every model declared."""

    local: tuple[str, ...] = ()
    global_: tuple[str, ...] = ()
    find_discrete: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()

    @functools.cached_property
    def discrete(self) -> tuple[str, ...]:
        found = self.find_discrete
        return tuple(found() if callable(found) else found)

    @property
    def continuous_local(self) -> tuple[str, ...]:
        return tuple(name for name in self.local if name not in self.discrete)

    @property
    def continuous_global(self) -> tuple[str, ...]:
        return tuple(name for name in self.global_ if name not in self.discrete)


class _InitialValues(Messenger):
    """Gives ``pyro.param`` sites the given initial values the first time they are created
    (data-based starts from ``init_params``); the model's own init and constraint otherwise."""

    def __init__(self, values: Params | None):
        super().__init__()
        self.values = values or {}

    def _pyro_param(self, msg: dict) -> None:
        name = msg["args"][0]
        if name in self.values and name not in pyro.get_param_store():
            msg["args"] = (name, self.values[name])


class DeclaredModel:
    """A declared Pyro model bound to its config: ``model(x=None, *, num_data=None,
    subsample_size=None)``, the zoo's signature. ``sites`` says which latent sites are local,
    global and discrete; the generic guides read it."""

    def __init__(self, function: Callable, config: Any, params: Params | None,
                 sites: LatentSites):
        self.function = function
        self.config = config
        self.params = None if params is None else dict(params)
        self.sites = sites
        self._config_kwarg = {"config": config} if _takes_config(function) else {}
        self.__name__ = getattr(function, "__name__", "model")

    def __call__(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                 subsample_size: int | None = None) -> Any:
        with _InitialValues(self.params):
            return self.function(x, num_data=num_data, subsample_size=subsample_size,
                                 **self._config_kwarg)

    def __repr__(self) -> str:
        return f"DeclaredModel({self.__name__}, {self.config!r})"


@dataclass(frozen=True)
class DefaultConfig:
    """The config of a model declared without one: only the data's dimension."""

    dim: int = field(default=2, metadata={"cli": False})  # D, filled in from the data

    def validate(self, num_data: int) -> None:
        if num_data < 1:
            raise InputError(f"the data have {num_data} rows; give at least one")


def declare(
    name: str,
    model: Callable | None = None,
    *,
    config: type | None = None,
    local_sites: Sequence[str] = (),
    global_sites: Sequence[str] = (),
    guides: Mapping[str, Callable] | None = None,
    summary: str | None = None,
    default_data: str = "old-faithful",
    default_guide: str | None = None,
    default_elbo: Mapping[str, str] | None = None,
    log_marginal: Callable | None = None,
    posterior: Callable | None = None,
    sample: Callable | None = None,
    em: EMSteps | None = None,
    closed_form: Callable | None = None,
    synthetic: Callable | None = None,
    init_params: Callable | None = None,
    svi_defaults: Mapping[str, Any] | None = None,
    notes: str = "",
    capabilities: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> ModelSpec | Callable:
    """Register a model written as a Pyro function; returns its :class:`ModelSpec`.

    Args:
        name: the name it is registered under (``lvm-zoo fit FILE.py:NAME``).
        model: ``model(x=None, *, num_data=None, subsample_size=None)``, the zoo's signature,
            with a keyword-only ``config`` argument if it needs its config. ``x : (N, D)``, or
            ``None`` to draw ``num_data`` rows from the prior; local latents and the observed
            site inside ``pyro.plate("data", N, subsample_size=subsample_size)``. Leave it out
            to use ``declare`` as a decorator (it then returns the function unchanged).
        config: a dataclass whose fields become command-line flags (``latent_dim`` gives
            ``--latent-dim``; ``metadata={"cli": False}`` hides one). A ``dim`` field (filled in
            from the data) and a ``validate(num_data)`` method are added when missing.
            Default: a config with ``dim`` only.
        local_sites: latent sites with one value per datapoint, inside the data plate.
        global_sites: latent sites shared by all datapoints, outside it.
        guides: guide name -> factory ``(model, config) -> guide`` with the model's signature;
            a factory may carry ``per_datapoint = True``. Default: the generic guides.
        summary: one line for ``lvm-zoo list`` (default: the model's docstring's first line).
        default_data: the dataset ``lvm-zoo fit`` and ``compare`` use without ``--data``.
        default_guide, default_elbo: the guide SVI uses without ``--guide``, and the ELBO
            estimator per guide (default: the generic guides' choice, else Trace_ELBO).
        log_marginal, posterior, sample, em, closed_form, synthetic, init_params: the closed
            forms, as in :class:`ModelSpec` (``log_marginal(config, params, x) -> (N,)`` nats
            makes the log-likelihood exact; ``em`` adds ``--inference em``).
        svi_defaults: SVI options such as ``{"steps": 2000, "lr": 0.01}``.
        notes: shown by ``lvm-zoo list``.
        capabilities: capability name -> hook, for a strategy that asks for a capability the
            arguments above do not name (:meth:`ModelSpec.capability`).
        replace: replace a registered model of the same name (a built-in one too); without
            it, taking another model's name is an error. The same file declaring its model
            again (imported twice) replaces it either way.
    """
    if model is None:
        options = {k: v for k, v in locals().items() if k not in ("name", "model")}

        def decorator(function: Callable) -> Callable:
            declare(name, function, **options)
            return function
        return decorator

    _check_declaration(name, model, local_sites, global_sites, guides)
    config_class = _complete_config(config or DefaultConfig, name)
    declared = LatentSites(local=tuple(local_sites), global_=tuple(global_sites))
    sites = dataclasses.replace(declared, find_discrete=functools.partial(
        _discrete_sites, model, config_class, declared))

    def make_model(config: Any, params: Params | None = None) -> DeclaredModel:
        return DeclaredModel(model, config, params, sites)

    # Without guides of its own the model gets the generic guides, attached by
    # ``inference.catalog`` from ``sites`` (the zoo does not import the guides).
    if guides is not None:
        check_guide_defaults(name, guides, default_guide, default_elbo or {})
    spec = ModelSpec(
        name=name,
        summary=summary or _first_line(model.__doc__) or f"user model {name}",
        config_class=config_class,
        make_model=make_model,
        guides=dict(guides or {}),
        default_data=default_data,
        default_guide=default_guide,
        default_elbo=dict(default_elbo or {}),
        init_params=init_params,
        log_marginal=log_marginal,
        posterior=posterior,
        sample=sample,
        em=em,
        closed_form=closed_form,
        synthetic=synthetic,
        local_sites=sites.local,
        global_sites=sites.global_,
        declared_sites=sites,
        svi_defaults=dict(svi_defaults or {}),
        notes=notes,
        capabilities=dict(capabilities or {}),
    )
    return register(spec, replace=replace, source=source_file(model))


# --- helpers ----------------------------------------------------------------------------------


def check_guide_defaults(name: str, guides: Mapping[str, Callable], default_guide: str | None,
                          default_elbo: Mapping[str, str]) -> None:
    """``default_guide`` and ``default_elbo`` name guides the model has (the catalog checks the
    same for a model that gets the generic guides)."""
    unknown = sorted(set(default_elbo) - set(guides))
    if unknown:
        raise InputError(f"declare('{name}'): default_elbo names guides {', '.join(unknown)}, "
                         f"which the model does not have; its guides are: {', '.join(guides)}")
    if default_guide is not None and default_guide not in guides:
        raise InputError(f"declare('{name}'): default_guide '{default_guide}' is not one of its "
                         f"guides: {', '.join(guides)}")


def _takes_config(function: Callable) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "config" in parameters


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0].strip()


def _check_declaration(name, model, local_sites, global_sites, guides) -> None:
    """Mistakes in the call itself, before anything runs: each message names the fix."""
    if not isinstance(name, str) or not name or ":" in name or "/" in name:
        raise InputError(f"declare({name!r}): the name must be a non-empty string without ':' "
                         "or '/', e.g. 'my-model'")
    if not callable(model):
        raise InputError(f"declare('{name}'): model must be a function "
                         "model(x=None, *, num_data=None, subsample_size=None), got "
                         f"{type(model).__name__}")
    try:
        parameters = inspect.signature(model).parameters
    except (TypeError, ValueError):
        parameters = {}
    missing = [p for p in ("num_data", "subsample_size") if parameters and p not in parameters
               and not any(q.kind is q.VAR_KEYWORD for q in parameters.values())]
    if missing:
        raise InputError(f"declare('{name}'): the model takes no {', '.join(missing)}; give it "
                         "the zoo's signature model(x=None, *, num_data=None, "
                         "subsample_size=None)")
    for label, names in (("local_sites", local_sites), ("global_sites", global_sites)):
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise InputError(f"declare('{name}'): {label} must be a tuple of site names, e.g. "
                             f"{label}=('z',), got {names!r}")
    both = sorted(set(local_sites) & set(global_sites))
    if both:
        raise InputError(f"declare('{name}'): site(s) {', '.join(both)} are declared both local "
                         "and global; a site is one or the other")
    if guides is not None and (not isinstance(guides, Mapping) or not guides
                               or not all(callable(g) for g in guides.values())):
        raise InputError(f"declare('{name}'): guides must map names to factories "
                         "(model, config) -> guide, e.g. {'mine': MyGuide}; leave it out for "
                         "the generic guides")


def _complete_config(config: type, name: str) -> type:
    """The config class with a ``dim`` field and a ``validate`` method, added when missing."""
    if not dataclasses.is_dataclass(config) or not isinstance(config, type):
        raise InputError(f"declare('{name}'): config must be a dataclass (the class, not an "
                         f"instance), got {config!r}")
    has_dim = any(f.name == "dim" for f in dataclasses.fields(config))
    has_validate = callable(getattr(config, "validate", None))
    if has_dim and has_validate:
        return config
    extra = [] if has_dim else [("dim", int, field(default=2, metadata={"cli": False}))]
    namespace = {} if has_validate else {"validate": DefaultConfig.validate}
    frozen = config.__dataclass_params__.frozen
    completed = dataclasses.make_dataclass(config.__name__, extra, bases=(config,),
                                           namespace=namespace, frozen=frozen)
    completed.__module__, completed.__doc__ = config.__module__, config.__doc__
    return completed


def _has_defaults(config_class: type) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(config_class))


def _discrete_sites(model: Callable, config_class: type, declared: LatentSites
                    ) -> tuple[str, ...]:
    """The declared latent sites whose support is discrete, from one draw from the prior."""
    if not _has_defaults(config_class):
        return ()
    try:
        probe = DeclaredModel(model, config_class(), None, declared)
        with own_random_stream(None), pyro.get_param_store().scope(), torch.no_grad():
            trace = poutine.block(poutine.trace(probe).get_trace)(None, num_data=PRIOR_ROWS)
    except Exception:  # a model that cannot run from its prior: `lvm-zoo check` says why
        return ()
    names = set(declared.local) | set(declared.global_)
    return tuple(name for name, site in trace.nodes.items()
                 if name in names and site["type"] == "sample" and not site["is_observed"]
                 and site["fn"].support.is_discrete)
