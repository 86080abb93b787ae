"""One way to extend the zoo: a registry of named things that modules add to when imported.

Models, guides, strategies, figures and estimators are each a :class:`Registry` with an entry
point group (``lvm_zoo.models``, ``lvm_zoo.guides``, ``lvm_zoo.strategies``,
``lvm_zoo.figures``, ``lvm_zoo.estimators``). A module registers its things at import time
(``zoo.registry.register(spec)``, ``strategies.register(MyStrategy())``, ...); a separately
installed distribution makes its modules known by naming them under the group in its own
``pyproject.toml``, as lvm-zoo names its built-ins::

    [project.entry-points."lvm_zoo.models"]
    my-family = "my_package.my_family"   # importing it registers the model(s)

The first look-up imports the built-in modules in their order, then the module of every
entry point of the group installed by another distribution
(:func:`importlib.metadata.entry_points`). The built-ins are read from the list handed to the
registry, not from lvm-zoo's installed metadata, so that a source tree runs as it is whatever
version is installed beside it; a test checks that the list and ``pyproject.toml`` agree.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from collections.abc import Hashable, Iterator, Mapping, Sequence
from importlib.metadata import EntryPoints, entry_points
from typing import Generic, TypeVar

from zoo.errors import InputError

T = TypeVar("T")

DISTRIBUTION = "lvm-zoo"  # our own entry points are the built-ins, loaded from the code's list


class Registry(Mapping, Generic[T]):
    """Named things of one kind, read-only as a mapping (``registry[name]``, ``name in
    registry``, ``list(registry)``), filled by :meth:`register`.

    ``builtins`` are ``(entry point name, module)`` pairs, in the order the registry lists
    their things first. Iterating orders the things by the built-in module that registered
    them (``origin``), then the others in the order they registered.
    """

    def __init__(self, group: str, kind: str, builtins: Sequence[tuple[str, str]] = ()):
        self.group = group
        self.kind = kind  # "model", "guide", ...: for messages
        self.builtins = tuple(builtins)
        self._items: dict[Hashable, T] = {}
        self._origins: dict[Hashable, str | None] = {}
        self._state = "new"  # "new" -> "loading" -> "loaded"

    # --- filling it ------------------------------------------------------------------------

    def register(self, key: Hashable, item: T, *, origin: str | None = None) -> T:
        """Add ``item`` under ``key`` (replacing what was there); returns ``item``. The
        built-ins are loaded first, so that they keep their names and their places.
        ``origin`` is the module that defines the item, which orders the built-ins."""
        self.load()
        self._items[key] = item
        self._origins[key] = origin
        return item

    def unregister(self, key: Hashable) -> None:
        """Take ``key`` away again (tests that add a toy clean up with this)."""
        self.pop(key, None)

    # a test that declares things puts the registry back as it was with these three
    def pop(self, key: Hashable, *default: T) -> T:
        self.load()
        return self._items.pop(key, *default)

    def clear(self) -> None:
        """Empty it; the built-ins stay imported, so they come back only by :meth:`update`."""
        self.load()
        self._items.clear()

    def update(self, items: Mapping[Hashable, T]) -> None:
        self.load()
        for key, item in items.items():
            self._items[key] = item
            self._origins.setdefault(key, None)

    def load(self) -> None:
        """Import the built-in modules, then every other distribution's (once)."""
        if self._state != "new":
            return
        self._state = "loading"
        try:
            for _, module in self.builtins:
                importlib.import_module(module)
            for point in self.plugins():
                try:
                    point.load()
                except Exception as error:
                    where = f" of distribution '{point.dist.name}'" if point.dist else ""
                    raise InputError(
                        f"the {self.kind} plugin '{point.name} = {point.value}'{where} "
                        f"(entry point group '{self.group}') failed to import "
                        f"({type(error).__name__}: {error}); fix or uninstall it") from error
        except BaseException:
            self._state = "new"  # the next look-up tries again, and says so again
            raise
        self._state = "loaded"

    def plugins(self) -> list:
        """The entry points of this group that other installed distributions declare."""
        return [point for point in _installed(tuple(sys.path)).select(group=self.group)
                if point.dist is None or _normalized(point.dist.name) != DISTRIBUTION]

    # --- reading it ------------------------------------------------------------------------

    def _ordered(self) -> list[Hashable]:
        self.load()
        rank = {module: i for i, (_, module) in enumerate(self.builtins)}
        keys = list(self._items)
        return sorted(keys, key=lambda k: rank.get(self._origins[k], len(rank)))

    def __getitem__(self, key: Hashable) -> T:
        self.load()
        return self._items[key]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._ordered())

    def __len__(self) -> int:
        self.load()
        return len(self._items)

    def names(self) -> list[Hashable]:
        """Every registered key, in the registry's order."""
        return self._ordered()

    def __repr__(self) -> str:
        return f"<{self.kind} registry '{self.group}': {len(self._items)} registered>"


@functools.lru_cache(maxsize=4)
def _installed(path: tuple[str, ...]) -> EntryPoints:
    """Every installed entry point, read once per search path (one scan for all registries)."""
    return entry_points()


def _normalized(name: str) -> str:
    """A distribution's name as packaging compares them (PEP 503): ``LVM_Zoo`` is ``lvm-zoo``."""
    return re.sub(r"[-_.]+", "-", name).lower()
