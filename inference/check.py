"""Pre-flight check: run a model and each of its guides once, and say in plain words what would
break a fit, naming the site.

``lvm-zoo check MODEL --data DATA`` calls :func:`check`. The model and every guide run once under
Pyro's validation on the first ``rows`` training rows, in a param store and random stream of
their own, and once more with the data plate subsampled. Each :class:`Problem` names the site
(or parameter), says what is wrong and how to fix it. What is looked for, each a common stumble:

- ``mismatch``: a guide samples a site the model lacks or observes, or misses one of the
  model's latent sites (and nothing enumerates it);
- ``shape``: a batch dimension no plate accounts for (a missing ``.to_event``), an event
  dimension that swallows the data plate (one ``.to_event`` too many), a guide site whose
  shape, event dimensions, support or plates differ from the model's;
- ``plate``: a latent site declared local that sits outside ``pyro.plate("data")`` (or a global
  one inside it), an observed site outside it, a latent site declared neither local nor global;
- ``subsampling``: a data plate whose size is not the number of rows, a model or guide that
  ignores ``subsample_size``, a site whose scale under subsampling is not N / B (none, or twice);
- ``enumeration``: a discrete latent site that cannot be enumerated (infinite support), or model
  code that breaks when the site's values arrive on a new dimension on the left;
- ``device``: tensors made without ``device=`` inside the model or a guide (``torch.zeros(q)``,
  ``dist.Normal(0., 1.)`` for a latent site in a plate): on a GPU they land on the CPU. The code
  is audited even on a CPU-only machine; where CUDA is present the check also runs there;
- ``constraint``: a ``pyro.param`` without a constraint used where one is needed (a scale,
  probabilities, a covariance): the parameter is pushed out of its set and the model fails;
- ``error``: anything else the model or a guide raises, with the last site it reached.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import sysconfig
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.poutine.util import site_is_subsample
from torch.overrides import TorchFunctionMode

from inference.svi import make_elbo
from zoo.errors import InputError
from zoo.registry import ModelSpec, get_model

__all__ = ["CheckReport", "Problem", "check", "check_model"]

DATA_PLATE = "data"
CHECK_ROWS = 64  # rows of the training data the check runs on


@dataclass(frozen=True)
class Problem:
    """One thing that would break a fit: ``site`` (a sample site or a parameter), ``what`` is
    wrong, the ``fix``, and the ``guide`` it was found in (``None``: the model)."""

    kind: str
    site: str
    what: str
    fix: str
    guide: str | None = None

    def line(self) -> str:
        where = f" (guide {self.guide})" if self.guide else ""
        return f"{self.kind}: site '{self.site}'{where}: {self.what}; {self.fix}"


@dataclass
class CheckReport:
    """What :func:`check` found; ``ok`` when nothing."""

    model: str
    data: str
    rows: int
    device: str
    guides: tuple[str, ...]
    sites: dict[str, tuple[str, ...]]
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        sites = "; ".join(f"{kind} {', '.join(names) or '-'}" for kind, names in self.sites.items())
        guides = ", ".join(self.guides) or "none"
        if self.ok:
            return (f"ok: model '{self.model}' and its guides ({guides}) run on {self.rows} rows "
                    f"of {self.data} on {self.device}, also subsampled ({sites})")
        return (f"{len(self.problems)} problem(s) in model '{self.model}' on {self.rows} rows of "
                f"{self.data}")

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "rows": self.rows, "device": self.device,
                "guides": list(self.guides), "sites": {k: list(v) for k, v in self.sites.items()},
                "ok": self.ok, "problems": [dataclasses.asdict(p) for p in self.problems]}


def check(model: ModelSpec | str, *, data: str | None = None, data_root=None,
          download: bool = False, test_fraction: float = 0.2, binarize: str | None = None,
          standardize: bool = False, device: str = "auto", dtype: str = "float32",
          seed: int = 0, rows: int = CHECK_ROWS, guides: tuple[str, ...] | None = None,
          **options) -> CheckReport:
    """Check ``model`` on the first ``rows`` training rows of ``data`` (the model's default
    dataset when ``None``); ``options`` are the model's config fields. The Python face of
    ``lvm-zoo check``."""
    from inference.api import load_data  # the api imports the strategies; keep this module light

    spec = get_model(model) if isinstance(model, str) else model
    if rows < 2:
        raise InputError(f"rows={rows} must be at least 2 (the check also subsamples)")
    dataset, x_train, _, target = load_data(
        spec, data=data, data_root=data_root, download=download, test_fraction=test_fraction,
        binarize=binarize, standardize=standardize, seed=seed, dtype=dtype, device=device)
    config_names = {f.name for f in dataclasses.fields(spec.config_class)}
    unknown = sorted(k for k, v in options.items() if v is not None and k not in config_names)
    if unknown:
        raise InputError(f"check takes no option {', '.join(unknown)}")
    config = spec.make_config(dim=dataset.dim, **options)
    x = x_train[:rows]
    config.validate(x.shape[0])
    chosen = tuple(spec.guides) if guides is None else tuple(guides)
    missing = [g for g in chosen if g not in spec.guides]
    if missing:
        raise InputError(f"model '{spec.name}' has no guide {', '.join(missing)}; choose from: "
                         + ", ".join(spec.guides))
    problems = check_model(spec, config, x, guides=chosen, seed=seed)
    return CheckReport(model=spec.name, data=dataset.name, rows=int(x.shape[0]),
                       device=str(target), guides=chosen,
                       sites={"local": tuple(spec.local_sites),
                              "global": tuple(spec.global_sites)},
                       problems=problems)


def check_model(spec: ModelSpec, config, x: torch.Tensor, *,
                guides: tuple[str, ...] | None = None, seed: int = 0) -> list[Problem]:
    """Every :class:`Problem` of ``spec``'s model and ``guides`` on ``x : (N, D)``."""
    guides = tuple(spec.guides) if guides is None else guides
    found: list[Problem] = []
    devices = [x.device] if x.is_cuda else []
    with torch.random.fork_rng(devices=devices), pyro.validation_enabled(True), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each finding becomes a Problem, not a warning
        torch.manual_seed(seed)
        _Checker(spec, config, x, found).run(guides)
    unique, seen = [], set()
    for problem in found:
        key = (problem.kind, problem.site, problem.what, problem.guide)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique


