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

The package, in the order it is built (each module imports only those above it): ``report``
(:class:`Problem`, :class:`CheckReport`), ``devices`` (the device audit), ``tracing`` (one run
under validation; a failure as a Problem naming the site), ``model_checks`` and
``guide_checks`` (the checks, by what they look at), ``checker`` (runs them all), and this
module: :func:`check` and :func:`check_model`.
"""

from __future__ import annotations

import dataclasses
import warnings

import pyro
import torch

from inference.catalog import get_model
from inference.check.checker import _Checker
from inference.check.report import CheckReport, Problem
from inference.data import DataRequest, load
from inference.evaluate import yardstick_notes
from inference.fitting import default_test_fraction
from inference.sampling import own_random_stream
from zoo.errors import InputError
from zoo.registry import ModelSpec

__all__ = ["CheckReport", "Problem", "check", "check_model"]

CHECK_ROWS = 64  # rows of the training data the check runs on


def check(model: ModelSpec | str, *, data: DataRequest | str | None = None, data_root=None,
          download: bool = False, test_fraction: float | None = None,
          binarize: str | None = None, standardize: bool = False, dequantize: bool = False,
          device: str = "auto", dtype: str = "float32", seed: int = 0, rows: int = CHECK_ROWS,
          guides: tuple[str, ...] | None = None,
          **options) -> CheckReport:
    """Check ``model`` on the first ``rows`` training rows of ``data`` (a
    :class:`DataRequest` as the fit's plan takes, or a dataset name: the model's default
    dataset when ``None``, with the data keywords); ``options`` are the model's config fields.
    The Python face of ``lvm-zoo check``."""
    spec = get_model(model)
    if rows < 2:
        raise InputError(f"rows={rows} must be at least 2 (the check also subsamples)")
    config_names = {f.name for f in dataclasses.fields(spec.config_class)}
    unknown = sorted(k for k, v in options.items() if v is not None and k not in config_names)
    if unknown:
        raise InputError(f"check takes no option {', '.join(unknown)}")
    if not isinstance(data, DataRequest):
        data = DataRequest(
            name=data, root=data_root, download=download,
            test_fraction=default_test_fraction(spec) if test_fraction is None
            else test_fraction, binarize=binarize, standardize=standardize,
            dequantize=dequantize, seed=seed, dtype=dtype, device=device)
    loaded = load(data, spec)
    dataset, x_train, target = loaded.dataset, loaded.train, loaded.device
    config = spec.make_config(dim=dataset.dim, **options)
    x = x_train[:rows]
    config.validate(x.shape[0])
    chosen = tuple(spec.guides) if guides is None else tuple(guides)
    missing = [g for g in chosen if g not in spec.guides]
    if missing:
        raise InputError(f"model '{spec.name}' has no guide {', '.join(missing)}; choose from: "
                         + ", ".join(spec.guides))
    problems = check_model(spec, config, x, guides=chosen, seed=seed)
    notes = [] if problems else yardstick_notes(spec, config, x, chosen)
    return CheckReport(model=spec.name, data=dataset.name, rows=int(x.shape[0]),
                       device=str(target), guides=chosen,
                       sites={"local": tuple(spec.local_sites),
                              "global": tuple(spec.global_sites)},
                       problems=problems, notes=notes)


def check_model(spec: ModelSpec, config, x: torch.Tensor, *,
                guides: tuple[str, ...] | None = None, seed: int = 0) -> list[Problem]:
    """Every :class:`Problem` of ``spec``'s model and ``guides`` on ``x : (N, D)``."""
    guides = tuple(spec.guides) if guides is None else guides
    found: list[Problem] = []
    with own_random_stream(seed, x.device), pyro.validation_enabled(True), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each finding becomes a Problem, not a warning
        _Checker(spec, config, x, found).run(guides)
    unique, seen = [], set()
    for problem in found:
        key = (problem.kind, problem.site, problem.what, problem.guide)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique
