"""Where a model meets its guides: the one module that joins ``zoo`` and ``guides``.

The zoo's registry knows what a model IS; the guide registry (:mod:`guides.registry`) knows
which guides approximate whose posterior. :func:`get_model` and :func:`models` return the
model's spec with its guides filled in (``spec.guides``, ``spec.default_guide``,
``spec.default_elbo``), from three sources in this order:

1. the guides a user declared with the model (``zoo.declare(..., guides=...)``);
2. for a declared model without guides of its own, the generic guides of
   :mod:`guides.generic`, built from the latent sites it declared;
3. the guides registered for the family's name from ``guides/`` (built-ins, or a test or user
   file that adds one to a built-in model).

Every guide reaches ``spec.guides`` as a :class:`guides.registry.GuideEntry` (callable as its
factory, with its ``elbo``, ``default`` and ``per_datapoint``), whichever source it came from.

Everything in ``inference`` that looks a model up asks here, never ``zoo.registry`` directly
(``inference`` still imports the zoo's types, capability names and model functions).
"""

from __future__ import annotations

import dataclasses

from guides import registry as guide_registry
from guides.generic import generic_guides
from guides.registry import GuideEntry
from zoo import registry
from zoo.declare import check_guide_defaults
from zoo.registry import ModelSpec

_JOINED = "_lvm_zoo_joined"  # marks a spec that already carries its guides


def join(spec: ModelSpec) -> ModelSpec:
    """``spec`` with its guides attached (a joined spec is returned as it is)."""
    if getattr(spec, _JOINED, False):
        return spec
    factories = dict(spec.guides)
    elbos = dict(spec.default_elbo)
    if not factories and spec.declared_sites is not None:
        factories, generic_elbos = generic_guides(spec.declared_sites)
        elbos = {**generic_elbos, **elbos}
        check_guide_defaults(spec.name, factories, spec.default_guide, spec.default_elbo)
    entries: dict[str, GuideEntry] = {
        name: guide_registry.entry(name, factory, elbo=elbos.get(name, "Trace_ELBO"),
                                   default=name == spec.default_guide)
        for name, factory in factories.items()}
    for name, item in guide_registry.registered(spec.name).items():
        entries[name] = dataclasses.replace(item, elbo=elbos.get(name, item.elbo))
    default = spec.default_guide or guide_registry.default_for(spec.name)
    entries = {name: dataclasses.replace(item, default=name == default)
               for name, item in entries.items()}
    joined = dataclasses.replace(spec, guides=entries, default_guide=default,
                                 default_elbo={name: e.elbo for name, e in entries.items()})
    object.__setattr__(joined, _JOINED, True)
    return joined


def get_model(name: str | ModelSpec) -> ModelSpec:
    """A model by registry name or ``path/to/file.py:NAME``, with its guides."""
    return join(name if isinstance(name, ModelSpec) else registry.get_model(name))


def guide_entry(spec: ModelSpec, guide: str) -> GuideEntry:
    """The typed entry of ``spec``'s guide ``guide`` (a KeyError if it has none)."""
    return join(spec).guides[guide]


def models(*, guides: bool = True) -> dict[str, ModelSpec]:
    """Every registered model, with its guides, built-ins first. ``guides=False``: the specs as
    registered, for what reads only a model's own capabilities (its EM steps): attaching a
    declared model's generic guides traces the model once."""
    specs = registry.models()
    return {name: join(spec) for name, spec in specs.items()} if guides else specs