# --- running things and reading what happened -----------------------------------------------


@dataclass
class _Run:
    trace: poutine.Trace
    error: BaseException | None
    created: list  # device audit findings, :class:`_Created`


def _sample_sites(trace) -> list[tuple[str, dict]]:
    return [(n, s) for n, s in trace.nodes.items()
            if s["type"] == "sample" and not site_is_subsample(s)]


def _data_frame(site: dict):
    return next((f for f in site["cond_indep_stack"] if f.vectorized and f.name == DATA_PLATE),
                None)


def _shape(values) -> str:
    return "(" + ", ".join(str(int(v)) for v in values) + ("," if len(values) == 1 else "") + ")"


def _last_site(trace) -> str | None:
    names = [n for n, _ in _sample_sites(trace)]
    return names[-1] if names else None


def _original(error: BaseException) -> BaseException:
    """Pyro's trace re-raises errors with the trace's shapes appended; the cause is cleaner."""
    while error.__cause__ is not None and type(error.__cause__) is type(error):
        error = error.__cause__
    return error


def _message(error: BaseException) -> str:
    text = str(_original(error)).strip().split("\n")[0]
    return text if len(text) < 240 else text[:237] + "..."


class _Created:
    """A tensor made without ``device=`` by model or guide code. ``mixed`` once it (or a tensor
    computed from it, before any ``.to(...)``, ``.cuda()`` or ``.type_as(...)``) meets a tensor
    of other origin, the data's or the parameters': on a GPU that computation would fail."""

    def __init__(self, kind: str, function: str, filename: str, line: int, sites_before: int):
        self.kind, self.function, self.filename, self.line = kind, function, filename, line
        self.sites_before = sites_before
        self.mixed = kind == "numbers"


class _DeviceAudit(TorchFunctionMode):
    """Records tensors made without ``device=`` by model or guide code (not by torch or Pyro):
    on a GPU they would land on the CPU. Tensors computed from them are followed, so
    ``torch.zeros(d).to(x)`` is fine."""

    FACTORIES = frozenset({torch.zeros, torch.ones, torch.empty, torch.full, torch.rand,
                           torch.randn, torch.randint, torch.arange, torch.linspace,
                           torch.logspace, torch.eye, torch.tensor, torch.as_tensor,
                           torch.randperm})
    MOVES = frozenset({torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.type_as,
                       torch.Tensor.copy_})

    def __init__(self, trace_of: Callable[[], poutine.Trace]):
        super().__init__()
        self.trace_of = trace_of
        self.created: list[_Created] = []
        self.followed: dict[int, tuple[torch.Tensor, _Created]] = {}

    @property
    def found(self) -> list[_Created]:
        return [c for c in self.created if c.mixed]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.followed:
            self._follow(func, args, kwargs, result)
        if func in self.FACTORIES and kwargs.get("device") is None and \
                isinstance(result, torch.Tensor) and not _has_tensor_device(func, args):
            self._record(func, result)
        return result

    def _follow(self, func, args, kwargs, result) -> None:
        if func is torch.Tensor.__getitem__:  # CPU indices may index a CUDA tensor
            args, kwargs = args[:1], {}
        inputs = _tensors((args, kwargs))
        sources = [self.followed[id(t)][1] for t in inputs
                   if id(t) in self.followed and self.followed[id(t)][0] is t]
        if not sources:
            return
        if func in self.MOVES and (func is not torch.Tensor.to or _names_device(args, kwargs)):
            for tensor in _tensors(result):  # sent to a device (.to may return the tensor itself)
                self.followed.pop(id(tensor), None)
            return
        others = [t for t in inputs if t.dim() and not (
            id(t) in self.followed and self.followed[id(t)][0] is t)]
        if others:
            for source in sources:
                source.mixed = True
        for tensor in _tensors(result):
            self.followed[id(tensor)] = (tensor, sources[0])

    def _record(self, func, result: torch.Tensor) -> None:
        caller = sys._getframe(2)
        via_distribution = _is_file(caller.f_code.co_filename, _TORCH_DISTRIBUTIONS)
        frame = caller
        while frame is not None and _library(frame.f_code.co_filename):
            frame = frame.f_back
        if frame is None or (frame is not caller and not via_distribution):
            return
        if not via_distribution and result.dim() == 0:
            return  # a 0-dim CPU tensor mixes with CUDA tensors
        sites_before = len(_sample_sites(self.trace_of()))
        created = _Created("numbers" if via_distribution else "factory", func.__name__,
                           frame.f_code.co_filename, frame.f_lineno, sites_before)
        self.created.append(created)
        if not via_distribution:
            self.followed[id(result)] = (result, created)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _names_device(args, kwargs) -> bool:
    """Whether a ``Tensor.to`` call says where to go (a device, or a tensor to follow)."""
    return "device" in kwargs or any(isinstance(a, (torch.Tensor, torch.device, str))
                                     for a in args[1:])


