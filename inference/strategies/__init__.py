"""The strategy registry: every way of fitting a model, one module each.

A strategy is an object with a ``name`` (what ``--inference`` takes), a one-line ``summary``,
``requires`` (the capabilities it asks a model for, :data:`zoo.registry.EM_STEPS` and the
like; ``applies(spec)`` is true when the model has them all, and a strategy may refine it),
its ``Options`` (a frozen dataclass: its fields become command-line flags, Python keywords and
``lvm-zoo list`` entries, validated from their ``metadata`` as :func:`make_options` says), and
``fit(spec, config, x, options, guide=..., context=...) -> FitResult``. ``cells(spec, config,
x, grid_options)`` says which cells of the comparison grid it contributes (default: one);
``GridOptions`` adds flags to ``lvm-zoo compare``.

Registering one is all it takes::

    register(MyStrategy())

and ``lvm-zoo list``, ``lvm-zoo fit --inference NAME``, ``lvm-zoo compare``,
``inference.api.fit(..., inference=NAME)`` and the scikit-learn estimators pick it up. The
built-in modules of this package, then the modules other distributions name under the entry
point group ``lvm_zoo.strategies`` (:mod:`zoo.plugins`), are imported by :func:`strategies`.
Nothing outside a strategy's own module names it: other code asks the strategy object
(``uses_guide``, ``baseline``, ``checkpoints``) or the model (``spec.has(...)``).

Option fields carry their rules in ``metadata``: ``help`` (the flag's help), ``min`` (a lower
bound, inclusive), ``positive`` (strictly above 0), ``choices``, ``cli=False`` (no flag).
``None`` means "the strategy's or the model's default".
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from inference import distributed
from inference.results import FitResult
from inference.shards import Rows
from zoo.errors import InputError
from zoo.plugins import Registry
from zoo.registry import ModelSpec

# The built-in strategy modules, in the order of the comparison grid (the first strategy that
# applies is a model's default). pyproject.toml declares the same modules under
# [project.entry-points."lvm_zoo.strategies"], where another distribution declares its own.
BUILTINS = (("closed-form", "inference.strategies.closed_form"),
            ("em", "inference.strategies.em"),
            ("online-em", "inference.strategies.online_em"),
            ("kmeans", "inference.strategies.kmeans"),
            ("cavi", "inference.strategies.cavi"),
            ("svi", "inference.strategies.svi"))


@dataclass(frozen=True)
class NoOptions:
    """A strategy without options."""


@dataclass(frozen=True)
class FitContext:
    """What a fit needs beyond the model, the data and the strategy's options."""

    seed: int = 0
    progress: bool = False
    checkpoint: Path | None = None  # where a long fit saves its state (None: nowhere)
    resume: bool = False  # continue from ``checkpoint``
    binarize: str | None = None  # "dynamic": the data are re-binarized every epoch
    chunk_rows: int | None = None  # streamed rows: at most this many in memory at a time
    device: str | None = None  # where streamed chunks go (None: the rows' own device)

    def rows(self, x) -> Rows:
        """``x`` as this process sees it: its shard under a process group, in chunks when the
        rows are streamed (:class:`inference.shards.Rows`)."""
        return Rows(x, group=distributed.current(), chunk_rows=self.chunk_rows,
                    device=self.device)


DEFAULT_CONTEXT = FitContext()


@dataclass(frozen=True)
class Cell:
    """One cell of the comparison grid: a strategy, a guide where it takes one, and option
    overrides (``(("elbo", "TraceEnum_ELBO"),)``) with the text that names them."""

    strategy: str
    guide: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    variant: str | None = None  # e.g. "TraceEnum_ELBO", shown in brackets

    @property
    def label(self) -> str:
        """``"em"``, ``"svi exact"``, ``"svi exact [TraceEnum_ELBO]"``."""
        text = " ".join([self.strategy] + ([self.guide] if self.guide else []))
        return text + (f" [{self.variant}]" if self.variant else "")

    @property
    def slug(self) -> str:
        """A folder name: ``svi-exact`` or ``svi-exact-TraceEnum_ELBO``."""
        return "-".join(p for p in (self.strategy, self.guide, self.variant) if p)


