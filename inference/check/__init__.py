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

The checks themselves live in :mod:`inference.preflight`, below the fit plan, because every
fit with a guide runs the ones it needs before training (``thorough=False``); this module is
the face: :func:`check` plans the check through :func:`inference.fitting.plan` (the same
validation of the model, its options and the data request as ``fit``), loads the rows and
runs every check.
"""

from __future__ import annotations

import torch

from inference.data import DataRequest, load
from inference.evaluate import yardstick_notes
from inference.fitting import make_config, plan
from inference.preflight import PREFLIGHT_ROWS, CheckReport, Problem
from inference.preflight import check_model as _check_model
from zoo.errors import InputError
from zoo.registry import ModelSpec

__all__ = ["CheckReport", "Problem", "check", "check_model"]

CHECK_ROWS = PREFLIGHT_ROWS  # rows of the training data the check runs on


def check(model: ModelSpec | str, *, data: DataRequest | str | None = None, data_root=None,
          seed: int = 0, rows: int = CHECK_ROWS, guides: tuple[str, ...] | None = None,
          **options) -> CheckReport:
    """Check ``model`` on the first ``rows`` training rows of ``data`` (a
    :class:`DataRequest` as the fit's plan takes, or a dataset name: the model's default
    dataset when ``None``); ``options`` are the model's config fields and the data keywords
    that :func:`inference.fitting.plan` takes (``standardize=True``, ``binarize=...``,
    ``device=...``), checked by that plan as a fit's are. The Python face of ``lvm-zoo
    check``."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 2:
        raise InputError(f"rows={rows!r} must be an integer of at least 2 (the check also "
                         "subsamples)")
    if data_root is not None:
        options["root"] = data_root
    planned = plan(model, data=data, seed=seed, **options)
    spec = planned.spec
    chosen = tuple(spec.guides) if guides is None else tuple(guides)
    missing = [g for g in chosen if g not in spec.guides]
    if missing:
        raise InputError(f"model '{spec.name}' has no guide {', '.join(missing)}; choose from: "
                         + ", ".join(spec.guides))
    loaded = load(planned.data, spec)
    config = make_config(spec, loaded, planned.model_options)
    x = loaded.train[:rows]
    problems = check_model(spec, config, x, guides=chosen, seed=seed)
    notes = [] if problems else yardstick_notes(spec, config, x, chosen)
    return CheckReport(model=spec.name, data=loaded.dataset.name, rows=int(x.shape[0]),
                       device=str(loaded.device), guides=chosen,
                       sites={"local": tuple(spec.local_sites),
                              "global": tuple(spec.global_sites)},
                       problems=problems, notes=notes)


def check_model(spec: ModelSpec, config, x: torch.Tensor, *,
                guides: tuple[str, ...] | None = None, seed: int = 0) -> list[Problem]:
    """Every :class:`Problem` of ``spec``'s model and ``guides`` on ``x : (N, D)``
    (:func:`inference.preflight.check_model`, every check)."""
    return _check_model(spec, config, x, guides=guides, seed=seed)
