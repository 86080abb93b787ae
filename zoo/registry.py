"""The model registry: a name maps to everything the zoo knows about one model family.

A :class:`ModelSpec` says what a model IS (its config, its Pyro model, the closed forms it
has) and which guides approximate its posterior. The command line, the comparison harness and
the tests iterate over :func:`models`; nothing dispatches on model names. A user's own model
file, and a plugin module named under the entry point group ``lvm_zoo.models``
(:mod:`zoo.plugins`), register the same way, with :func:`register`.

A strategy asks a spec for capabilities by name (:meth:`ModelSpec.has`,
:meth:`ModelSpec.capability`: ``EM_STEPS``, ``CLOSED_FORM``, ... below), never for a field of
its own; a capability the fields do not name is offered in ``ModelSpec.capabilities``.

The model's global parameters travel in ONE representation, ``Params``: a dict from the
``pyro.param`` site names the model uses to constrained tensors. EM, the closed form and SVI all
produce it; evaluation consumes it; a run directory stores it.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from zoo.errors import InputError
from zoo.plugins import Registry
from zoo.user_files import run_model_file

Params = dict[str, torch.Tensor]

DATA_PLATE = "data"  # the plate of the rows: local latents and observations live inside it


class PyroModel(Protocol):
    """A Pyro model with the zoo's signature.

    ``model(x=None, *, num_data=None, subsample_size=None)``: ``x : (N, D)`` observed rows, or
    ``None`` to sample ``num_data`` rows from the prior. Local latents live in
    ``pyro.plate(DATA_PLATE, N, subsample_size=subsample_size)`` (``DATA_PLATE`` is
    ``"data"``). Guides have the same signature.
    """

    def __call__(
        self,
        x: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        subsample_size: int | None = None,
    ) -> Any: ...


class Init(Protocol):
    """``init(config, x, generator, method) -> Params``: starting parameters from the data."""

    def __call__(self, config: Any, x: Any, generator: torch.Generator | None,
                 method: str) -> Params: ...


class InitRows(Protocol):
    """``init_rows(config, rows, generator, method) -> Params | None``: ``init``'s start
    computed data-parallel over the shards of a process group (``rows``:
    ``inference.shards.Rows``), equal to ``init`` on all the rows; ``None`` where ``method``
    has no such form (the start is then computed once and broadcast)."""

    def __call__(self, config: Any, rows: Any, generator: torch.Generator | None,
                 method: str) -> Params | None: ...


class EStep(Protocol):
    """``e_step(config, params, x) -> (statistics, mean_log_likelihood)``: posterior statistics
    of the latents under ``params``, and the mean log p(x) at ``params`` in nats per
    datapoint."""

    def __call__(self, config: Any, params: Params, x: Any) -> tuple[Any, torch.Tensor]: ...


class MeanLogLikelihood(Protocol):
    """``log_likelihood(config, params, x) -> mean_log_likelihood``: the E-step's mean log p(x)
    alone (nats per datapoint, a 0-dim tensor), where the model computes it for less than the
    E-step's statistics cost: EM's last evaluation needs nothing else."""

    def __call__(self, config: Any, params: Params, x: Any) -> torch.Tensor: ...


class MStep(Protocol):
    """``m_step(config, x, statistics) -> Params``: the parameters that maximize the expected
    complete-data log-likelihood (``x`` is ``None`` where EM ran on shards or chunks: the
    statistics must then carry everything the M-step needs)."""

    def __call__(self, config: Any, x: Any, statistics: Any) -> Params: ...


class Combine(Protocol):
    """``combine(parts, weights=None)``: the E-step statistics of the union of disjoint row
    sets, Σ_i w_i s_i. EM on shards (torch.distributed), on chunks of a memory-mapped file,
    and stepwise (online) EM need it."""

    def __call__(self, parts: Sequence[Any], weights: Sequence[float] | None = None
                 ) -> Any: ...


class Summarize(Protocol):
    """``summarize(config, x)``: a summary of the rows that ``init``, ``e_step`` and ``m_step``
    take in place of ``x`` (PPCA and FA: the mean and covariance), for models whose E-step sees
    the data only through it: EM on shards or chunks then passes over the rows once."""

    def __call__(self, config: Any, x: torch.Tensor) -> Any: ...


class CombineSummaries(Protocol):
    """``combine_summaries(parts)``: the summary of the union of disjoint row sets."""

    def __call__(self, parts: Sequence[Any]) -> Any: ...


class LabelStatistics(Protocol):
    """``label_statistics(config, x, labels)``: the statistics of hard labels ``(N,)``,
    combinable like the E-step's: K-means on shards or chunks ends with ``m_step`` on them."""

    def __call__(self, config: Any, x: torch.Tensor, labels: torch.Tensor) -> Any: ...


