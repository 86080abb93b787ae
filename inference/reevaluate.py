"""A saved run judged again from its files alone: ``lvm-zoo evaluate RUN_DIR``.

Nothing in the folder is imported or unpickled: run.json says which model (a registry name;
a model from a user file needs that file named), params.pt holds tensors only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from inference.data import DTYPES, DataRequest, load
from inference.evaluate import settle_iwae_rows
from inference.fitting import DEFAULT_IWAE_SAMPLES, judge
from inference.results import FitResult
from inference.run_loader import load as load_saved
from inference.run_loader import model_reference
from inference.runs import RUN_FILE
from zoo.errors import InputError
from zoo.resources import check_importance_samples


def evaluate_run(run_dir: str | Path, *, data: DataRequest | str | None = None,
                 model: str | None = None, device: str = "auto",
                 iwae_samples: int | None = None, iwae_rows: int | str | None = None,
                 progress: bool = False) -> dict:
    """Recompute a run's metrics from its files alone. Nothing in the folder is imported or
    unpickled: a run of a model from a user file needs that file named (``model=FILE.py``
    or ``FILE.py:NAME``). ``data`` evaluates on another dataset of the same dimension.
    The folder is read and validated by :func:`inference.run_loader.load`. ``iwae_rows``
    (default: the fit's, as run.json records it) bounds the rows importance-sampled per split
    (``"all"``: every row); ``progress`` shows a bar over them."""
    if iwae_samples is not None:  # before the folder is read: -5, 0, 10**12 refused at once
        check_importance_samples(iwae_samples, 1)
    iwae_rows = settle_iwae_rows(iwae_rows)
    saved = load_saved(run_dir, model)
    if iwae_rows is None:
        iwae_rows = settle_iwae_rows(saved.record.get("iwae_rows"))
    run, spec, config = saved.record, saved.spec, saved.config
    stored = saved.data(device)
    other = None if data is None else DataRequest.coerce(data)
    # the preprocessing is the run's; a request without a name (only --data-root) is the
    # run's own dataset, found elsewhere, not the model's default one
    request = (stored if other is None else dataclasses.replace(
        other, name=other.name or stored.name, seed=stored.seed,
        test_fraction=stored.test_fraction, binarize=stored.binarize,
        standardize=stored.standardize, dequantize=stored.dequantize, dtype=stored.dtype,
        device=device))
    loaded = load(request, spec)
    if loaded.dataset.dim != config.dim:
        raise InputError(f"dataset '{loaded.dataset.name}' has dimension {loaded.dataset.dim} "
                         f"but the run was fitted on dimension {config.dim}; evaluate on data "
                         "of that dimension")
    samples = iwae_samples or saved.iwae_samples or DEFAULT_IWAE_SAMPLES
    if spec.log_marginal is None:  # the (K, N) log-weights of the larger split, before work
        rows = max(int(loaded.train.shape[0]), int(loaded.test.shape[0]), 1)
        check_importance_samples(samples, rows, where="--iwae-samples" if iwae_samples
                                 else f"{Path(run_dir) / RUN_FILE}: iwae_samples")
    dtype = DTYPES[request.dtype]
    result = FitResult(
        model=spec.name, inference=run["inference"], guide=run["guide"],
        params={k: v.to(loaded.device, dtype) for k, v in saved.params.items()},
        guide_params={k: v.to(loaded.device, dtype) for k, v in saved.guide_params.items()},
        seed=run["seed"], device=str(loaded.device))
    metrics = judge(spec, config, result, loaded, seed=run["seed"], num_samples=samples,
                    iwae_rows=iwae_rows, progress=progress)
    return {"model": spec.name, "guide": run["guide"], "inference": run["inference"],
            "data": loaded.dataset.name, "n_train": int(loaded.train.shape[0]),
            "n_test": int(loaded.test.shape[0]), **metrics,
            "seconds": saved.metrics.get("seconds"), "steps": saved.metrics.get("steps"),
            "converged": saved.metrics.get("converged"), "device": str(loaded.device),
            "seed": run["seed"], "run_dir": str(run_dir)}


_model_reference = model_reference  # the rule lives with the loader (inference.run_loader)