class Strategy:
    """Base class of a strategy; see the module docstring for the contract."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    GridOptions: ClassVar[type | None] = None
    requires: ClassVar[tuple[str, ...]] = ()  # capabilities asked of a model (zoo.registry)
    uses_guide: ClassVar[bool] = False  # whether ``--guide`` applies
    baseline: ClassVar[bool] = False
    # ^ an exact maximum-likelihood fit: the comparison aligns the others to it, fits it for a
    #   spec's baseline models, and figures draw its final log-likelihood as the optimum
    checkpoints: ClassVar[bool] = False  # writes ``context.checkpoint`` and resumes from it

    def applies(self, spec: ModelSpec) -> bool:
        """Whether the strategy can fit ``spec``: by default, the model has every capability
        in ``requires``."""
        return all(spec.has(capability) for capability in self.requires)

    def fit(self, spec: ModelSpec, config, x, options, *, guide: str | None = None,
            context: FitContext = DEFAULT_CONTEXT) -> FitResult:
        raise NotImplementedError

    def cells(self, spec: ModelSpec, config, x, grid_options) -> list[Cell]:
        return [Cell(self.name)]

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


_REGISTRY: Registry[Strategy] = Registry("lvm_zoo.strategies", "strategy", BUILTINS)


def register(strategy: Strategy) -> Strategy:
    """Add a strategy (a module or a test file calls this at import time); returns it."""
    for attribute in ("name", "summary"):
        if not isinstance(getattr(strategy, attribute, None), str):
            raise InputError(f"strategy {strategy!r} needs a string '{attribute}'")
    if not dataclasses.is_dataclass(strategy.Options):
        raise InputError(f"strategy '{strategy.name}': Options must be a frozen dataclass")
    if not all(isinstance(c, str) for c in strategy.requires):
        raise InputError(f"strategy '{strategy.name}': requires must be capability names")
    # ordered by its module: a built-in keeps its place whichever module was imported first
    return _REGISTRY.register(strategy.name, strategy, origin=type(strategy).__module__)


def unregister(name: str) -> None:
    _REGISTRY.unregister(name)


def strategies() -> dict[str, Strategy]:
    """Every registered strategy: the built-ins in the order of the comparison grid (the first
    that applies is a model's default), then any others in the order they registered."""
    return dict(_REGISTRY)


def applicable(spec: ModelSpec) -> list[str]:
    """Names of the strategies that can fit ``spec``, in registry order."""
    return [name for name, s in strategies().items() if s.applies(spec)]


def get(name: str | None, spec: ModelSpec) -> Strategy:
    """The strategy ``name`` for ``spec`` (``None``: the first that applies)."""
    names = applicable(spec)
    if not names:
        raise InputError(f"no inference strategy applies to model '{spec.name}'; give it a "
                         "guide, EM steps or a closed form")
    if name is None:
        return strategies()[names[0]]
    if name not in strategies():
        raise InputError(f"unknown inference '{name}'; choose one of: "
                         + ", ".join(strategies()))
    if name not in names:
        raise InputError(f"--inference {name} does not apply to '{spec.name}'; choose one of: "
                         + ", ".join(names))
    return strategies()[name]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def option_owners() -> dict[str, list[str]]:
    """Option name -> the strategies that take it (for messages and the CLI)."""
    owners: dict[str, list[str]] = {}
    for strategy in strategies().values():
        for f in dataclasses.fields(strategy.Options):
            owners.setdefault(f.name, []).append(strategy.name)
    return owners


def make_options(options_class: type, given: dict[str, Any], *, owner: str) -> Any:
    """``options_class(**given)`` with every value checked against its field's type and
    ``metadata``; ``None`` values are left at the default. An unknown name is an error that
    says which strategy takes it."""
    fields = {f.name for f in dataclasses.fields(options_class)}
    for name, value in given.items():
        if value is not None and name not in fields:
            owners = option_owners().get(name)
            where = (f"it applies to --inference {' or '.join(owners)}" if owners
                     else "no strategy takes it" + closest(name, option_owners()))
            raise InputError(f"{flag(name)} does not apply to {owner}; {where}")
    return options_class(**checked_fields(options_class, given))


def checked_fields(fields_class: type, given: dict[str, Any]) -> dict[str, Any]:
    """The values of ``given`` that are not ``None``, each checked against the declaration of
    its field of the dataclass ``fields_class``: the field's type (an int is not 2.5 or "3"; a
    float is finite) and its ``metadata`` (``min``, ``positive``, ``choices``). The one check
    of a strategy's options and of a model's config fields, for flags and keywords alike; a
    name that is not a field is left to the caller."""
    fields = {f.name: f for f in dataclasses.fields(fields_class)}
    try:
        hints = typing.get_type_hints(fields_class)
    except Exception:  # noqa: BLE001 -- a user's config whose annotations do not resolve
        hints = {}
    return {name: _checked(name, value, hints.get(name, Any), fields[name].metadata)
            for name, value in given.items() if value is not None and name in fields}


def closest(name: str, known) -> str:
    """``"; did you mean --components?"`` for the known name closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {flag(close[0])}?" if close else ""


def _checked(name: str, value: Any, hint: Any, metadata) -> Any:
    kinds = _kinds(hint)
    if bool in kinds and isinstance(value, bool):
        return value
    if tuple in kinds and isinstance(value, list):  # a keyword's list is the flag's tuple
        value = tuple(value)
    if isinstance(value, bool) or not any(_is(value, k) for k in kinds):
        wanted = " or ".join(getattr(k, "__name__", str(k)) for k in kinds if k is not
                             type(None))
        raise InputError(f"{flag(name)}={value!r} must be {wanted}, got "
                         f"{type(value).__name__}")
    if float in kinds and isinstance(value, int):
        value = float(value)
    if isinstance(value, tuple):
        _check_items(name, value, _item_kinds(hint))
    choices = metadata.get("choices")
    for item in value if isinstance(value, tuple) else (value,):
        if choices is not None and item not in choices:
            raise InputError(f"{flag(name)} {item!r} is not one of: {', '.join(map(str, choices))}")
    low, positive = metadata.get("min"), metadata.get("positive")
    if isinstance(value, float) and not math.isfinite(value):
        need = ("positive and finite" if positive else f"finite and at least {low}"
                if low is not None else "a finite number")
        raise InputError(f"{flag(name)} {value} must be {need}")
    if low is not None and value < low:
        raise InputError(f"{flag(name)} {value} must be at least {low}")
    if positive and not value > 0:
        raise InputError(f"{flag(name)} {value} must be positive and finite")
    return value


def _item_kinds(hint: Any) -> tuple:
    """The types a tuple field's items may have (``tuple[int, ...]`` -> ``(int,)``; a bare
    ``tuple``: any)."""
    for kind in _union(hint):
        if typing.get_origin(kind) is tuple:
            return tuple(k for k in typing.get_args(kind) if k is not Ellipsis) or (Any,)
    return (Any,)


def _check_items(name: str, value: tuple, kinds: tuple) -> None:
    for item in value:
        if isinstance(item, bool) and bool not in kinds or not any(_is(item, k) for k in kinds):
            wanted = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
            raise InputError(f"{flag(name)}={value!r} must be a tuple of {wanted}, got "
                             f"{item!r}")


def _union(hint: Any) -> tuple:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _kinds(hint: Any) -> tuple:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(k for arg in typing.get_args(hint) for k in _kinds(arg))
    origin = typing.get_origin(hint)
    return (origin,) if origin is not None else (hint,)


def _is(value: Any, kind: Any) -> bool:
    if kind is float:
        return isinstance(value, int | float)
    if kind is Any:
        return True
    return isinstance(kind, type) and isinstance(value, kind)


def fit(spec: ModelSpec, config, x, *, inference: str | None = None, guide: str | None = None,
        seed: int = 0, progress: bool = False, checkpoint: Path | None = None,
        resume: bool = False, binarize: str | None = None, chunk_rows: int | None = None,
        **options) -> FitResult:
    """Fit ``spec`` to the tensor ``x : (N, D)`` with the named strategy (default: the first
    that applies) and its options by keyword; no data loading, no judging, nothing written."""
    strategy = get(inference, spec)
    if guide is not None and not strategy.uses_guide:
        raise InputError(f"--guide applies to strategies that take a guide, not "
                         f"--inference {strategy.name}")
    chosen = make_options(strategy.Options, options, owner=f"--inference {strategy.name}")
    context = FitContext(seed=seed, progress=progress, checkpoint=checkpoint, resume=resume,
                         binarize=binarize, chunk_rows=chunk_rows)
    return strategy.fit(spec, config, x, chosen, guide=guide, context=context)