@dataclass(frozen=True)
class EMSteps:
    """The closed-form pieces the generic EM loop (``inference.em``) calls, each typed by the
    protocol of its name: ``init``, ``e_step``, ``m_step``.

    The optional hooks make EM run past one tensor: on the shards of a process group, on the
    chunks of a memory-mapped file, or stepwise on minibatches (``combine``, ``summarize`` /
    ``combine_summaries``, ``label_statistics``), and their start from the data data-parallel
    (``init_rows``). ``log_likelihood`` spares the fit's last E-step its statistics.
    """

    init: Init
    e_step: EStep
    m_step: MStep
    init_methods: tuple[str, ...] = ("random",)  # the first is the default start
    accelerate: bool = False  # SQUAREM by default (``inference.em``), where it helps
    combine: Combine | None = None
    summarize: Summarize | None = None
    combine_summaries: CombineSummaries | None = None
    label_statistics: LabelStatistics | None = None
    init_rows: InitRows | None = None
    log_likelihood: MeanLogLikelihood | None = None


# What a strategy may ask a model for (``spec.has(...)``, ``spec.capability(...)``). The first
# ones are answered by the spec's own fields; any other name by ``ModelSpec.capabilities``, so
# that a new strategy and the models it fits agree on a name without a new field here.
CLOSED_FORM = "closed-form maximum likelihood"  # spec.closed_form
EM_STEPS = "closed-form E and M steps"  # spec.em
COMBINABLE_STATISTICS = "E-step statistics that combine across row sets"  # spec.em.combine
HARD_ASSIGNMENT_M_STEP = "an M-step on hard assignments"  # spec.from_assignments
GUIDES = "guides"  # spec.guides (of a catalog-joined spec)
LOCAL_LATENTS = "local latents"  # spec.local_sites
GLOBAL_LATENTS = "global latents"  # spec.global_sites
EXACT_MARGINAL = "exact log p(x)"  # spec.log_marginal
CONJUGATE_UPDATES = "conjugate coordinate updates"  # spec.capabilities[CONJUGATE_UPDATES]


