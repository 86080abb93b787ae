"""One loader for a saved run folder, shared by every command that reads one (``evaluate``,
``sample``, ``predict``, ``api.load`` and the estimators' ``load``): the folder is validated
once, as data, before anything is computed from it.

- ``run.json`` against :data:`RUN_SCHEMA` and :data:`DATA_SCHEMA` (JSON types and ranges:
  ``seed`` a 64-bit integer, ``test_fraction`` in [0, 1), ``iwae_samples`` at least 1 and
  within memory, a known strategy and guide), the config against the model's config dataclass
  (each field the type of its default, then the dataclass's own checks), the strategy's
  options against its option dataclass (:func:`inference.strategies.make_options`).
- ``params.pt`` (read with ``torch.load(weights_only=True)``: nothing is unpickled) against the
  config: the model is traced once on a few rows (zeros, else standard normal), in a param
  store of its own and a forked random stream, and every ``pyro.param`` site it creates
  names a key the file must hold, with that shape, a floating-point dtype, finite values and
  the site's constraint (mixture weights on the simplex, Cholesky factors of positive-definite
  covariances, positive variances); a key the model does not create is refused too. The
  guide's parameters (``guide_params``) likewise: the guide is run once as evaluation loads
  it (:func:`inference.evaluate.fitted`, over the checked model parameters, on 8 rows, or on
  the training rows of a per-datapoint guide), and every parameter it registers names a key
  the file must hold, with that shape and finite values; no other key.

Every fault is one :class:`~zoo.errors.InputError` naming the file, the key and what was
expected. A run folder never names code to run: a run of a model from a user file needs the
user to name that file (:func:`model_reference`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from torch.distributions import constraints

from inference import strategies
from inference.catalog import get_model, guide_entry, models
from inference.data import DTYPES, DataRequest
from inference.evaluate import fitted
from inference.runs import HISTORY_FILE, PARAMS_FILE, RUN_FILE, load_run, read_json
from zoo.errors import InputError
from zoo.registry import ModelSpec, Params
from zoo.registry import model_reference as spec_reference
from zoo.resources import check_importance_samples

SEED_RANGE = (-(2**63), 2**64)  # what torch.manual_seed takes: [low, high)
DAMAGED = "it is damaged or not written by lvm-zoo: fit again"


@dataclass(frozen=True)
class Field:
    """One key of a JSON record: its JSON types, whether it must be there, and its range."""

    kinds: tuple[type, ...]
    required: bool = False
    low: float | None = None  # inclusive
    high: float | None = None  # exclusive
    choices: tuple | None = None

    def expected(self) -> str:
        names = " or ".join("null" if k is type(None) else k.__name__ for k in self.kinds)
        if self.choices is not None:
            return "one of " + ", ".join("null" if c is None else repr(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            return f"{names} in [{self.low:g}, {self.high:g})"
        if self.low is not None:
            return f"{names} of at least {self.low:g}"
        return names

    def accepts(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices and not (isinstance(value, bool)
                                                  and bool not in self.kinds)
        if isinstance(value, bool) and bool not in self.kinds:
            return False
        if not isinstance(value, self.kinds):
            return False
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                return False
            if self.low is not None and value < self.low:
                return False
            if self.high is not None and value >= self.high:
                return False
        return True


_TEXT, _NONE = (str,), type(None)
RUN_SCHEMA = {  # run.json
    "model": Field(_TEXT, required=True), "model_ref": Field(_TEXT),
    "inference": Field(_TEXT, required=True), "guide": Field((str, _NONE), required=True),
    "seed": Field((int,), required=True, low=SEED_RANGE[0], high=SEED_RANGE[1]),
    "config": Field((dict,), required=True), "data": Field((dict,), required=True),
    "options": Field((dict,)), "info": Field((dict,)), "iwae_samples": Field((int,), low=1),
    "iwae_rows": Field((int, str, _NONE)),  # rows per split importance-sampled, or "all"
}
DATA_SCHEMA = {  # run.json's "data": the DataRequest of the fit
    "name": Field((str, _NONE)), "root": Field((str, _NONE)), "download": Field((bool,)),
    "test_fraction": Field((int, float), low=0.0, high=1.0),
    "binarize": Field((str, _NONE), choices=(None, "static", "dynamic")),
    "standardize": Field((bool,)), "dequantize": Field((bool,)),
    "dtype": Field(_TEXT, choices=tuple(DTYPES)), "device": Field(_TEXT),
    "seed": Field((int,), low=SEED_RANGE[0], high=SEED_RANGE[1]),
    "chunk_rows": Field((int, _NONE), low=1),
}


@dataclass(frozen=True)
class SavedRun:
    """A run folder, validated: its record, model, config, data request and tensors (CPU)."""

    path: Path
    record: dict  # run.json
    reference: str  # the model as looked up: a registry name or FILE.py:NAME
    spec: ModelSpec
    config: Any
    request: DataRequest  # the fit's data request (its device as stored)
    params: Params
    guide_params: Params
    metrics: dict  # metrics.json ({} when the yardstick never ran)
    history: dict  # history.json ({} when absent)

    @property
    def iwae_samples(self) -> int | None:
        return self.record.get("iwae_samples")

    def data(self, device: str = "cpu") -> DataRequest:
        """The run's data request (its preprocessing) on ``device``."""
        return dataclasses.replace(self.request, device=device)