def _has_tensor_device(func, args) -> bool:
    """``torch.as_tensor(t)`` and ``torch.tensor(t)`` of a tensor keep its device."""
    return func in (torch.as_tensor, torch.tensor) and bool(args) and \
        isinstance(args[0], torch.Tensor)


_TORCH = str(Path(torch.__file__).resolve().parent)
_TORCH_DISTRIBUTIONS = str(Path(torch.__file__).resolve().parent / "distributions")
_PYRO = str(Path(pyro.__file__).resolve().parent)
_STDLIB = tuple(str(Path(p).resolve()) for p in {sysconfig.get_paths()["stdlib"],
                                                  sysconfig.get_paths()["platstdlib"]})
_HERE = str(Path(__file__).resolve())
_ZOO_DECLARE = str(Path(__file__).resolve().parents[1] / "zoo" / "declare.py")


@functools.lru_cache(maxsize=1024)
def _resolved(filename: str) -> str:
    try:
        return str(Path(filename).resolve())
    except (OSError, RuntimeError):
        return filename


def _is_file(filename: str, folder: str) -> bool:
    return _resolved(filename).startswith(folder)


def _library(filename: str) -> bool:
    """torch, Pyro, the standard library and the zoo's own plumbing: not model code."""
    if filename.startswith("<") and filename != "<string>":
        return True  # <frozen ...>, <built-in>; code run from a string counts as the user's
    resolved = _resolved(filename)
    return resolved.startswith((_TORCH, _PYRO, *_STDLIB)) or resolved in (_HERE, _ZOO_DECLARE)


def _run(fn, *args, audit: bool = False, **kwargs) -> _Run:
    """Trace ``fn`` once, keeping the partial trace and the error if it fails."""
    tracer = poutine.trace(fn)
    mode = _DeviceAudit(lambda: tracer.msngr.trace) if audit else None
    error = None
    try:
        if mode is not None:
            with mode:
                tracer(*args, **kwargs)
        else:
            tracer(*args, **kwargs)
    except Exception as caught:  # noqa: BLE001 - every failure becomes a Problem
        error = caught
    return _Run(tracer.msngr.trace, error, mode.found if mode is not None else [])


def _log_probs(trace) -> Problem | None:
    """Compute every site's log-probability; a failure names the site."""
    for name, site in _sample_sites(trace):
        try:
            site["fn"].log_prob(site["value"])
        except Exception as error:  # noqa: BLE001 - every failure becomes a Problem
            return _value_problem(name, site, error)
    return None


def _value_problem(name: str, site: dict, error: BaseException) -> Problem:
    text = _message(error)
    fn, value = site["fn"], site["value"]
    expected = tuple(fn.batch_shape) + tuple(fn.event_shape)
    if "support" in text:
        return Problem("shape", name, f"its value lies outside the support of {_dist_name(fn)} "
                       f"({fn.support})", "draw it from a distribution on that support (in a "
                       "guide: the same support as the model's site)")
    if tuple(value.shape) != expected:
        return Problem("shape", name, f"its value has shape {_shape(value.shape)} but its "
                       f"distribution has shape {_shape(expected)} ({text})",
                       "index the data with the plate's indices (x[idx]) and make batch and "
                       "event dimensions match the value")
    return Problem("error", name, f"its log-probability fails: {text}",
                   "check the distribution's arguments at this site")


def _is_factor(site: dict) -> bool:
    """A ``pyro.factor`` term (a log-prior, a penalty): observed, but not data."""
    return isinstance(site["fn"], pyro.distributions.Unit) or \
        site["infer"].get("is_factor", False)


def _dist_name(fn) -> str:
    base = fn
    while hasattr(base, "base_dist"):
        base = base.base_dist
    return type(base).__name__


_PLATE_MISMATCH = re.compile(
    r"Shape mismatch inside plate\('([^']+)'\) at site (\S+) dim (-?\d+), (\d+) vs (\d+)")