@dataclass(frozen=True)
class ModelSpec:
    """Everything about one model family.

    ``config_class`` is a frozen dataclass. Its fields become command-line flags (``latent_dim``
    becomes ``--latent-dim``; the field's ``metadata["help"]`` is the help text); a field with
    ``metadata={"cli": False}`` is not a flag. It must have a ``dim`` field (the observation
    dimension, filled in from the data) and a ``validate(num_data)`` method raising ``InputError``.
    """

    name: str
    summary: str  # one line for `lvm-zoo list`
    config_class: type
    make_model: Callable[..., PyroModel]  # (config, params: Params | None) -> model
    guides: Mapping[str, Callable[..., PyroModel]] = field(default_factory=dict)
    # ^ the guides a user declared with the model: name -> factory (model, config) -> guide.
    #   Built-in families leave it empty; their guides register themselves in ``guides/`` and
    #   ``inference.catalog`` joins them to the spec (the zoo never imports the guides).
    default_data: str = "old-faithful"
    default_guide: str | None = None
    default_elbo: Mapping[str, str] = field(default_factory=dict)  # guide -> ELBO estimator name
    init_params: Callable[..., Params] | None = None  # (config, x, generator) -> Params for SVI
    log_marginal: Callable[..., torch.Tensor] | None = None  # (config, params, x) -> (N,) nats
    posterior: Callable[..., Any] | None = None  # (config, params, x) -> p(z | x) distribution
    sample: Callable[..., Any] | None = None  # (config, params, n, generator) -> (x, z)
    em: EMSteps | None = None
    closed_form: Callable[..., Params] | None = None  # (config, x) -> maximum-likelihood Params
    from_assignments: Callable[..., Params] | None = None
    # ^ (config, x, labels (N,) int64) -> Params: the M-step on hard assignments (K-means)
    synthetic: Callable[..., tuple] | None = None
    # ^ (num_data, generator, dtype) -> (x (N, D), labels (N,) | None, true Params)
    local_sites: tuple[str, ...] = ()  # latent sites inside the data plate
    global_sites: tuple[str, ...] = ()  # latent sites outside it (Bayesian variants)
    declared_sites: Any = None  # zoo.declare.LatentSites of a declared model: its generic guides
    svi_defaults: Mapping[str, Any] = field(default_factory=dict)  # steps, lr, batch_size, ...
    notes: str = ""  # shown by `lvm-zoo list`, e.g. "no exact posterior: IWAE is the reference"
    baselines: Mapping[str, Callable[..., dict]] = field(default_factory=dict)
    # ^ other registered models that `compare` fits on the same split, with their options
    #   derived from this model's config, e.g. {"ppca": lambda c: {"latent_dim": c.latent_dim}}
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    # ^ capability name -> its hook, for what the fields above do not name: a new strategy asks
    #   for its own capability (e.g. CONJUGATE_UPDATES) and a model offers it here

    def capability(self, name: str) -> Any:
        """The hook behind capability ``name`` (one of this module's capability names, or any
        other a strategy asks for), or ``None`` when the model has none."""
        answers = self._answers()
        return answers[name] if name in answers else self.capabilities.get(name)

    def _answers(self) -> dict[str, Any]:
        em = self.em
        return {
            CLOSED_FORM: self.closed_form, EM_STEPS: em,
            COMBINABLE_STATISTICS: em.combine if em is not None else None,
            HARD_ASSIGNMENT_M_STEP: self.from_assignments, GUIDES: self.guides or None,
            LOCAL_LATENTS: self.local_sites or None, GLOBAL_LATENTS: self.global_sites or None,
            EXACT_MARGINAL: self.log_marginal}

    def offered(self) -> tuple[str, ...]:
        """The names of every capability the model has (``lvm-zoo list`` shows them): those
        its fields answer, then those of ``capabilities``."""
        return tuple(name for name in dict.fromkeys([*self._answers(), *self.capabilities])
                     if self.has(name))

    def has(self, name: str) -> bool:
        """Whether the model has capability ``name``."""
        return self.capability(name) is not None

    def make_config(self, dim: int, **options: Any) -> Any:
        """Build the config from command-line style options; ``None`` means 'use the default'."""
        names = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted(k for k, v in options.items() if v is not None and k not in names)
        if unknown:
            flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
            close = difflib.get_close_matches(unknown[0], sorted(names - {"dim"}), n=1)
            hint = f" (did you mean --{close[0].replace('_', '-')}?)" if close else ""
            raise InputError(f"model '{self.name}' takes no option {flags}{hint}; see `lvm-zoo "
                             f"fit {self.name} --help` for its options")
        given = {k: v for k, v in options.items() if v is not None and k in names}
        return self.config_class(dim=dim, **given)


# The built-in model modules; importing one registers its spec(s). pyproject.toml declares the
# same modules under [project.entry-points."lvm_zoo.models"], where another distribution
# declares its own (see zoo.plugins).
BUILTINS = (("gmm", "zoo.gmm"), ("ppca", "zoo.ppca"), ("dglvm", "zoo.dglvm"),
            ("mppca", "zoo.mppca"), ("student-t-mixture", "zoo.student_t_mixture"),
            ("bayesian-gmm", "zoo.bayesian_gmm"), ("bayesian-ppca", "zoo.bayesian_ppca"))