def load(run_dir: str | Path, model: str | None = None) -> SavedRun:
    """The run folder ``run_dir`` read and validated (see the module docstring); ``model``
    names the user's file for a run of a model declared there (``FILE.py`` or
    ``FILE.py:NAME``)."""
    run_dir = Path(run_dir)
    record, params, guide_params, metrics = load_run(run_dir)
    where = run_dir / RUN_FILE
    check_record(where, record, RUN_SCHEMA)
    check_record(where, record["data"], DATA_SCHEMA, prefix="data.")
    request = _request(where, record["data"])
    reference = model_reference(record, model, run_dir)
    try:
        spec = get_model(reference)
    except InputError as error:
        if model is not None:  # the user's own --model: its message says it all
            raise
        raise InputError(f"{where}: model is {_shown(record['model'])}, which this "
                         f"installation does not have ({error})") from None
    config = _config(where, spec, record["config"])
    _check_inference(where, spec, record)
    samples = record.get("iwae_samples")
    if samples is not None and spec.log_marginal is None:
        rows = metrics.get("n_train") if isinstance(metrics.get("n_train"), int) else 1
        check_importance_samples(samples, max(1, rows), where=f"{where}: iwae_samples",
                                 fix="lower it (or give `evaluate --iwae-samples K`)")
    check_params(run_dir / PARAMS_FILE, spec, config, params, guide_params, request.dtype)
    check_guide_params(run_dir / PARAMS_FILE, spec, config, record["guide"], params,
                       guide_params, metrics.get("n_train"), request.dtype)
    history_path = run_dir / HISTORY_FILE
    history = read_json(history_path, dict) if history_path.is_file() else {}
    return SavedRun(run_dir, record, reference, spec, config, request, params, guide_params,
                    metrics, history)


def check_record(where: Path, record: dict, schema: dict[str, Field], prefix: str = "") -> None:
    """Each key of ``schema`` in ``record`` is of its type and in its range (required keys
    present); anything else an InputError naming the file, the key and what was expected."""
    missing = [prefix + k for k, f in schema.items() if f.required and k not in record]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}; {DAMAGED}")
    for key, field in schema.items():
        if key in record and not field.accepts(record[key]):
            raise InputError(f"{where}: {prefix}{key} is {_shown(record[key])}, expected "
                             f"{field.expected()}; {DAMAGED}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _request(where: Path, data: dict) -> DataRequest:
    fields = {k: data[k] for k in DataRequest.__dataclass_fields__ if k in data}
    try:
        return DataRequest(**fields)
    except (InputError, TypeError) as error:
        raise InputError(f"{where}: data holds a request lvm-zoo cannot read ({error}); "
                         f"{DAMAGED}") from None


def _config(where: Path, spec: ModelSpec, fields: dict) -> Any:
    """The config dataclass from run.json's fields: each the JSON type of its default
    (an integer where an integer is expected, a list for a tuple), then the dataclass's own
    checks."""
    known = {f.name: f for f in dataclasses.fields(spec.config_class)}
    for key, value in fields.items():
        field = known.get(key)
        if field is None:
            continue  # the dataclass names it below
        default = field.default
        expected = _json_kind(default)
        if key == "dim":
            expected = ("int", (int,))
        if expected is not None and (isinstance(value, bool) != (expected[1] == (bool,))
                                     or not isinstance(value, expected[1])):
            raise InputError(f"{where}: config.{key} is {_shown(value)}, expected "
                             f"{expected[0]} (model '{spec.name}'); {DAMAGED}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}: config.{key} is {value}, expected a finite number; "
                             f"{DAMAGED}")
    if not isinstance(fields.get("dim"), int) or fields["dim"] < 1:
        raise InputError(f"{where}: config.dim is {_shown(fields.get('dim'))}, expected a "
                         f"positive int (the data's columns); {DAMAGED}")
    try:
        return spec.config_class(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in fields.items()})
    except (TypeError, ValueError) as error:
        raise InputError(f"{where} holds a config that model '{spec.name}' does not take "
                         f"({str(error).splitlines()[0] if str(error) else error}); it is "
                         "damaged or written by another version: fit again") from None


