"""One fit: planned once, run once, saved once.

- :func:`plan` checks everything that can be checked before data are loaded or work is done
  (the model, the strategy, the guide, the options, the data request, the run folder) and
  returns a frozen :class:`FitPlan`;
- :func:`run` loads the data, fits, judges and returns a :class:`Fitted` (in memory; with a
  run folder, the training is written before the yardstick runs, so that an evaluation that
  fails never loses it);
- :func:`save` writes a :class:`Fitted`'s run folder and changes nothing else;
- :func:`execute` is the three in a run folder's life (:class:`~inference.run_folder.RunFolder`:
  lock, resume, overwrite, rank 0 under torchrun).

The command line, the Python API, the comparison and ``check`` all plan through here;
:func:`fit` is ``run(plan(...))``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from inference import distributed
from inference.data import DataRequest, LoadedData, load
from inference.decomposition import exact_decomposition
from inference.evaluate import evaluate_fit, settle_iwae_rows
from inference.fit_posterior import (
    NutsCheck,
    check_nuts_reference,
    nuts_check,
    posterior_summary,
    write_posteriors,
)
from inference.fit_posterior import global_posterior as _global_posterior
from inference.fit_request import (
    DATA_KEYWORDS,
    data_request,
    default_run_dir,
    default_test_fraction,
    grid_option_names,
    make_config,
    prepare,
    split_options,
)
from inference.preflight import preflight
from inference.results import FitRecord, FitResult
from inference.run_folder import EvaluationFailed, RunFolder, Target, write_settings
from inference.runs import CHECKPOINT_FILE, fresh_folder, save_run, write_json
from inference.strategies import FitContext, Strategy
from zoo.dglvm import bits_per_dim
from zoo.errors import InputError
from zoo.registry import ModelSpec, model_reference
from zoo.resources import check_importance_samples

DEFAULT_IWAE_SAMPLES = 1000


@dataclass(frozen=True)
class FitPlan:
    """One fit, checked and settled before any data or work: what :func:`run` does."""

    spec: ModelSpec
    strategy: Strategy
    guide: str | None  # the guide (the model's default filled in) for a strategy with one
    options: object  # the strategy's validated Options
    model_options: dict  # the model's config fields given (None: the default)
    data: DataRequest
    seed: int = 0
    iwae_samples: int = DEFAULT_IWAE_SAMPLES
    iwae_rows: int | str | None = None  # rows per split importance-sampled (None: budget)
    folder: RunFolder | None = None  # where the fit is saved (None: in memory)
    checkpoint: Path | None = None  # a fit without a folder may still checkpoint here
    resume: bool = False
    progress: bool = False
    reference: str | None = None  # "nuts": NUTS beside a Bayesian model's global posterior
    nuts_options: tuple = (None, None, None)  # NUTS samples, warm-up, chains (None: default)
    posterior: bool = False  # draw the global latents' posterior (saved as posterior.nc)
    figures: bool = True

    def settings(self) -> dict:
        """What a resumed fit must share with this one (settings.json, run.json)."""
        return {"model": self.spec.name, "inference": self.strategy.name, "guide": self.guide,
                "seed": self.seed, "data": self.data.to_dict(),
                "options": {k: v for k, v in vars(self.options).items() if v is not None}}

    def config_for(self, dim: int) -> dict:
        """The config asked for, on data of dimension ``dim`` (for the resume check)."""
        return dataclasses.asdict(self.spec.make_config(dim=dim, **self.model_options))


@dataclass(frozen=True)
class Fitted:
    """A fitted model and its judgement, in memory (:func:`save` writes it)."""

    plan: FitPlan
    config: object
    data: LoadedData
    result: FitResult
    metrics: dict  # the yardstick's (mean nats per datapoint)
    posterior: object = None  # ArviZ InferenceData of the global latents, when drawn
    nuts: NutsCheck | None = None  # ``reference="nuts"``

    spec = property(lambda self: self.plan.spec)
    strategy = property(lambda self: self.plan.strategy)
    options = property(lambda self: self.plan.options)
    seed = property(lambda self: self.plan.seed)
    iwae_samples = property(lambda self: self.plan.iwae_samples)

    def fit_record(self, **fields) -> FitRecord:
        """The typed record; ``fields`` set more of it (``run_dir``, ``measures``, ...)."""
        result, data = self.result, self.data
        return FitRecord(
            model=self.spec.name, guide=result.guide, inference=result.inference,
            data=data.dataset.name, n_train=int(data.train.shape[0]),
            n_test=int(data.test.shape[0]), metrics=dict(self.metrics), seconds=result.seconds,
            steps=result.steps, converged=result.converged, device=result.device,
            world_size=result.info.get("world_size", 1), backend=result.info.get("backend"),
            chunk_rows=data.chunk_rows, seed=self.seed,
            test_fraction=data.request.test_fraction if self.spec.global_sites else None,
            nuts_reference=None if self.nuts is None else self.nuts.summary,
            posterior_summary=(None if self.posterior is None
                               else posterior_summary(self.spec, self.posterior)), **fields)

    @property
    def record(self) -> dict:
        """The JSON record (``lvm-zoo fit --json``) of the fit in memory."""
        return self.fit_record().to_dict()

    def run_record(self) -> dict:
        """What ``run.json`` holds: enough to find the model, the data and the options again."""
        return {"model": self.spec.name, "model_ref": model_reference(self.spec),
                "config": dataclasses.asdict(self.config), "inference": self.strategy.name,
                "guide": self.result.guide, "seed": self.seed, "info": self.result.info,
                "data": {**self.data.request.to_dict(), "dataset": self.data.dataset.name,
                         "source": self.data.dataset.source},
                "options": {k: v for k, v in vars(self.options).items() if v is not None},
                "iwae_samples": self.iwae_samples, "iwae_rows": self.plan.iwae_rows}


# the log-densities (mean nats per datapoint) of the yardstick, and their bits per dimension
BITS_PER_DIM = {"train_log_likelihood": "train_bits_per_dim",
                "test_log_likelihood": "test_bits_per_dim", "elbo": "elbo_bits_per_dim"}


def judge(spec: ModelSpec, config, result: FitResult, loaded: LoadedData, *, seed: int,
          num_samples: int, iwae_rows: int | str | None = None, progress: bool = False) -> dict:
    """The yardstick's metrics (:func:`~inference.evaluate.evaluate_fit`) of a fit on
    ``loaded``, with ``bin_width`` and, on dequantized data, bits per dimension beside every
    log-density: −(log p + D log bin_width) / (D log 2), the bin probability's −log₂ per
    value (Theis et al., 2016), and ``yardstick_seconds``, the wall time of the judging.
    :func:`run` and ``evaluate_run`` both judge here."""
    start = time.perf_counter()
    metrics = evaluate_fit(spec, config, result, loaded.train, loaded.test, seed=seed,
                           num_samples=num_samples, device=loaded.device,
                           iwae_rows=iwae_rows, progress=progress)
    metrics["elbo_method"] = None if metrics.get("elbo") is None else "monte-carlo"
    exact = exact_decomposition(spec, config, result, loaded.train)
    if exact is not None:  # the ELBO and gap in closed form (fit and compare say the same)
        metrics.update(elbo=exact["elbo"], gap=exact["log_likelihood"] - exact["elbo"],
                       elbo_method="exact")
    bin_width = loaded.dataset.bin_width
    metrics["bin_width"] = bin_width
    if bin_width is not None:
        dim = loaded.dataset.dim
        metrics.update({bits: None if metrics.get(nats) is None else
                        float(bits_per_dim(metrics[nats], dim, bin_width))
                        for nats, bits in BITS_PER_DIM.items()})
    metrics["yardstick_seconds"] = time.perf_counter() - start
    return metrics




def plan(spec: ModelSpec | str, *, inference: str | None = None, guide: str | None = None,
         data: DataRequest | str | None = None, seed: int = 0, iwae_samples: int | None = None,
         iwae_rows: int | str | None = None, out: str | Path | None = None,
         save: bool = False, overwrite: bool = False,
         resume: bool = False, resume_anyway: bool = False, reference: str | None = None,
         progress: bool = False, figures: bool = True, posterior: bool | None = None,
         checkpoint: str | Path | None = None, nuts_samples: int | None = None,
         nuts_warmup: int | None = None, nuts_chains: int | None = None,
         **options) -> FitPlan:
    """Check a fit before any data or work and settle it (:class:`FitPlan`).

    ``options`` are the model's config fields, the strategy's options and the data keywords
    (:data:`DATA_KEYWORDS`: ``standardize=True``, ...); ``data`` a :class:`DataRequest` or a
    dataset name. ``out`` (or ``save=True``: a new folder under
    ``runs/``) is the run folder: checked writable, an earlier run in it refused unless
    ``overwrite``, continued with ``resume`` (refused when the optimization options differ,
    unless ``resume_anyway``). ``iwae_samples`` (K) and ``iwae_rows`` (rows per split,
    ``"all"``; default a budget of K × rows) size the importance-sampled yardstick
    (:func:`~inference.evaluate.importance_rows`). ``posterior`` (default: when saved) draws
    a Bayesian model's global posterior; ``reference="nuts"`` adds NUTS beside it (``nuts_samples``,
    ``nuts_warmup`` per chain, ``nuts_chains``)."""
    data_keywords = {k: options.pop(k) for k in list(options) if k in DATA_KEYWORDS}
    spec, strategy, chosen, model_options = prepare(spec, inference=inference, guide=guide,
                                                    **options)
    if strategy.uses_guide and guide is None:  # the default guide, picked here once
        guide = spec.default_guide or next(iter(spec.guides), None)
    if iwae_samples is not None:  # a positive integer whose weights fit, even for one row
        check_importance_samples(iwae_samples, 1)
    iwae_rows = settle_iwae_rows(iwae_rows)  # at least 2 rows, or "all"
    if reference not in (None, "nuts"):
        raise InputError(f"--reference {reference} is unknown; choose nuts")
    nuts_options = (nuts_samples, nuts_warmup, nuts_chains)
    if reference == "nuts":
        check_nuts_reference(spec)
        from inference.posterior_export import NutsOptions  # ArviZ only when asked for

        NutsOptions.make(*nuts_options)
    elif any(value is not None for value in nuts_options):
        raise InputError("--nuts-samples, --nuts-warmup and --nuts-chains set the NUTS "
                         "reference; give them with --reference nuts")
    request = data_request(spec, data, seed, **data_keywords)
    settled = FitPlan(spec, strategy, guide, chosen, dict(model_options), request, seed,
                      iwae_samples or DEFAULT_IWAE_SAMPLES, iwae_rows, progress=progress,
                      reference=reference, nuts_options=nuts_options, figures=figures,
                      posterior=(out is not None or save) if posterior is None else posterior)
    if out is None and not save:
        return _without_folder(settled, checkpoint, resume, overwrite)
    path = Path(out) if out is not None else _default_folder(settled)
    folder = RunFolder(path, overwrite=overwrite, resume=resume, resume_anyway=resume_anyway)
    folder.validate(settled.settings(), settled.config_for)
    _check_resume_checkpoint(resume, path / CHECKPOINT_FILE)
    return dataclasses.replace(settled, folder=folder, resume=resume)


def _without_folder(settled: FitPlan, checkpoint, resume: bool, overwrite: bool) -> FitPlan:
    if overwrite:
        raise InputError("overwrite=True replaces the run in a folder: give out=FOLDER too")
    checkpoint = None if checkpoint is None else Path(checkpoint)
    _check_resume_checkpoint(resume, checkpoint)
    return dataclasses.replace(settled, checkpoint=checkpoint, resume=resume)


def _check_resume_checkpoint(resume: bool, checkpoint: Path | None) -> None:
    if resume and (checkpoint is None or not checkpoint.is_file()):
        raise InputError(f"--resume: there is no checkpoint at {checkpoint}; fit without "
                         "--resume, or give the --out folder of the run to continue")


def _default_folder(settled: FitPlan) -> Path:
    """A new time-stamped folder under ``runs/``; under torchrun, rank 0's name."""
    path = fresh_folder(default_run_dir(settled.spec.name, settled.strategy.name,
                                        settled.guide, settled.data.name
                                        or settled.spec.default_data, settled.seed))
    group = distributed.current()
    if group is not None:  # rank 0's time-stamped name, as bytes (nothing is pickled)
        values = {"text": torch.tensor(list(str(path).encode()), dtype=torch.uint8)}
        shared = group.broadcast(values if group.is_main else None)
        path = Path(bytes(shared["text"].tolist()).decode())
    return path


