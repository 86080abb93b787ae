"""One fit, in memory: choose the strategy, fit, judge; saving is a separate step.

:func:`fit` returns a :class:`Fitted` (the spec, config, data, the strategy's options, the
:class:`~inference.results.FitResult` and the yardstick's metrics) and writes nothing;
:func:`save` writes its run directory; :func:`evaluate_run` recomputes a saved run's metrics
from its files alone. The command line, the Python API and the comparison all fit through here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inference import posterior_export as export
from inference import strategies
from inference.catalog import get_model
from inference.data import DTYPES, DataRequest, LoadedData, load
from inference.evaluate import evaluate_fit
from inference.figures import MODEL_FIGURES, load_model_figures, plot_curves
from inference.results import FitResult
from inference.runs import check_writable, fresh_folder, load_run, save_run
from inference.strategies import FitContext, Strategy
from zoo import registry
from zoo.dglvm import bits_per_dim
from zoo.errors import InputError
from zoo.registry import ModelSpec, model_reference

DEFAULT_IWAE_SAMPLES = 1000


@dataclass
class Fitted:
    """A fitted model and its judgement, in memory (nothing written yet)."""

    spec: ModelSpec
    config: object
    data: LoadedData
    strategy: Strategy
    options: object  # the strategy's Options
    result: FitResult
    metrics: dict
    seed: int = 0
    iwae_samples: int = DEFAULT_IWAE_SAMPLES
    extra: dict = field(default_factory=dict)  # more record fields (the comparison's)
    run_dir: Path | None = None  # set by :func:`save`
    nuts_draws: object = None  # NUTS reference draws (:func:`nuts_check`), saved by :func:`save`

    @property
    def record(self) -> dict:
        """The JSON record (``lvm-zoo fit --json``): mean nats per datapoint throughout."""
        result, data = self.result, self.data
        return {"model": self.spec.name, "guide": result.guide, "inference": result.inference,
                "data": data.dataset.name, "n_train": int(data.train.shape[0]),
                "n_test": int(data.test.shape[0]), **self.metrics, "seconds": result.seconds,
                "steps": result.steps, "converged": result.converged, "device": result.device,
                "world_size": result.info.get("world_size", 1),
                "backend": result.info.get("backend"), "chunk_rows": self.data.chunk_rows,
                "seed": self.seed, **self.extra,
                "run_dir": None if self.run_dir is None else str(self.run_dir)}

    def run_record(self) -> dict:
        """What ``run.json`` holds: enough to find the model, the data and the options again."""
        return {"model": self.spec.name, "model_ref": model_reference(self.spec),
                "config": dataclasses.asdict(self.config), "inference": self.strategy.name,
                "guide": self.result.guide, "seed": self.seed, "info": self.result.info,
                "data": {**self.data.request.to_dict(), "dataset": self.data.dataset.name,
                         "source": self.data.dataset.source},
                "options": {k: v for k, v in vars(self.options).items() if v is not None},
                "iwae_samples": self.iwae_samples}


def split_options(spec: ModelSpec, options: dict) -> tuple[dict, dict]:
    """``options`` -> (the model's config fields, the rest)."""
    names = {f.name for f in dataclasses.fields(spec.config_class)}
    return ({k: v for k, v in options.items() if k in names},
            {k: v for k, v in options.items() if k not in names})


def make_config(spec: ModelSpec, loaded: LoadedData, model_options: dict):
    """The model's config for these data: ``model_options`` (``None`` values take the
    default), D from the data, validated against the number of training rows."""
    bin_width = loaded.dataset.bin_width
    if bin_width is not None:
        model_options = _on_dequantized(spec, bin_width, model_options)
    config = spec.make_config(dim=loaded.dataset.dim, **model_options)
    if bin_width is not None and getattr(config, "likelihood", None) == "bernoulli":
        raise InputError("--likelihood bernoulli is not a density of dequantized pixels (a "
                         "Bernoulli is a distribution of 0/1 values): use --binarize instead "
                         "of --dequantize, or --likelihood gaussian")
    config.validate(loaded.train.shape[0])
    return config


def _on_dequantized(spec: ModelSpec, bin_width: float, model_options: dict) -> dict:
    """The defaults that fit dequantized data. Here, the one place that knows both the config
    and the data: a config with a field named ``min_scale`` (the deep model's smallest learned
    σ, in data units, 0.01 by default) gets the spread of one bin, bin_width / √12 (the
    standard deviation of U[0, bin_width): 1/(256·√12) ≈ 0.00113 for 8-bit pixels), unless
    the user set it. A σ below it would model the added noise, not the pixels."""
    names = {f.name for f in dataclasses.fields(spec.config_class)}
    if "min_scale" in names and model_options.get("min_scale") is None:
        return {**model_options, "min_scale": bin_width / math.sqrt(12)}
    return model_options


# the log-densities (mean nats per datapoint) of the yardstick, and their bits per dimension
BITS_PER_DIM = {"train_log_likelihood": "train_bits_per_dim",
                "test_log_likelihood": "test_bits_per_dim", "elbo": "elbo_bits_per_dim"}


def judge(spec: ModelSpec, config, result: FitResult, loaded: LoadedData, *, seed: int,
          num_samples: int) -> dict:
    """The yardstick's metrics (:func:`~inference.evaluate.evaluate_fit`) of a fit on
    ``loaded``, with ``bin_width`` and, on dequantized data, bits per dimension beside every
    log-density: −(log p + D log bin_width) / (D log 2), the bin probability's −log₂ per
    value (Theis et al., 2016). :func:`fit` and :func:`evaluate_run` both judge here."""
    metrics = evaluate_fit(spec, config, result, loaded.train, loaded.test, seed=seed,
                           num_samples=num_samples, device=loaded.device)
    bin_width = loaded.dataset.bin_width
    metrics["bin_width"] = bin_width
    if bin_width is not None:
        dim = loaded.dataset.dim
        metrics.update({bits: None if metrics.get(nats) is None else
                        float(bits_per_dim(metrics[nats], dim, bin_width))
                        for nats, bits in BITS_PER_DIM.items()})
    return metrics


def prepare(spec: ModelSpec | str, *, inference: str | None = None, guide: str | None = None,
            **options) -> tuple[ModelSpec, Strategy, object, dict]:
    """Everything about a fit that can be checked before data are loaded: the spec, the
    strategy, its validated options, and the model's own options."""
    spec = get_model(spec)
    if inference is None and guide is not None:  # a guide asks for a strategy that takes one
        inference = next((name for name in strategies.applicable(spec)
                          if strategies.strategies()[name].uses_guide), None)
    strategy = strategies.get(inference, spec)
    if guide is not None and not strategy.uses_guide:
        raise InputError(f"--guide applies to strategies that take a guide, not "
                         f"--inference {strategy.name}")
    if guide is not None and guide not in spec.guides:
        raise InputError(f"model '{spec.name}' has no guide '{guide}'; choose one of: "
                         + ", ".join(spec.guides))
    model_options, fit_options = split_options(spec, options)
    owners = strategies.option_owners()
    unknown = [k for k, v in fit_options.items() if v is not None and k not in owners]
    if unknown:  # neither the model nor any strategy takes it: the closest name of either
        known = set(owners) | {f.name for f in dataclasses.fields(spec.config_class)
                               if f.name != "dim" and f.metadata.get("cli", True)}
        raise InputError(f"{strategies.flag(unknown[0])} does not apply to --inference "
                         f"{strategy.name}; neither model '{spec.name}' nor any strategy takes "
                         f"it{strategies.closest(unknown[0], known)}")
    chosen = strategies.make_options(strategy.Options, fit_options,
                                     owner=f"--inference {strategy.name}")
    return spec, strategy, chosen, model_options


def fit(spec: ModelSpec | str, *, inference: str | None = None, guide: str | None = None,
        data: DataRequest | str | None = None, seed: int = 0,
        iwae_samples: int | None = None, progress: bool = False,
        checkpoint: str | Path | None = None, resume: bool = False,
        loaded: LoadedData | None = None, **options) -> Fitted:
    """Fit one model with one strategy and judge it, in memory.

    ``options`` are the model's config fields (``components=3``) and the strategy's options
    (``steps``, ``lr``, ``n_init``, ...); a name neither takes is an error. ``data`` is a
    :class:`DataRequest` or a dataset name (default: the model's); ``loaded`` reuses data
    already loaded. ``checkpoint`` is where a long SVI fit saves its state.
    """
    spec, strategy, chosen, model_options = prepare(spec, inference=inference, guide=guide,
                                                    **options)
    if resume and (checkpoint is None or not Path(checkpoint).is_file()):
        raise InputError(f"--resume: there is no checkpoint at {checkpoint}; fit without "
                         "--resume, or give the --out folder of the run to continue")
    if iwae_samples is not None and (not isinstance(iwae_samples, int) or iwae_samples < 1):
        raise InputError(f"--iwae-samples {iwae_samples} must be a positive integer")
    loaded = loaded or load(DataRequest.coerce(data, seed=seed) if not isinstance(
        data, DataRequest) else data, spec)
    config = make_config(spec, loaded, model_options)
    if loaded.streamed and strategy.uses_guide and loaded.device.type != "cpu":
        raise InputError(f"--inference {strategy.name} draws its minibatches from the mapped "
                         "file on the CPU; give --device cpu for streamed rows, or load them "
                         "in memory (leave out --chunk-rows)")
    context = FitContext(seed=seed, progress=progress,
                         checkpoint=None if checkpoint is None else Path(checkpoint),
                         resume=resume, binarize=loaded.dataset.binarize,
                         chunk_rows=loaded.chunk_rows,
                         device=str(loaded.device) if loaded.streamed else None)
    torch.manual_seed(seed)
    result = strategy.fit(spec, config, loaded.train, chosen, guide=guide, context=context)
    samples = iwae_samples or DEFAULT_IWAE_SAMPLES
    metrics = judge(spec, config, result, loaded, seed=seed, num_samples=samples)
    return Fitted(spec, config, loaded, strategy, chosen, result, metrics, seed, samples)


def default_run_dir(model: str, inference: str, guide: str | None, data: str,
                    seed: int) -> Path:
    """``runs/<model>-<strategy>-<guide>-<data>-seed<S>-<time>``."""
    name = "-".join(p for p in (model, inference, guide, Path(data).stem, f"seed{seed}") if p)
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def global_posterior(fitted: Fitted, num_draws: int = export.DRAWS):
    """ArviZ InferenceData of the fit's posterior over the model's global latent sites (and a
    few training rows' local ones), or ``None`` for a model without global latents or a fit
    without a guide. ``export.summary(idata)`` gives mean, sd and HDI per site."""
    spec, result = fitted.spec, fitted.result
    if not spec.global_sites or result.guide is None or fitted.data.streamed:
        return None
    x = fitted.data.train
    draws = export.draw_posterior(spec, fitted.config, result, x,
                                  rows=export.chosen_rows(x.shape[0], seed=fitted.seed),
                                  label=f"{result.inference} {result.guide}",
                                  num_draws=num_draws, seed=fitted.seed)
    if draws is None:
        return None
    return export.to_inference_data(draws, history=result.history,
                                    attrs={"model": spec.name, "guide": result.guide,
                                           "seed": fitted.seed})


def check_nuts_reference(spec: ModelSpec) -> None:
    """``fit --reference nuts`` needs global latents; say so before any work."""
    if not spec.global_sites:
        raise InputError(f"--reference nuts on fit checks a model's global latents, and "
                         f"'{spec.name}' has none; use `lvm-zoo compare {spec.name} "
                         "--reference nuts` for the local latents of chosen rows")


def nuts_check(fitted: Fitted, *, num_samples: int = 400, warmup_steps: int = 300,
               num_chains: int = 2) -> dict:
    """NUTS draws of the global latents of a fitted Bayesian model (every training row, the
    model's parameters held at the fit's), beside the fit's own posterior: per site the NUTS
    mean and sd, the fit's mean, and R-hat / bulk ESS over the chains. Written into the run
    folder as ``posterior-nuts.nc`` by :func:`save` when asked for (``fitted.extra``)."""
    spec = fitted.spec
    check_nuts_reference(spec)
    x = fitted.data.train
    reference = export.nuts_reference(
        spec, fitted.config, fitted.result, x, rows=export.chosen_rows(x.shape[0]),
        num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains,
        seed=fitted.seed, label="nuts")
    ours = global_posterior(fitted)
    sites = []
    for name, values in reference.globals.items():
        draws = values.double()
        own = (torch.as_tensor(ours.posterior[name].values).double().reshape(
            -1, *draws.shape[1:]).mean(0) if ours is not None and name in ours.posterior
            else None)
        sites.append({"site": name, "nuts_mean": draws.mean(0).tolist(),
                      "nuts_sd": draws.std(0).tolist(),
                      "fit_mean": None if own is None else own.tolist()})
    fitted.extra["nuts_reference"] = {"sites": sites, **reference.diagnostics}
    fitted.nuts_draws = reference
    return fitted.extra["nuts_reference"]


def save(fitted: Fitted, out: str | Path | None = None, *, figures: bool = True,
         posterior: bool = True) -> Path:
    """Write ``fitted``'s run directory (``out``, default ``runs/<model>-<strategy>-...``):
    run.json, metrics.json, params.pt, history.json and, with ``figures``, its figures; with
    ``posterior``, a model with global latents also gets ``posterior.nc`` (ArviZ)."""
    run_dir = Path(out) if out is not None else fresh_folder(default_run_dir(
        fitted.spec.name, fitted.result.inference, fitted.result.guide,
        fitted.data.dataset.name, fitted.seed))  # never an earlier run's folder
    check_writable(run_dir)
    fitted.run_dir = run_dir
    nuts = fitted.nuts_draws
    if nuts is not None:
        export.save_inference_data(export.to_inference_data(nuts, attrs={
            "model": fitted.spec.name, "reference": "nuts", **nuts.diagnostics}),
            run_dir / export.NUTS_FILE)
    idata = global_posterior(fitted) if posterior else None
    if idata is not None:
        fitted.extra["posterior_file"] = str(export.save_inference_data(
            idata, run_dir / export.POSTERIOR_FILE))
        fitted.extra["posterior_summary"] = export.summary(
            idata, var_names=list(fitted.spec.global_sites)).reset_index(
            names="site").to_dict("records")
    save_run(run_dir, fitted.run_record(), fitted.result, fitted.record)
    if figures:
        _figures(fitted, run_dir)
    return run_dir


def _figures(fitted: Fitted, run_dir: Path) -> None:
    load_model_figures()
    spec, result = fitted.spec, fitted.result
    key = "elbo" if "elbo" in result.history else "log_likelihood"
    if len(result.history.get(key) or ()) > 1:
        label = "ELBO per step" if key == "elbo" else "log p(x) per iteration"
        plot_curves({f"{result.inference} {result.guide or ''}".strip(): result.history[key]},
                    run_dir / "curves.png",
                    title=f"{spec.name} on {fitted.data.dataset.name}: {label}")
    if spec.name in MODEL_FIGURES and not fitted.data.streamed:  # they plot every row
        MODEL_FIGURES[spec.name](fitted.data.dataset, fitted.config, result, run_dir)


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
        loaded = registry.models().get(name)
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