def _json_kind(default: Any) -> tuple[str, tuple[type, ...]] | None:
    """What JSON value a config field with this default takes, or None (no default, None)."""
    if isinstance(default, bool):
        return "true or false", (bool,)
    if isinstance(default, int):
        return "int", (int,)
    if isinstance(default, float):
        return "a number", (int, float)
    if isinstance(default, str):
        return "str", (str,)
    if isinstance(default, tuple):
        return "a list", (list, tuple)
    return None


def _check_inference(where: Path, spec: ModelSpec, record: dict) -> None:
    """The strategy is one this process knows, its options are its own and in range, the
    guide one the model has."""
    known = strategies.strategies()
    strategy = known.get(record["inference"])
    if strategy is None:
        raise InputError(f"{where}: inference is {_shown(record['inference'])}, expected one "
                         f"of {', '.join(known)}; {DAMAGED}")
    guide = record["guide"]
    if guide is not None and spec.guides and guide not in spec.guides:
        raise InputError(f"{where}: guide is {guide!r}, expected one of model '{spec.name}''s "
                         f"guides ({', '.join(spec.guides)}); {DAMAGED}")
    options = record.get("options") or {}
    try:
        strategies.make_options(strategy.Options, dict(options),
                                owner=f"--inference {strategy.name}")
    except (InputError, TypeError, ValueError) as error:
        raise InputError(f"{where}: options hold what --inference {strategy.name} does not "
                         f"take ({error}); {DAMAGED}") from None


# --- parameters against the config ---------------------------------------------------------


def expected_params(spec: ModelSpec, config, dtype: torch.dtype = torch.float32
                    ) -> dict[str, tuple[tuple[int, ...], Any]] | None:
    """``name -> (shape, constraint)`` of every ``pyro.param`` site the model creates, from
    one trace on two rows of zeros, else eight standard normal rows (in a param store of its
    own, the global random stream untouched), or None when the model cannot be traced that
    way (a user's model that needs its own data: its parameters are then checked for dtype
    and finiteness only)."""
    trace = None
    with torch.random.fork_rng(devices=[]), pyro.get_param_store().scope(), \
            torch.no_grad():
        torch.manual_seed(0)
        # rows of zeros suit a Bernoulli or count likelihood; a model whose prior is built
        # from the rows' spread (the Bayesian mixture's Wishart) needs rows that vary
        for x in (torch.zeros(2, config.dim, dtype=dtype),
                  torch.randn(8, config.dim, dtype=dtype)):
            pyro.clear_param_store()
            try:
                trace = poutine.trace(spec.make_model(config)).get_trace(x)
                break
            except InputError:
                raise
            except Exception:  # noqa: BLE001, S112 - a user's model may need its own data
                continue
    if trace is None:
        return None
    return {name: (tuple(site["value"].shape),
                   site["kwargs"].get("constraint", constraints.real))
            for name, site in trace.nodes.items() if site["type"] == "param"}