def _fingerprint(plan: FitPlan, loaded: LoadedData) -> dict:
    """What every rank of a fit under torchrun must share: the plan's settings (each option
    by its flag's name), the model's options and the rows (shape, dtype, a hash of some)."""
    settings = plan.settings()
    options = {f"--{k.replace('_', '-')}": v for k, v in
               {**settings.pop("options"), **plan.model_options}.items()}
    return {**settings, **options, "--iwae-samples": plan.iwae_samples,
            "--iwae-rows": plan.iwae_rows,
            "--reference": plan.reference, **distributed.data_fingerprint(loaded.train)}


def run(plan: FitPlan, *, loaded: LoadedData | None = None, config=None,
        target: Target | None = None) -> Fitted:
    """Load the data (or take ``loaded``, and its ``config``), fit, judge: a :class:`Fitted`.
    With a ``target`` (a run folder's, :func:`execute`) the checkpoints go there, and the
    training is written before the yardstick runs."""
    loaded = loaded or load(plan.data, plan.spec)
    distributed.agree(_fingerprint(plan, loaded), distributed.current())  # torchrun: alike
    config = config or make_config(plan.spec, loaded, plan.model_options)
    if plan.spec.log_marginal is None:  # the yardstick's (K, N) log-weights, before training
        check_importance_samples(plan.iwae_samples, max(1, *(int(rows.shape[0]) for rows in (
            loaded.train, loaded.test))))
    if plan.reference == "nuts":  # a model with nothing for NUTS to sample: before training
        from inference.posterior_export import check_nuts_applies

        check_nuts_applies(plan.spec, config, loaded.train)
    if loaded.streamed and plan.strategy.uses_guide and loaded.device.type != "cpu":
        raise InputError(f"--inference {plan.strategy.name} draws its minibatches from the "
                         "mapped file on the CPU; give --device cpu for streamed rows, or "
                         "load them in memory (leave out --chunk-rows)")
    if plan.strategy.uses_guide and plan.guide is not None:  # model and guide fit each other
        preflight(plan.spec, config, loaded.train, plan.guide, seed=plan.seed)
    if target is not None and getattr(plan.strategy, "checkpoints", False):
        write_settings(target, plan.settings(), config)  # what --resume is checked against
    context = FitContext(seed=plan.seed, progress=plan.progress,
                         checkpoint=target.checkpoint if target is not None else plan.checkpoint,
                         resume=plan.resume, binarize=loaded.dataset.binarize,
                         chunk_rows=loaded.chunk_rows,
                         device=str(loaded.device) if loaded.streamed else None)
    torch.manual_seed(plan.seed)
    result = plan.strategy.fit(plan.spec, config, loaded.train, plan.options, guide=plan.guide,
                               context=context)
    trained = Fitted(plan, config, loaded, result, {})
    metrics = _judged(trained, target)
    posterior = nuts = None
    if plan.posterior or plan.reference == "nuts":
        posterior = _global_posterior(plan.spec, config, result, loaded.train, seed=plan.seed,
                                      streamed=loaded.streamed)
    if plan.reference == "nuts":
        samples, warmup, chains = plan.nuts_options
        nuts = nuts_check(plan.spec, config, result, loaded.train, seed=plan.seed,
                          posterior=posterior, num_samples=samples, warmup_steps=warmup,
                          num_chains=chains)
    return Fitted(plan, config, loaded, result, metrics,
                  posterior if plan.posterior else None, nuts)


