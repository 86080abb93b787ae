"""The guide registry: which guides approximate the posterior of which model family.

A guide module registers its guides for a model family by the model's registry name, at import
time::

    register("gmm", "exact", ExactGuide, elbo="Trace_ELBO", default=True)

The zoo never imports this package; :mod:`inference.catalog` joins a model's spec to its
guides. A model declared with :func:`zoo.declare` and no guides of its own gets the generic
guides of :mod:`guides.generic`, built from the latent sites it declared. A test file, a
user's file or an installed plugin (its module named under the entry point group
``lvm_zoo.guides``, see :mod:`zoo.plugins`) adds a guide to any model the same way the built-in
modules do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from zoo.errors import InputError
from zoo.plugins import Registry


@dataclass(frozen=True)
class GuideEntry:
    """One guide of one model family, as the catalog hands it out (``spec.guides[name]``).

    ``factory(model, config)`` builds the guide, with the model's signature; calling the entry
    calls the factory. ``elbo`` is the ELBO estimator SVI uses with it unless told otherwise;
    ``default`` makes it the guide SVI uses without ``--guide``. ``per_datapoint`` says the
    guide has free parameters per training row, so it has nothing to say about held-out rows
    (by default the factory's own ``per_datapoint`` attribute: the guide class says it once).
    """

    name: str
    factory: Callable
    elbo: str = "Trace_ELBO"
    default: bool = False
    per_datapoint: bool = False

    def __call__(self, model, config, **options):
        return self.factory(model, config, **options)


def entry(name: str, factory: Callable, *, elbo: str = "Trace_ELBO", default: bool = False,
          per_datapoint: bool | None = None) -> GuideEntry:
    """A :class:`GuideEntry` (``factory`` as it is if it already is one)."""
    if isinstance(factory, GuideEntry):
        return dataclasses.replace(factory, name=name, elbo=elbo, default=default)
    if not callable(factory):
        raise InputError(f"guide '{name}': the factory must be callable as "
                         "factory(model, config) -> guide")
    if per_datapoint is None:
        per_datapoint = bool(getattr(factory, "per_datapoint", False))
    return GuideEntry(name=name, factory=factory, elbo=elbo, default=default,
                      per_datapoint=per_datapoint)


# The built-in guide modules; importing one registers its guides. pyproject.toml declares the
# same modules under [project.entry-points."lvm_zoo.guides"] (see zoo.plugins).
BUILTINS = (("gmm", "guides.gmm"), ("ppca", "guides.ppca"), ("dglvm", "guides.dglvm"),
            ("bayesian-gmm", "guides.bayesian_gmm"), ("bayesian-ppca", "guides.bayesian_ppca"))
_GUIDES: Registry[GuideEntry] = Registry("lvm_zoo.guides", "guide", BUILTINS)
# ^ keyed by (model family, guide name)


def register(model: str, name: str, factory: Callable, *, elbo: str = "Trace_ELBO",
             default: bool = False, per_datapoint: bool | None = None) -> GuideEntry:
    """Offer the guide ``name`` (``factory(model, config) -> guide``) for the model family
    ``model``; ``default=True`` makes it the one SVI uses without ``--guide``."""
    try:
        new = entry(name, factory, elbo=elbo, default=default, per_datapoint=per_datapoint)
    except InputError as error:
        raise InputError(f"model '{model}': {error}") from None
    if default:  # one default per family: the last one registered
        for (family, other), old in list(_GUIDES.items()):
            if family == model and old.default:
                _GUIDES.register((family, other), dataclasses.replace(old, default=False))
    return _GUIDES.register((model, name), new)


def unregister(model: str, name: str) -> None:
    """Take a guide away again (tests that add a toy guide clean up with this)."""
    _GUIDES.unregister((model, name))


def registered(model: str) -> dict[str, GuideEntry]:
    """The guides registered for the model family ``model``: the built-ins, then plugins'."""
    return {name: item for (family, name), item in _GUIDES.items() if family == model}


def default_for(model: str) -> str | None:
    """The guide SVI uses for ``model`` without ``--guide`` (None: the family names none)."""
    return next((name for name, item in registered(model).items() if item.default), None)