_DEVICE = re.compile(r"(same device|device type|on the expected device|found at least two "
                     r"devices|Expected all tensors)", re.IGNORECASE)
_CONSTRAINT = re.compile(r"Expected parameter (\w+) .*? of distribution (\w+).*?to satisfy the "
                         r"constraint ([^,]+(?:\([^)]*\))?)", re.DOTALL)
_SITE_IN_INPUT_ERROR = re.compile(r"site '([^']+)'")


def _failure(run: _Run, what: str, guide: str | None = None,
             full_trace: poutine.Trace | None = None) -> Problem:
    """The error of a failed run, as a Problem naming the site."""
    error = _original(run.error)
    text = _message(error)
    match = _PLATE_MISMATCH.search(str(error))
    if match:
        plate, site, dim, plate_size, batch_size = match.groups()
        return Problem(
            "shape", site, f"its distribution has a batch dimension of size {batch_size} at "
            f"dim {dim}, where pyro.plate('{plate}') of size {plate_size} sits",
            "declare the per-datapoint dimensions as event dimensions with .to_event(n) "
            "(e.g. dist.Normal(loc, scale).to_event(1)), so that only the plate's dimension "
            "is a batch dimension", guide)
    if isinstance(error, InputError):
        named = _SITE_IN_INPUT_ERROR.search(str(error))
        site = named.group(1) if named else (_last_site(run.trace) or what)
        return Problem("error", site, str(error).split(";")[0],
                       (str(error).split(";", 1)[1].strip() if ";" in str(error)
                        else "see the message"), guide)
    next_site = _next_site(run.trace, full_trace)
    last = _last_site(run.trace)
    if _DEVICE.search(text):
        site = next_site or last or what
        return Problem("device", site, f"tensors on different devices meet ({text})",
                       "make every tensor from the data or the parameters: x.new_zeros(...), "
                       "torch.zeros(..., device=x.device), and pyro.plate(..., device=x.device)",
                       guide)
    where = f"after site '{last}'" if last else "before its first site"
    site = next_site or last or what
    return Problem("error", site, f"the {what} fails {where}: {type(error).__name__}: {text}",
                   "run it by hand on a few rows to see why", guide)


def _next_site(partial: poutine.Trace, full: poutine.Trace | None) -> str | None:
    """The site a failed run was about to sample, from a complete trace of the same code."""
    if full is None:
        return None
    done = len(_sample_sites(partial))
    names = [n for n, _ in _sample_sites(full)]
    return names[done] if done < len(names) else None


# --- the checks ----------------------------------------------------------------------------


