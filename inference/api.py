"""The Python face of the command line: ``fit``, ``compare``, ``evaluate``, ``catalogue``.

Each takes the same names as the flags (``data``, ``test_fraction``, ``components``, ...),
loads the data once onto the chosen device, fits, judges the fit with
:func:`inference.evaluate.evaluate_fit` and writes a run directory. Each returns the record
that ``--json`` prints: mean nats per datapoint throughout.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from inference import strategies
from inference.evaluate import evaluate_fit
from inference.figures import MODEL_FIGURES, load_model_figures, plot_curves
from inference.results import FitResult
from inference.runs import load_run, save_run
from inference.svi import ELBOS
from zoo import datasets
from zoo.errors import InputError
from zoo.registry import ModelSpec, get_model, model_reference, models

DTYPES = {"float32": torch.float32, "float64": torch.float64}
INFERENCE = {
    "closed-form": "maximum likelihood in closed form (where the model has one)",
    "em": "expectation-maximization with the model's closed-form E and M steps",
    "svi": "stochastic variational inference with a guide and an ELBO estimator",
}
DEFAULT_IWAE_SAMPLES = 1000


def choose_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device is available here; use --device cpu "
                         "or auto")
    return torch.device(name)


def catalogue() -> dict:
    """What `lvm-zoo list` shows."""
    return {
        "models": {name: {"summary": spec.summary, "inference": list(spec.inference_methods),
                          "guides": list(spec.guides), "default_data": spec.default_data,
                          "exact_log_likelihood": spec.log_marginal is not None,
                          "exact_posterior": spec.posterior is not None, "notes": spec.notes}
                   for name, spec in models().items()},
        "inference": INFERENCE,
        "elbo_estimators": list(ELBOS),
        "datasets": list(datasets.DATASETS),
    }


def load_data(spec: ModelSpec, *, data: str | None = None, data_root=None, download=False,
              test_fraction: float = 0.2, binarize=None, standardize=False, seed: int = 0,
              dtype: str = "float32", device: str = "auto"):
    """``(dataset, x_train, x_test, device)`` with the tensors moved to the device once."""
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype} is not supported; use float32 or float64")
    target = choose_device(device)
    dataset = datasets.load_dataset(data or spec.default_data, root=data_root,
                                    test_fraction=test_fraction, seed=seed, dtype=DTYPES[dtype],
                                    binarize=binarize, download=download, standardize=standardize)
    return dataset, dataset.train.to(target), dataset.test.to(target), target


def fit(spec: ModelSpec | str, *, inference: str | None = None, guide: str | None = None,
        data: str | None = None, data_root=None, download: bool = False,
        test_fraction: float = 0.2, binarize: str | None = None, standardize: bool = False,
        device: str = "auto", dtype: str = "float32", seed: int = 0,
        iwae_samples: int | None = None, out: str | Path | None = None, resume: bool = False,
        progress: bool = False, loaded=None, figures: bool = True, **options) -> dict:
    """Fit one model with one strategy, judge it, write its run directory; returns the record.

    ``options`` holds the model's config fields (``components=3``) and the strategy's options
    (``steps``, ``lr``, ``n_init``, ...). ``loaded`` reuses a ``load_data`` result.
    """
    spec = get_model(spec) if isinstance(spec, str) else spec
    config_names = {f.name for f in dataclasses.fields(spec.config_class)}
    model_options = {k: v for k, v in options.items() if k in config_names}
    fit_options = {k: v for k, v in options.items() if k not in config_names}
    _check_positive({**fit_options, "iwae_samples": iwae_samples})
    dataset, x_train, x_test, target = loaded or load_data(
        spec, data=data, data_root=data_root, download=download, test_fraction=test_fraction,
        binarize=binarize, standardize=standardize, seed=seed, dtype=dtype, device=device)
    config = spec.make_config(dim=dataset.dim, **model_options)
    config.validate(x_train.shape[0])
    inference = inference or spec.inference_methods[0]
    run_dir = Path(out) if out else _default_run_dir(spec, dataset.name, inference, guide, seed)
    if inference == "svi":
        fit_options.update(checkpoint=run_dir / "checkpoint.pt", resume=resume)
        num_data = x_train.shape[0]
        default_batch = spec.svi_defaults.get("batch_size") or 0
        if fit_options.get("batch_size") is None and default_batch > num_data:
            fit_options["batch_size"] = num_data  # a default minibatch larger than small data
        if fit_options.get("steps") is None and hasattr(config, "steps_for"):  # --epochs
            fit_options["steps"] = config.steps_for(
                num_data, fit_options.get("batch_size") or spec.svi_defaults.get("batch_size"))
        if dataset.binarize == "dynamic":
            fit_options["binarize"] = "dynamic"
    torch.manual_seed(seed)
    result = strategies.fit(spec, config, x_train, inference=inference, guide=guide, seed=seed,
                            progress=progress, **fit_options)
    metrics = evaluate_fit(spec, config, result, x_train, x_test, seed=seed,
                           num_samples=iwae_samples or DEFAULT_IWAE_SAMPLES)
    record = {
        "model": spec.name, "guide": result.guide, "inference": result.inference,
        "data": dataset.name, "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]),
        **metrics, "seconds": result.seconds, "steps": result.steps,
        "converged": result.converged, "device": result.device, "seed": seed,
        "run_dir": str(run_dir),
    }
    run = {
        "model": spec.name, "model_ref": model_reference(spec),
        "config": dataclasses.asdict(config), "inference": inference,
        "guide": result.guide, "seed": seed, "info": result.info,
        "data": {"name": dataset.name, "root": None if data_root is None else str(data_root),
                 "test_fraction": test_fraction, "binarize": binarize,
                 "standardize": standardize, "dtype": dtype, "source": dataset.source},
        "options": {k: v for k, v in fit_options.items() if k not in ("checkpoint", "resume")},
        "iwae_samples": iwae_samples or DEFAULT_IWAE_SAMPLES,
    }
    save_run(run_dir, run, result, record)
    if figures:
        _figures(spec, dataset, config, result, run_dir)
    return record


def evaluate(run_dir: str | Path, *, data: str | None = None, data_root=None,
             device: str = "auto", iwae_samples: int | None = None) -> dict:
    """Recompute a run's metrics from its files alone (parameters load without executing
    code); ``data`` evaluates on another dataset of the same dimension."""
    run, params, guide_params, saved = load_run(run_dir)
    spec = get_model(run.get("model_ref", run["model"]))
    source = run["data"]
    dataset, x_train, x_test, target = load_data(
        spec, data=data or source["name"], data_root=data_root or source["root"],
        test_fraction=source["test_fraction"], binarize=source["binarize"],
        standardize=source["standardize"], seed=run["seed"], dtype=source["dtype"],
        device=device)
    config = spec.config_class(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in run["config"].items()})
    if dataset.dim != config.dim:
        raise InputError(f"dataset '{dataset.name}' has dimension {dataset.dim} but the run was "
                         f"fitted on dimension {config.dim}; evaluate on data of that dimension")
    dtype = DTYPES[source["dtype"]]
    result = FitResult(
        model=spec.name, inference=run["inference"], guide=run["guide"],
        params={k: v.to(target, dtype) for k, v in params.items()},
        guide_params={k: v.to(target, dtype) for k, v in guide_params.items()},
        seed=run["seed"], device=str(target))
    metrics = evaluate_fit(spec, config, result, x_train, x_test, seed=run["seed"],
                           num_samples=iwae_samples or run.get("iwae_samples",
                                                               DEFAULT_IWAE_SAMPLES))
    return {"model": spec.name, "guide": run["guide"], "inference": run["inference"],
            "data": dataset.name, "n_train": int(x_train.shape[0]),
            "n_test": int(x_test.shape[0]), **metrics,
            "seconds": saved.get("seconds"), "steps": saved.get("steps"),
            "converged": saved.get("converged"), "device": str(target), "seed": run["seed"],
            "run_dir": str(run_dir)}


def strategy_grid(spec: ModelSpec, elbos=None, **data) -> list:
    """Every applicable strategy (:class:`inference.compare.Strategy`): the closed form and EM,
    then SVI per guide under its default ELBO estimator and each of ``elbos`` (and
    ``TraceEnum_ELBO`` for discrete latents, given ``config=`` and ``x=``)."""
    from inference.compare import strategy_grid as grid  # compare builds on fit

    return grid(spec, elbos, **data)


def compare(spec: ModelSpec | str, *, seeds: int = 1, out: str | Path | None = None,
            **options) -> list[dict]:
    """Run every applicable strategy on one train/test split, ``seeds`` seeds each; write the
    comparison folder (tables, figures, InferenceData, report.html) and one run folder per
    fit; returns one record per fit. See :func:`inference.compare.compare` for the options."""
    from inference.compare import compare as run_comparison  # compare builds on fit

    return run_comparison(spec, seeds=seeds, out=out, **options)


def _figures(spec: ModelSpec, dataset, config, result: FitResult, run_dir: Path) -> None:
    load_model_figures()
    key = "elbo" if "elbo" in result.history else "log_likelihood"
    if result.history.get(key):
        label = "ELBO per step" if key == "elbo" else "log p(x) per iteration"
        plot_curves({f"{result.inference} {result.guide or ''}".strip(): result.history[key]},
                    run_dir / "curves.png", title=f"{spec.name} on {dataset.name}: {label}")
    if spec.name in MODEL_FIGURES:
        MODEL_FIGURES[spec.name](dataset, config, result, run_dir)


def _default_run_dir(spec, data_name, inference, guide, seed) -> Path:
    name = "-".join(p for p in (spec.name, inference, guide, Path(data_name).stem,
                                f"seed{seed}") if p)
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_positive(options: dict) -> None:
    for key in ("steps", "batch_size", "num_particles", "restarts", "n_init", "max_iter",
                "iwae_samples"):
        value = options.get(key)
        if value is not None and value < 1:
            flag = "--" + key.replace("_", "-")
            raise InputError(f"{flag} {value} must be a positive integer")
    for key in ("lr", "tol"):
        value = options.get(key)
        if value is not None and not value > 0:
            raise InputError(f"--{key} {value} must be positive")