def check_params(path: Path, spec: ModelSpec, config, params: Params, guide_params: Params,
                 dtype: str = "float32") -> None:
    """``params`` (the model's) hold exactly the sites the model creates, with their shapes,
    floating-point dtypes, finite values and constraints; ``guide_params`` are floating-point
    and finite. Anything else is an InputError naming ``path`` and the key."""
    for group, values in (("params", params), ("guide_params", guide_params)):
        for name, value in values.items():
            if not value.is_floating_point():
                raise InputError(f"{path}: {group} '{name}' has dtype {value.dtype}, expected "
                                 f"a floating-point tensor; {DAMAGED}")
    layout = expected_params(spec, config, DTYPES.get(dtype, torch.float32))
    if layout is None:
        return
    where = f"model '{spec.name}' with {_options(config)}"
    missing = [n for n in layout if n not in params]
    if missing:
        raise InputError(f"{path}: params lack {', '.join(map(repr, missing))}, which {where} "
                         f"needs; {DAMAGED}")
    extra = [n for n in params if n not in layout]
    if extra:
        raise InputError(f"{path}: params hold {', '.join(map(repr, extra))}, which {where} "
                         f"does not have (it has {', '.join(map(repr, layout))}); {DAMAGED}")
    for name, (shape, constraint) in layout.items():
        value = params[name]
        if tuple(value.shape) != shape:
            raise InputError(f"{path}: params '{name}' has shape {tuple(value.shape)}, "
                             f"expected {shape} for {where}; {DAMAGED}")
        fault = constraint_fault(value, constraint)
        if fault:
            raise InputError(f"{path}: params '{name}' {fault}; {DAMAGED}")


def expected_guide_params(spec: ModelSpec, config, guide: str, params: Params,
                          rows: int | None = None, dtype: torch.dtype = torch.float32
                          ) -> dict[str, tuple[int, ...]] | None:
    """``name -> shape`` of every parameter the guide ``guide`` registers over
    the model's (validated) ``params``: the guide run once as evaluation loads it
    (:func:`inference.evaluate.fitted`), in a param store of its own and a forked random
    stream, on ``rows`` rows (a per-datapoint guide's training rows; 8 otherwise) of zeros,
    else of standard normal values. None when the guide cannot be run that way (a user's guide
    that needs its own data) or a per-datapoint guide's rows are unknown."""
    per_datapoint = bool(getattr(guide_entry(spec, guide), "per_datapoint", False))
    if per_datapoint and not (isinstance(rows, int) and not isinstance(rows, bool)
                              and rows >= 1):
        return None
    n = rows if per_datapoint else 8
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        for x in (torch.zeros(1, config.dim, dtype=dtype).expand(n, -1),
                  torch.randn(n, config.dim, dtype=dtype)):
            try:
                with fitted(spec, config, params, x, guide=guide):
                    store = pyro.get_param_store()
                    return {name: tuple(store[name].shape) for name in store.keys()
                            if name not in params}
            except Exception:  # noqa: BLE001, S112 - a user's guide may need its own data
                continue
    return None


def check_guide_params(path: Path, spec: ModelSpec, config, guide: str | None, params: Params,
                       guide_params: Params, rows: int | None = None,
                       dtype: str = "float32") -> None:
    """``guide_params`` hold exactly the parameters the guide registers
    (:func:`expected_guide_params`), with their shapes and finite values; called after
    :func:`check_params` has passed the model's. Their constraints are the guide's own and
    may hold on their boundary (a stick's last concentration equal to its prior's), so only
    shapes are compared. A guide that cannot be traced has its values checked for finiteness
    only. Anything else is an InputError naming ``path``, the
    key and the expected shape."""
    for name, value in guide_params.items():
        if not bool(torch.isfinite(value).all()):
            raise InputError(f"{path}: guide_params '{name}' holds NaN or infinite values, "
                             f"expected finite numbers; {DAMAGED}")
    if guide is None or guide not in spec.guides:
        return
    layout = expected_guide_params(spec, config, guide, params, rows,
                                   DTYPES.get(dtype, torch.float32))
    if layout is None:
        return
    where = f"guide '{guide}' of model '{spec.name}' with {_options(config)}"
    missing = [n for n in layout if n not in guide_params]
    if missing:
        shapes = ", ".join(f"{n!r} of shape {layout[n]}" for n in missing)
        raise InputError(f"{path}: guide_params lack {shapes}, which {where} needs; "
                         f"{DAMAGED}")
    extra = [n for n in guide_params if n not in layout]
    if extra:
        has = ", ".join(map(repr, layout)) or "none"
        raise InputError(f"{path}: guide_params hold {', '.join(map(repr, extra))}, which "
                         f"{where} does not have (it has {has}); {DAMAGED}")
    for name, shape in layout.items():
        value = guide_params[name]
        if tuple(value.shape) != shape:
            raise InputError(f"{path}: guide_params '{name}' has shape {tuple(value.shape)}, "
                             f"expected {shape} for {where}; {DAMAGED}")