class _Checker:
    def __init__(self, spec: ModelSpec, config, x: torch.Tensor, found: list[Problem]):
        self.spec, self.config, self.x, self.found = spec, config, x, found
        self.rows = x.shape[0]
        self.batch = max(1, self.rows // 4)
        self.model_lines: set[tuple[str, int]] = set()  # where the model makes tensors
        self.model_ok = True
        self.full = {"num_data": self.rows}
        self.sub = {"num_data": self.rows, "subsample_size": self.batch}

    def add(self, problem: Problem | None) -> None:
        """Keep ``problem``, unless it is a guide's echo of a problem of the model's own at the
        same site (a guide runs the model too)."""
        if problem is None:
            return
        if problem.guide is not None and any(p.guide is None and p.site == problem.site
                                             for p in self.found):
            return
        self.found.append(problem)

    def run(self, guides: tuple[str, ...]) -> None:
        with pyro.get_param_store().scope():
            model = self.spec.make_model(self.config, None)
            run = _run(model, self.x, audit=True, **self.full)
            if run.error is not None:
                self.add(_failure(run, "model"))
                return
            trace = run.trace
            problem = _log_probs(trace)
            if problem is not None:
                self.add(problem)
                return
            self.devices(run, trace, None)
            self.shapes(trace)
            self.plates(trace)
            self.subsampling(model, trace)
            self.enumeration(model, trace)
            self.constraints(model, trace)
        self.model_ok = not self.found  # else the guides' ELBO and subsampling only echo it
        for name in guides:
            with pyro.get_param_store().scope():
                self.guide(name, trace)

    # model

    def shapes(self, trace) -> None:
        for name, site in _sample_sites(trace):
            fn, value = site["fn"], site["value"]
            frames = {f.dim: f for f in site["cond_indep_stack"] if f.vectorized}
            batch = tuple(fn.batch_shape)
            for position, size in enumerate(reversed(batch)):
                dim = -1 - position
                if size == 1 or dim in frames:
                    continue
                plates = ", ".join(f"pyro.plate('{f.name}') at dim {f.dim}"
                                   for f in frames.values())
                enclosing = f"only {plates} encloses it" if plates else "no plate encloses it"
                extra = len(batch) - position
                self.add(Problem(
                    "shape", name, f"its distribution has batch shape {_shape(batch)} but "
                    f"{enclosing}, so dimension {dim} (size {size}) is a batch dimension no "
                    "plate accounts for",
                    f"add .to_event({extra if not frames else extra - len(frames)}) to make the "
                    "per-datapoint dimensions event dimensions (or put them in a plate)"))
                break
            frame = _data_frame(site)
            if site["is_observed"] and frame is not None:
                expected = batch + tuple(fn.event_shape)
                if tuple(value.shape) != expected and len(expected) > value.dim():
                    self.add(Problem(
                        "shape", name, f"its distribution has shape {_shape(expected)} but the "
                        f"observed rows have shape {_shape(value.shape)}: its event shape "
                        f"{_shape(fn.event_shape)} swallows the data plate's dimension, so every "
                        "row is scored once per row",
                        "use .to_event(n) for the per-datapoint dimensions only (e.g. "
                        ".to_event(1) for rows of a matrix), never for the data's dimension"))

    def plates(self, trace) -> None:
        declared_local = set(self.spec.local_sites)
        declared_global = set(self.spec.global_sites)
        latent = {n: s for n, s in _sample_sites(trace) if not s["is_observed"]}
        for name, site in _sample_sites(trace):
            inside = _data_frame(site) is not None
            if site["is_observed"] and not inside and not _is_factor(site):
                self.add(Problem(
                    "plate", name, "the observed site is not inside pyro.plate('data')",
                    "wrap it in `with pyro.plate('data', N, subsample_size=subsample_size) as "
                    "idx:` and observe x[idx]; Pyro then subsamples and scales it, and "
                    "evaluation scores each row"))
            if site["is_observed"]:
                continue
            if name in declared_local and not inside:
                self.add(Problem(
                    "plate", name, "it is declared local (one value per datapoint) but sits "
                    "outside pyro.plate('data'), so subsampling neither selects nor scales it",
                    "sample it inside the data plate, with .to_event() for its per-datapoint "
                    "dimensions, or declare it global"))
            elif not inside and name not in declared_global and self.rows > 1 and \
                    self.rows in tuple(site["value"].shape):
                self.add(Problem(
                    "plate", name, f"it sits outside pyro.plate('data') but has a dimension of "
                    f"{self.rows}, the number of rows: it looks per-datapoint, and subsampling "
                    "neither selects nor scales it", "sample it inside the data plate and "
                    "declare it in local_sites (or declare it in global_sites if it is shared)"))
            if name in declared_global and inside:
                self.add(Problem(
                    "plate", name, "it is declared global but sits inside pyro.plate('data'), "
                    "so it gets one value per datapoint",
                    "sample it before the data plate, or declare it local"))
            if (declared_local or declared_global) and name not in declared_local | \
                    declared_global:
                kind = "local_sites" if inside else "global_sites"
                self.add(Problem(
                    "plate", name, "it is a latent site declared neither local nor global",
                    f"add '{name}' to {kind}= in the declaration"))
        for name in sorted((declared_local | declared_global) - set(latent)):
            self.add(Problem(
                "plate", name, "it is declared but the model has no latent site of that name "
                f"(its latent sites: {', '.join(latent) or 'none'})",
                "declare the model's own site names"))

    def subsampling(self, model, full_trace) -> None:
        if not any(_data_frame(s) is not None for _, s in _sample_sites(full_trace)):
            return
        run = _run(model, self.x, **self.sub)
        if run.error is not None:
            self.add(self._subsampled_failure(run, "model", None, full_trace))
            return
        problem = _log_probs(run.trace)
        if problem is not None:
            self.add(dataclasses.replace(problem, kind="subsampling", what=(
                f"with subsample_size={self.batch} of {self.rows} rows: {problem.what}")))
            return
        full_sites = dict(_sample_sites(full_trace))
        expected_ratio = self.rows / self.batch
        for name, site in _sample_sites(run.trace):
            frame = _data_frame(site)
            if frame is None:
                continue
            full_size = frame.full_size or frame.size
            if full_size != self.rows:
                self.add(Problem(
                    "subsampling", name, f"pyro.plate('data') has size {full_size} but the data "
                    f"have {self.rows} rows, so subsampling is not scaled by N / B",
                    "give the plate the full number of rows, pyro.plate('data', N, "
                    "subsample_size=subsample_size), and let it choose the rows (idx)"))
                return
            if frame.size == self.rows:
                self.add(Problem(
                    "subsampling", name, f"the model ignores subsample_size: asked for "
                    f"{self.batch} of {self.rows} rows, the site covers all {self.rows}",
                    "pass subsample_size=subsample_size to pyro.plate('data', ...) and index "
                    "the data with the plate's indices (x[idx])"))
                return
            if name not in full_sites:
                continue
            ratio = float(torch.as_tensor(site["scale"]).max()) / \
                float(torch.as_tensor(full_sites[name]["scale"]).max())
            if not math.isclose(ratio, expected_ratio, rel_tol=1e-4):
                times = ("not at all" if math.isclose(ratio, 1.0, rel_tol=1e-4)
                         else "twice" if math.isclose(ratio, expected_ratio ** 2, rel_tol=1e-4)
                         else f"by {ratio:g}")
                self.add(Problem(
                    "subsampling", name, f"with {self.batch} of {self.rows} rows its "
                    f"log-probability must be scaled by N / B = {expected_ratio:g}, but it is "
                    f"scaled {times}",
                    "let pyro.plate('data', N, subsample_size=...) do the scaling: no "
                    "poutine.scale by N / B of your own, no plate of the batch's size"))

    def _subsampled_failure(self, run: _Run, what: str, guide: str | None,
                            full_trace) -> Problem:
        """A run that fails only when subsampled; tensors made for all rows are the usual
        cause (data not indexed with the plate's indices, parameters not subsampled)."""
        match = _PLATE_MISMATCH.search(str(_original(run.error)))
        if match and int(match.group(5)) == self.rows and int(match.group(4)) == self.batch:
            return Problem(
                "subsampling", match.group(2), f"with subsample_size={self.batch} of "
                f"{self.rows} rows its distribution still has a dimension of all {self.rows} "
                "rows", "index per-datapoint tensors with the plate's indices (x[idx], "
                "loc[idx]), or create per-datapoint parameters inside the plate with "
                "pyro.param(..., event_dim=...) so Pyro subsamples them", guide)
        problem = _failure(run, what, guide, full_trace=full_trace)
        return dataclasses.replace(problem, kind="subsampling", what=(
            f"with subsample_size={self.batch} of {self.rows} rows: {problem.what}"))

    def enumeration(self, model, trace) -> None:
        discrete = [(n, s) for n, s in _sample_sites(trace)
                    if not s["is_observed"] and s["fn"].support.is_discrete]
        if not discrete:
            return
        for name, site in discrete:
            if not site["fn"].has_enumerate_support:
                self.add(Problem(
                    "enumeration", name, f"it is discrete ({_dist_name(site['fn'])}, support "
                    f"{site['fn'].support}) without a finite support, so it cannot be "
                    "enumerated", "give it a guide site of its own (and an ELBO that does not "
                    "enumerate), or bound its support (e.g. a Categorical)"))
        names = [n for n, s in discrete if s["fn"].has_enumerate_support]
        if not names:
            return
        enumerated = poutine.enum(config_enumerate(model, "parallel"),
                                  first_available_dim=-2)
        run = _run(enumerated, self.x, **self.full)
        problem = None
        if run.error is not None:
            problem = _message(run.error)
        else:
            for site_name, site in _sample_sites(run.trace):
                try:
                    log_prob = site["fn"].log_prob(site["value"])
                except Exception as error:  # noqa: BLE001
                    problem = f"site '{site_name}' fails: {_message(error)}"
                    break
                frame = _data_frame(site)
                if frame is not None and log_prob.dim() >= -frame.dim and \
                        log_prob.shape[frame.dim] not in (1, frame.size):
                    problem = (f"site '{site_name}' gets log-probabilities of shape "
                               f"{_shape(log_prob.shape)}: the data plate's dimension moved")
                    break
        if problem is not None:
            self.add(Problem(
                "enumeration", ", ".join(names), "enumerating it in parallel fails "
                f"({problem})",
                "the model must broadcast over a new dimension on the left of the site's value "
                "(shape (K, 1) under the data plate): index with it (locs[c]) and do not use "
                ".item(), Python if/for on it, .squeeze(), .view() or .reshape() with explicit "
                "sizes"))

    def constraints(self, model, trace) -> None:
        params = {n: s for n, s in trace.nodes.items() if s["type"] == "param"}
        for name, site in params.items():
            self.add(self._perturb(model, name, site, None, trace))

    def _perturb(self, fn, name, site, guide, full_trace, replay=None) -> Problem | None:
        """Push an unconstrained ``pyro.param`` out of every constrained set (negative
        entries, mixed signs) and run ``fn``; a constraint error names the parameter."""
        constraint = site["kwargs"].get("constraint")
        if constraint is not None and constraint is not pyro.distributions.constraints.real:
            return None
        if "$$$" in name or ("." in name and guide is not None):
            return None  # network weights and AutoGuide parameters: unconstrained by design
        store = pyro.get_param_store()
        if name not in store:
            return None
        original = store[name].detach().clone()
        if not original.is_floating_point():
            return None
        magnitude = original.abs() + 1.0
        signs = torch.ones_like(original).flatten()
        signs[1::2] = -1.0
        perturbations = [-magnitude, magnitude * signs.reshape(original.shape)]
        try:
            for value in perturbations:
                store[name] = value
                run = _run(fn, self.x, **self.full) if replay is None else replay()
                if run.error is None:
                    continue
                match = _CONSTRAINT.search(str(_original(run.error)))
                if match is None:
                    continue
                argument, distribution, needed = match.groups()
                site_name = _next_site(run.trace, full_trace) or name
                return Problem(
                    "constraint", name, f"the parameter has no constraint, but it reaches the "
                    f"'{argument}' of {distribution} at site '{site_name}', which must satisfy "
                    f"{needed.strip()}: a gradient step can leave that set and the fit fails",
                    f"declare pyro.param('{name}', ..., constraint={_constraint_fix(needed)})",
                    guide)
        finally:
            store[name] = original
        return None

    def devices(self, run: _Run, trace, guide: str | None) -> None:
        sites = _sample_sites(trace)
        for created in run.created:
            if guide is None:
                self.model_lines.add((created.filename, created.line))
            elif (created.filename, created.line) in self.model_lines:
                continue  # the guide ran the model's code (AutoNormal's prototype trace)
            before, function = created.sites_before, created.function
            site_name, site = sites[before] if before < len(sites) else (None, None)
            where = f"line {created.line} of {Path(created.filename).name}"
            if created.kind == "numbers":
                if site is None or site["is_observed"] or not any(
                        f.vectorized for f in site["cond_indep_stack"]):
                    continue
                self.add(Problem(
                    "device", site_name, f"its distribution ({where}) is built from Python "
                    "numbers only, so its draws are made on the CPU whatever the data's device",
                    "build it from a tensor on the data's device, e.g. "
                    "dist.Normal(x.new_zeros(()), 1.0)", guide))
            else:
                self.add(Problem(
                    "device", site_name or (guide or "model"), f"torch.{function}(...) at {where} "
                    "makes a tensor without device=, so it lands on the CPU when the data are "
                    "on a GPU", f"make it from the data: x.new_{_new_name(function)}(...) or "
                    f"torch.{function}(..., device=x.device, dtype=x.dtype)", guide))
        for name, site in trace.nodes.items():
            if site["type"] not in ("sample", "param") or site_is_subsample(site):
                continue
            value = site["value"]
            if isinstance(value, torch.Tensor) and value.dim() and value.device != self.x.device:
                self.add(Problem(
                    "device", name, f"its value is on {value.device} but the data are on "
                    f"{self.x.device}", "make its tensors from the data (x.new_zeros, "
                    "device=x.device)", guide))

    # guides

    def guide(self, name: str, model_trace) -> None:
        model = self.spec.make_model(self.config, None)
        _run(model, self.x, **self.full)  # the model's parameters first, as SVI has them
        try:
            guide = self.spec.guides[name](model, self.config)
        except Exception as error:  # noqa: BLE001
            self.add(_failure(_Run(poutine.Trace(), error, []), "guide", name))
            return
        run = _run(guide, self.x, audit=True, **self.full)
        if run.error is not None:
            self.add(_failure(run, "guide", name))
            return
        guide_trace = run.trace
        problem = _log_probs(guide_trace)
        if problem is not None:
            self.add(dataclasses.replace(problem, guide=name))
            return
        self.devices(run, guide_trace, name)
        elbo_name = self.spec.default_elbo.get(name, "Trace_ELBO")
        before = len(self.found)
        self.match(name, guide_trace, model_trace, enumerates="Enum" in elbo_name)
        if len(self.found) > before or not self.model_ok:
            return  # the model cannot replay draws that do not fit it; or it is broken itself
        replayed = _run(poutine.replay(model, trace=guide_trace), self.x, **self.full)
        if replayed.error is not None:
            self.add(_failure(replayed, "model, replaying the guide's draws,", name,
                              full_trace=model_trace))
            return
        problem = _log_probs(replayed.trace)
        if problem is not None:
            self.add(dataclasses.replace(problem, guide=name, what=(
                f"with the guide's draws: {problem.what}")))
            return
        params = {n: s for n, s in guide_trace.nodes.items() if s["type"] == "param"}
        for param, site in params.items():
            self.add(self._perturb(guide, param, site, name, guide_trace,
                                   replay=lambda g=guide: _run(g, self.x, **self.full)))
        self.guide_subsampling(name, model, guide)
        self.elbo(name, elbo_name, model, guide)

    def match(self, guide_name: str, guide_trace, model_trace, *, enumerates: bool) -> None:
        model_sites = dict(_sample_sites(model_trace))
        guide_sites = {n: s for n, s in _sample_sites(guide_trace)
                       if not s["infer"].get("is_auxiliary")}
        latent = [n for n, s in model_sites.items() if not s["is_observed"]]
        for name, site in guide_sites.items():
            if name not in model_sites:
                self.add(Problem(
                    "mismatch", name, "the guide samples it but the model has no site of that "
                    f"name (the model's latent sites: {', '.join(latent) or 'none'})",
                    "name the guide's sites after the model's, or remove it", guide_name))
                continue
            model_site = model_sites[name]
            if model_site["is_observed"]:
                self.add(Problem(
                    "mismatch", name, "the guide samples it but the model observes it",
                    "the guide covers latent sites only: remove it from the guide",
                    guide_name))
                continue
            self.match_site(guide_name, name, site, model_site)
        for name in latent:
            if name in guide_sites:
                continue
            enumerated = model_sites[name]["infer"].get("enumerate") == "parallel"
            if enumerated and enumerates:
                continue
            self.add(Problem(
                "mismatch", name, "the model samples it but the guide has no site of that name, "
                "so it is drawn from the prior and nothing learns its posterior",
                f"sample '{name}' in the guide (or mark a discrete site "
                "infer={'enumerate': 'parallel'} and fit with TraceEnum_ELBO)", guide_name))

    def match_site(self, guide_name: str, name: str, site, model_site) -> None:
        g_fn, m_fn = site["fn"], model_site["fn"]
        if g_fn.event_dim != m_fn.event_dim:
            self.add(Problem(
                "shape", name, f"the guide's distribution has {g_fn.event_dim} event "
                f"dimension(s) but the model's has {m_fn.event_dim}",
                f"use the same .to_event({m_fn.event_dim}) in the guide as in the model",
                guide_name))
            return
        g_shape = tuple(site["value"].shape)
        m_shape = tuple(m_fn.batch_shape) + tuple(m_fn.event_shape)
        if g_shape != m_shape:
            self.add(Problem(
                "shape", name, f"the guide draws shape {_shape(g_shape)} but the model's site "
                f"has shape {_shape(m_shape)}", "give the guide's distribution the model's "
                "batch and event shape", guide_name))
            return
        g_data, m_data = _data_frame(site), _data_frame(model_site)
        if (g_data is None) != (m_data is None):
            where = "outside" if g_data is None else "inside"
            self.add(Problem(
                "plate", name, f"the guide samples it {where} pyro.plate('data') but the model "
                "does not", "use the same plate in the guide: pyro.plate('data', N, "
                "subsample_size=subsample_size)", guide_name))

    def guide_subsampling(self, name: str, model, guide) -> None:
        run = _run(guide, self.x, **self.sub)
        if run.error is not None:
            self.add(self._subsampled_failure(run, "guide", name, None))
            return
        replayed = _run(poutine.replay(model, trace=run.trace), self.x, **self.sub)
        if replayed.error is not None:
            problem = _failure(replayed, "model, replaying the subsampled guide,", name)
            self.add(dataclasses.replace(problem, kind="subsampling"))
            return
        model_sites = dict(_sample_sites(replayed.trace))
        for site_name, site in _sample_sites(run.trace):
            if site["infer"].get("is_auxiliary") or site_name not in model_sites:
                continue
            frame = _data_frame(site)
            model_frame = _data_frame(model_sites[site_name])
            if frame is None or model_frame is None:
                continue
            if frame.size != model_frame.size or float(torch.as_tensor(site["scale"]).max()) \
                    != float(torch.as_tensor(model_sites[site_name]["scale"]).max()):
                self.add(Problem(
                    "subsampling", site_name, f"with {self.batch} of {self.rows} rows the guide "
                    f"draws it for {frame.size} rows scaled by {float(site['scale']):g}, the "
                    f"model for {model_frame.size} rows scaled by "
                    f"{float(model_sites[site_name]['scale']):g}",
                    "give the guide the model's plate, pyro.plate('data', N, "
                    "subsample_size=subsample_size), so both see the same rows", name))

    def elbo(self, name: str, elbo_name: str, model, guide) -> None:
        try:
            loss = make_elbo(elbo_name).loss(model, guide, self.x, **self.full)
        except Exception as error:  # noqa: BLE001
            text = _message(error)
            discrete = self._discrete_names(model)
            if "Enum" in elbo_name and discrete:
                self.add(Problem(
                    "enumeration", ", ".join(discrete), f"{elbo_name} with guide {name} fails "
                    f"({text})", "the model must broadcast over the enumerated values on a new "
                    "dimension on the left: index with them (locs[c]); no .item(), squeeze or "
                    "reshape with explicit sizes", name))
            else:
                named = re.search(r"""site ["']([^"']+)["']""", text)
                self.add(Problem("error", named.group(1) if named else name,
                                 f"{elbo_name} fails ({text})",
                                 "run svi.step once by hand to see why", name))
            return
        if not math.isfinite(loss):
            self.add(Problem("error", name, f"{elbo_name} is {loss} at the initial parameters",
                             "check the scales (a scale of 0, the log of a negative number) "
                             "and the data", name))

    def _discrete_names(self, model) -> list[str]:
        run = _run(model, self.x, **self.full)
        return [n for n, s in _sample_sites(run.trace)
                if not s["is_observed"] and s["fn"].support.is_discrete]


def _new_name(function: str) -> str:
    return {"zeros": "zeros", "ones": "ones", "empty": "empty", "full": "full",
            "tensor": "tensor", "as_tensor": "tensor"}.get(function, "zeros")


def _constraint_fix(needed: str) -> str:
    text = needed.replace(" ", "")
    if text.startswith("GreaterThan(lower_bound=0") or text.startswith("GreaterThanEq"):
        return "constraints.positive"
    if text.startswith("Simplex"):
        return "constraints.simplex"
    if text.startswith("PositiveDefinite"):
        return "constraints.positive_definite"
    if text.startswith("LowerCholesky"):
        return "constraints.lower_cholesky"
    if text.startswith("Interval(lower_bound=0.0,upper_bound=1.0)"):
        return "constraints.unit_interval"
    return f"a constraint matching {needed.strip()}"