def _judged(trained: Fitted, target: Target | None) -> dict:
    """The yardstick's metrics; in a run folder the training is written first, and a failed
    evaluation is written down (``evaluation_error``) and raised as
    :class:`EvaluationFailed`."""
    writes = target is not None and target.writes
    if writes:
        with distributed.alone():
            save_run(target.path, trained.run_record(), trained.result, None)
    plan = trained.plan
    try:
        return judge(plan.spec, trained.config, trained.result, trained.data, seed=plan.seed,
                     num_samples=plan.iwae_samples, iwae_rows=plan.iwae_rows,
                     progress=plan.progress)
    except Exception as error:  # noqa: BLE001 -- any failure of the yardstick, said once
        if not writes:
            raise
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        record = trained.fit_record(evaluation_error=reason, run_dir=str(target.final))
        write_json(target.path / "metrics.json", record.to_dict())
        raise EvaluationFailed(target.final, error) from error


def write_run(fitted: Fitted, path: Path, *, final: Path | None = None, figures: bool = True,
              posterior: bool = True, measures: dict | None = None) -> FitRecord:
    """Write ``fitted``'s run folder into ``path`` (the folder ``final`` once moved into
    place): run.json, metrics.json, params.pt, history.json, with ``figures`` its figures,
    with ``posterior`` a Bayesian model's posterior.nc (and posterior-nuts.nc). Returns the
    record written to metrics.json."""
    final = path if final is None else final
    drawn = fitted.posterior
    if posterior and drawn is None and not fitted.plan.posterior:  # an in-memory fit
        drawn = _global_posterior(fitted.spec, fitted.config, fitted.result, fitted.data.train,
                                  seed=fitted.seed, streamed=fitted.data.streamed)
    wrote = write_posteriors(path, fitted.spec, drawn if posterior else None, fitted.nuts)
    record = fitted.fit_record(run_dir=str(final), measures=dict(measures or {}),
                               posterior_file=str(final / "posterior.nc") if wrote else None)
    if drawn is not None and posterior:
        record.posterior_summary = posterior_summary(fitted.spec, drawn)
    save_run(path, fitted.run_record(), fitted.result, record.to_dict())
    if figures:
        _figures(fitted, path)
    return record


