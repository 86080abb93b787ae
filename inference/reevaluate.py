"""A saved run judged again from its files alone: ``lvm-zoo evaluate RUN_DIR``.

Nothing in the folder is imported or unpickled: run.json says which model (a registry name;
a model from a user file needs that file named), params.pt holds tensors only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from inference.catalog import get_model, models
from inference.data import DTYPES, DataRequest, load
from inference.fitting import DEFAULT_IWAE_SAMPLES, judge
from inference.results import FitResult
from inference.runs import load_run
from zoo.errors import InputError
from zoo.registry import model_reference


def evaluate_run(run_dir: str | Path, *, data: DataRequest | str | None = None,
                 model: str | None = None, device: str = "auto",
                 iwae_samples: int | None = None) -> dict:
    """Recompute a run's metrics from its files alone. Nothing in the folder is imported or
    unpickled: a run of a model from a user file needs that file named (``model=FILE.py``
    or ``FILE.py:NAME``). ``data`` evaluates on another dataset of the same dimension."""
    run, params, guide_params, saved = load_run(run_dir)
    spec = get_model(_model_reference(run, model, run_dir))
    source = run["data"]
    stored = DataRequest(**{k: source.get(k, f.default) for k, f in
                            DataRequest.__dataclass_fields__.items()
                            if k not in ("device",)}, device=device)
    other = None if data is None else DataRequest.coerce(data)
    # the preprocessing is the run's; a request without a name (only --data-root) is the
    # run's own dataset, found elsewhere, not the model's default one
    request = (stored if other is None else dataclasses.replace(
        other, name=other.name or stored.name, seed=stored.seed,
        test_fraction=stored.test_fraction, binarize=stored.binarize,
        standardize=stored.standardize, dequantize=stored.dequantize, dtype=stored.dtype,
        device=device))
    loaded = load(request, spec)
    try:
        config = spec.config_class(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in run["config"].items()})
    except (TypeError, ValueError) as error:
        raise InputError(f"{Path(run_dir) / 'run.json'} holds a config that model "
                         f"'{spec.name}' does not take ({error}); it is damaged or written by "
                         "another version: fit again") from None
    if loaded.dataset.dim != config.dim:
        raise InputError(f"dataset '{loaded.dataset.name}' has dimension {loaded.dataset.dim} "
                         f"but the run was fitted on dimension {config.dim}; evaluate on data "
                         "of that dimension")
    dtype = DTYPES[request.dtype]
    result = FitResult(
        model=spec.name, inference=run["inference"], guide=run["guide"],
        params={k: v.to(loaded.device, dtype) for k, v in params.items()},
        guide_params={k: v.to(loaded.device, dtype) for k, v in guide_params.items()},
        seed=run["seed"], device=str(loaded.device))
    samples = iwae_samples or run.get("iwae_samples", DEFAULT_IWAE_SAMPLES)
    metrics = judge(spec, config, result, loaded, seed=run["seed"], num_samples=samples)
    return {"model": spec.name, "guide": run["guide"], "inference": run["inference"],
            "data": loaded.dataset.name, "n_train": int(loaded.train.shape[0]),
            "n_test": int(loaded.test.shape[0]), **metrics,
            "seconds": saved.get("seconds"), "steps": saved.get("steps"),
            "converged": saved.get("converged"), "device": str(loaded.device),
            "seed": run["seed"], "run_dir": str(run_dir)}


def _model_reference(run: dict, model: str | None, run_dir) -> str:
    """The registry name, or the user's file: a run folder never says which code to run."""
    reference = str(run.get("model_ref", run["model"]))
    name = run["model"]
    from_file = ":" in reference and reference.split(":", 1)[0].endswith(".py")
    if model is None:
        loaded = models().get(name)
        if from_file and loaded is not None and model_reference(loaded) == reference:
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
