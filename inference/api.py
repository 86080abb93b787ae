"""The Python face of the command line: ``fit``, ``save``, ``compare``, ``evaluate``,
``catalogue``, ``load``.

Each takes the same names as the flags: the model's options (``components=3``), the
strategy's options (``steps``, ``n_init``, ...), and a :class:`DataRequest` (or a dataset
name) for the data. ``fit`` plans the fit (every argument checked before any data or work),
runs it and returns a :class:`Fitted` (its ``record`` is what ``lvm-zoo fit --json`` prints,
mean nats per datapoint throughout); with ``out=FOLDER`` it also writes the run folder as
``lvm-zoo fit --out`` does (locked; an earlier run refused unless ``overwrite=True``;
``resume=True`` continues an interrupted SVI fit); ``save`` writes a fit made in memory::

    fitted = api.fit("gmm", data="old-faithful", inference="em", components=2)
    fitted.metrics["test_log_likelihood"]
    api.save(fitted, "runs/my-fit")
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from inference import strategies
from inference.catalog import get_model, models
from inference.data import DataRequest, LoadedData, choose_device
from inference.data import load as load_data
from inference.fitting import FitPlan, Fitted, fit, plan, run, save
from inference.reevaluate import evaluate_run
from zoo import datasets

evaluate = evaluate_run


def compare(model, *, out=None, **arguments) -> list[dict]:
    """Every applicable strategy on one split (:func:`inference.compare.compare`). The
    comparison folder (run folders, tables, figures, report) is written only where ``out``
    asks for it, as ``lvm-zoo compare --out``; without ``out`` nothing is left on disk: the
    fits run in a temporary folder that is removed, and the records name no folder."""
    from inference.compare import compare as compare_strategies

    if out is not None or arguments.get("resume"):  # resume=True needs the stopped out
        return compare_strategies(model, out=out, **arguments)
    with tempfile.TemporaryDirectory(prefix="lvm-zoo-compare-") as folder:
        records = compare_strategies(model, out=Path(folder) / "comparison", **arguments)
    for record in records:
        record.pop("run_dir", None)
        record.pop("compare_dir", None)
    return records


def strategy_grid(spec, config=None, x=None, **grid_options):
    """The comparison's cells for ``spec`` (:func:`inference.compare.strategy_grid`)."""
    from inference.compare import strategy_grid as grid

    return grid(spec, config, x, **grid_options)


def load(run_dir, model: str | None = None, device: str = "cpu"):
    """The fitted scikit-learn estimator of a run folder, ready to predict, sample and score
    (weights only: nothing in the folder is imported or unpickled; a run of a user-file model
    needs ``model=FILE.py``). ``load_data(request, spec)`` loads a :class:`DataRequest`."""
    from inference.estimators_sklearn import load as load_run_estimator

    return load_run_estimator(run_dir, model=model, device=device)


load_estimator = load

__all__ = ["DataRequest", "FitPlan", "Fitted", "LoadedData", "catalogue", "choose_device",
           "compare", "evaluate", "fit", "get_model", "load", "load_data", "load_estimator",
           "plan", "run", "save", "strategy_grid"]


def catalogue() -> dict:
    """What `lvm-zoo list` shows: models, inference strategies with their options, ELBO
    estimators, datasets."""
    from inference.svi import ELBOS

    return {
        "models": {name: {"summary": spec.summary,
                          "inference": strategies.applicable(spec),
                          "capabilities": list(spec.offered()),
                          "guides": list(spec.guides), "default_data": spec.default_data,
                          "exact_log_likelihood": spec.log_marginal is not None,
                          "exact_posterior": spec.posterior is not None, "notes": spec.notes}
                   for name, spec in models().items()},
        "inference": {name: {"summary": s.summary,
                             "options": [f.name for f in dataclasses.fields(s.Options)],
                             "takes_guide": s.uses_guide}
                      for name, s in strategies.strategies().items()},
        "elbo_estimators": list(ELBOS),
        "datasets": list(datasets.DATASETS),
    }