def save(fitted: Fitted, out: str | Path | None = None, *, figures: bool = True,
         posterior: bool = True, overwrite: bool = False) -> Path:
    """Write ``fitted``'s run folder (``out``, default a new ``runs/<model>-<strategy>-...``)
    through its :class:`~inference.run_folder.RunFolder`: locked, an earlier run refused
    unless ``overwrite`` (and then kept until the new one is whole). Returns the folder."""
    path = Path(out) if out is not None else fresh_folder(default_run_dir(
        fitted.spec.name, fitted.result.inference, fitted.result.guide,
        fitted.data.dataset.name, fitted.seed))
    folder = RunFolder(path, overwrite=overwrite)
    folder.validate(fitted.plan.settings())
    with folder.open() as target:
        if target.writes:
            with distributed.alone():
                write_run(fitted, target.path, final=target.final, figures=figures,
                          posterior=posterior)
    return path


def execute(plan: FitPlan, *, loaded: LoadedData | None = None,
            config=None) -> tuple[Fitted, FitRecord]:
    """:func:`run` the plan and, with a run folder, :func:`write_run` it there, the folder
    locked the while: the fit and its record (with ``run_dir`` when saved)."""
    if plan.folder is None:
        fitted = run(plan, loaded=loaded, config=config)
        return fitted, fitted.fit_record()
    with plan.folder.open() as target:
        fitted = run(plan, loaded=loaded, config=config, target=target)
        record = fitted.fit_record(run_dir=str(target.final))
        if target.writes:
            with distributed.alone():
                record = write_run(fitted, target.path, final=target.final,
                                   figures=plan.figures, posterior=plan.posterior)
    return fitted, record


