"""The guide registry: which guides approximate the posterior of which model family.

A guide module registers its guides for a model family by the model's registry name, at import
time::

    register("gmm", "exact", ExactGuide, elbo="Trace_ELBO", default=True)

The zoo never imports this package; :mod:`inference.catalog` joins a model's spec to its
guides. A model declared with :func:`zoo.declare` and no guides of its own gets the generic
guides of :mod:`guides.generic`, built from the latent sites it declared. A test file or a
user's file may add a guide to a built-in model the same way the built-in modules do.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from zoo.errors import InputError

# Built-in guide modules; importing one registers its guides.
_BUILTIN_MODULES = ("guides.gmm", "guides.ppca", "guides.dglvm")


@dataclass(frozen=True)
class GuideEntry:
    """One guide of one model family.

    ``factory(model, config)`` builds the guide, with the model's signature. ``elbo`` is the
    ELBO estimator SVI uses with it unless told otherwise. ``per_datapoint`` says the guide
    has free parameters per training row, so it has nothing to say about held-out rows; it is
    read from the factory's own ``per_datapoint`` attribute (the guide class declares it once).
    """

    name: str
    factory: Callable
    elbo: str = "Trace_ELBO"

    @property
    def per_datapoint(self) -> bool:
        return bool(getattr(self.factory, "per_datapoint", False))


_GUIDES: dict[str, dict[str, GuideEntry]] = {}  # model name -> guide name -> entry
_DEFAULTS: dict[str, str] = {}  # model name -> the guide SVI uses without --guide
_loaded = False


def register(model: str, name: str, factory: Callable, *, elbo: str = "Trace_ELBO",
             default: bool = False) -> GuideEntry:
    """Offer the guide ``name`` (``factory(model, config) -> guide``) for the model family
    ``model``; ``default=True`` makes it the one SVI uses without ``--guide``."""
    if not callable(factory):
        raise InputError(f"guide '{name}' for model '{model}': the factory must be callable "
                         "as factory(model, config) -> guide")
    entry = GuideEntry(name=name, factory=factory, elbo=elbo)
    _GUIDES.setdefault(model, {})[name] = entry
    if default:
        _DEFAULTS[model] = name
    return entry


def unregister(model: str, name: str) -> None:
    """Take a guide away again (tests that add a toy guide clean up with this)."""
    _GUIDES.get(model, {}).pop(name, None)
    if _DEFAULTS.get(model) == name:
        del _DEFAULTS[model]


def registered(model: str) -> dict[str, GuideEntry]:
    """The guides registered for the model family ``model``, built-ins loaded first."""
    _load_builtins()
    return dict(_GUIDES.get(model, {}))


def default_for(model: str) -> str | None:
    _load_builtins()
    return _DEFAULTS.get(model)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