_REGISTRY: Registry[ModelSpec] = Registry("lvm_zoo.models", "model", BUILTINS)
# model name -> (spec, "path/to/file.py:NAME") for models loaded from user files; the spec is
# kept so that a name later taken back by another model (a built-in restored) is not misread
_ORIGINS: dict[str, tuple[ModelSpec, str]] = {}
_SOURCES: dict[str, tuple[ModelSpec, str]] = {}  # name -> (spec, the file that declared it)
_IMPORTING: list[Path] = []  # the user files being imported (get_model("file.py:NAME"))


def register(spec: ModelSpec, *, replace: bool = False, source: str | None = None
             ) -> ModelSpec:
    """Add a model to the zoo (a user file calls this at import time); returns ``spec``.

    A name is taken once: registering another spec under the name of a registered model (a
    user file declaring ``"gmm"``) is an :class:`InputError` unless ``replace=True``. The
    same file declaring its model again (a file imported twice in one process, a notebook
    cell run again) replaces it. ``source`` is the declaring file (default: the user file
    being imported, else the file that defines ``spec.make_model``)."""
    _REGISTRY.load()  # the built-in names are taken first, whatever imports what
    source = str(_IMPORTING[-1]) if _IMPORTING else source or source_file(spec.make_model)
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing is not spec and not replace:
        entry = _SOURCES.get(spec.name)
        earlier = entry[1] if entry is not None and entry[0] is existing else None
        if earlier is None or earlier != source:
            where = f" (declared in {earlier})" if earlier else ""
            raise InputError(f"model '{spec.name}' is already registered{where}; declare yours "
                             f"under another name, or replace it on purpose with "
                             f"declare('{spec.name}', ..., replace=True)")
    _REGISTRY.register(spec.name, spec)
    _SOURCES[spec.name] = (spec, source)
    return spec


def source_file(function: Callable) -> str | None:
    """The file that defines ``function`` (a class, a function, a closure), resolved."""
    try:
        path = inspect.getsourcefile(function) or inspect.getfile(function)
    except (TypeError, OSError):
        return getattr(function, "__module__", None)
    return str(Path(path).resolve())


def models() -> dict[str, ModelSpec]:
    """All registered models: the built-ins, then those of installed plugins and user files."""
    return dict(_REGISTRY)


def get_model(name: str) -> ModelSpec:
    """Look a model up by registry name, or load ``path/to/file.py:NAME`` and look up NAME."""
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        path, model_name = name.rsplit(":", 1)
        _REGISTRY.load()  # before the file: a file may not take a built-in's name
        _import_user_file(Path(path))
        name = model_name
        if name in _REGISTRY:
            _ORIGINS[name] = (_REGISTRY[name], f"{Path(path).resolve()}:{name}")
        else:
            declared = sorted(n for n, (_, source) in _SOURCES.items()
                              if source == str(Path(path).resolve()))
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise InputError(f"model file '{path}' declares no model '{name}'; {hint}it "
                             f"declares: {', '.join(declared) or 'none (call zoo.declare)'}")
    registry = models()
    if name not in registry:
        known = ", ".join(sorted(registry)) or "(none registered)"
        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise InputError(f"unknown model '{name}'; {hint}choose one of: {known}, "
                         "or give path/to/file.py:NAME for a model of your own")
    return registry[name]


def model_reference(spec: ModelSpec) -> str:
    """What `get_model` needs to find ``spec`` again in a new process: its registry name, or
    ``/abs/path/file.py:NAME`` for a model declared in a user file."""
    entry = _ORIGINS.get(spec.name)  # the same model: a joined copy keeps its make_model
    same = entry is not None and entry[0].make_model is spec.make_model
    return entry[1] if same else spec.name


def _import_user_file(path: Path) -> None:
    """Run the model file (:func:`zoo.user_files.run_model_file`: every failure one
    InputError), its declarations knowing their source."""
    _IMPORTING.append(path.resolve())
    try:
        run_model_file(path)
    finally:
        _IMPORTING.pop()