def fit(spec: ModelSpec | str, *, loaded: LoadedData | None = None, **arguments) -> Fitted:
    """Fit one model with one strategy and judge it: ``run(plan(spec, **arguments))`` (see
    :func:`plan` for the arguments); ``loaded`` reuses data already loaded. With ``out``
    the run folder is written too."""
    return execute(plan(spec, **arguments), loaded=loaded)[0]


def global_posterior(fitted: Fitted, num_draws: int = 200):
    """ArviZ InferenceData of ``fitted``'s posterior over the global latents (or ``None``)."""
    return _global_posterior(fitted.spec, fitted.config, fitted.result, fitted.data.train,
                             seed=fitted.seed, streamed=fitted.data.streamed,
                             num_draws=num_draws)


def _figures(fitted: Fitted, run_dir: Path) -> None:
    from inference.gc_pause import paused_gc

    with paused_gc():  # matplotlib's import: about 0.1 s less without collections amid it
        from inference.figures import MODEL_FIGURES, draws_curves, load_model_figures, plot_curves

        load_model_figures()
    spec, result = fitted.spec, fitted.result
    key = "elbo" if "elbo" in result.history else "log_likelihood"
    if len(result.history.get(key) or ()) > 1 and not draws_curves(spec.name):
        label = "ELBO per step" if key == "elbo" else "log p(x) per iteration"
        plot_curves({f"{result.inference} {result.guide or ''}".strip(): result.history[key]},
                    run_dir / "curves.png",
                    title=f"{spec.name} on {fitted.data.dataset.name}: {label}")
    if spec.name in MODEL_FIGURES:  # they draw a bounded sample of rows, streamed or not
        MODEL_FIGURES[spec.name](fitted.data.dataset, fitted.config, result, run_dir)


# prepare, data_request, make_config, ... (inference.fit_request) are re-exported from here
__all__ = ["DATA_KEYWORDS", "DEFAULT_IWAE_SAMPLES", "FitPlan", "Fitted", "data_request",
           "default_run_dir", "default_test_fraction", "execute", "fit", "grid_option_names",
           "judge", "make_config", "plan", "prepare", "run", "save", "split_options",
           "write_run"]