def _options(config) -> str:
    shown = [f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)
             if f.name in ("dim", "components", "latent_dim", "covariance_type", "hidden")]
    return ", ".join(shown) or "its config"


def constraint_fault(value: torch.Tensor, constraint) -> str:
    """What is wrong with ``value`` under ``constraint`` (``""``: nothing). The simplex is
    checked to the value's own precision (weights saved in float32 sum to 1 within
    ~K·eps, not 1e-6)."""
    base = getattr(constraint, "base_constraint", constraint)
    x = value.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        return "holds NaN or infinite values, expected finite numbers"
    if base is constraints.real:
        return ""
    if base is constraints.simplex:
        tolerance = max(1e-6, 16 * torch.finfo(value.dtype).eps * max(1, x.shape[-1]))
        total = x.sum(-1)
        if bool((x < 0).any()) or bool(((total - 1).abs() > tolerance).any()):
            return (f"(min {float(x.min()):.4g}, sum {_sums(total)}) is off the simplex, "
                    "expected mixture weights >= 0 that sum to 1")
        return ""
    if base is constraints.lower_cholesky:
        diagonal = x.diagonal(dim1=-2, dim2=-1)
        if bool((x.triu(1) != 0).any()) or bool((diagonal <= 0).any()):
            return ("is not a Cholesky factor, expected lower-triangular matrices with a "
                    f"positive diagonal (positive-definite covariances; smallest diagonal "
                    f"{float(diagonal.min()):.4g})")
        return ""
    if base is constraints.positive_definite:
        if not bool(constraints.positive_definite.check(x).all()):
            return "is not positive definite, expected positive-definite matrices"
        return ""
    if isinstance(base, constraints.greater_than) and isinstance(base.lower_bound, int | float) \
            and base.lower_bound == 0:
        if bool((x <= 0).any()):
            return (f"holds {float(x.min()):.4g}, expected positive values (variances and "
                    "scales)")
        return ""
    try:
        ok = bool(torch.as_tensor(constraint.check(x)).all())
    except (RuntimeError, ValueError, TypeError):
        return ""  # a constraint this check cannot evaluate on a tensor of this shape
    return "" if ok else f"is outside its constraint {constraint}"


def _sums(total: torch.Tensor) -> str:
    values = total.reshape(-1)
    shown = ", ".join(f"{float(v):.4g}" for v in values[:3])
    return shown + (", ..." if values.numel() > 3 else "")


# --- which model a run names -----------------------------------------------------------------


def model_reference(run: dict, model: str | None, run_dir) -> str:
    """The registry name, or the user's file: a run folder never says which code to run."""
    reference = str(run.get("model_ref", run["model"]))
    name = run["model"]
    from_file = ":" in reference and reference.split(":", 1)[0].endswith(".py")
    if model is None:
        loaded = models().get(name)
        if from_file and loaded is not None and spec_reference(loaded) == reference:
            return name  # this process already imported that file itself
        if from_file:
            path = reference.rsplit(":", 1)[0]
            raise InputError(f"run '{run_dir}' is of model '{name}' from a user file "
                             f"({path}); a run folder never runs code: name the file yourself "
                             f"with --model FILE.py (e.g. --model {path}) if you trust it")
        return name
    if ":" in model and model.split(":", 1)[0].endswith(".py"):
        return model
    if model.endswith(".py"):
        return f"{model}:{name}"
    return model
