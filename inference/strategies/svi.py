"""Stochastic variational inference: a guide, one of Pyro's ELBO estimators, Adam.

The loop itself is :func:`inference.svi.fit_svi`; this module chooses its settings (the
model's ``svi_defaults``, the guide's ELBO estimator, the number of steps from ``--epochs``),
runs ``restarts`` data-based starts keeping the best (each with a checkpoint of its own, so
that ``--resume`` reuses finished restarts and continues the interrupted one), and says which
grid cells SVI fills in a comparison: one per guide under its default estimator, one per extra
estimator of ``--elbos``, and ``TraceEnum_ELBO`` for every guide of a model with a discrete
local latent.

The strategy builds the guide (:func:`build_guide`): it tells a guide that takes an
``enumerate`` argument whether the ELBO it picked enumerates, and runs the guide's explicit
``setup(x)`` step (e.g. the GMM encoder's warm start) before SVI starts; calling a guide never
trains it."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro import poutine

from inference import distributed
from inference.results import FitResult
from inference.strategies import DEFAULT_CONTEXT, Cell, FitContext, Strategy, register
from inference.svi import ELBOS, fit_svi
from inference.svi_schedule import SCHEDULES
from zoo.errors import InputError
from zoo.registry import DATA_PLATE, GUIDES

ESTIMATORS = tuple(ELBOS)


@dataclass(frozen=True)
class SVIOptions:
    steps: int | None = field(default=None, metadata={
        "help": "SVI steps at most (default: the model's); the stopping rule may end sooner",
        "min": 1})
    lr: float | None = field(default=None, metadata={
        "help": "SVI learning rate (Adam; default: the model's)", "positive": True})
    schedule: str | None = field(default=None, metadata={
        "help": "SVI learning-rate schedule: decay-average (default: the rate halves once the "
                "ELBO is stationary and the iterates that follow are averaged, which the fit "
                "returns) or constant (one rate, the last iterate, the stopping rule ends it)",
        "choices": SCHEDULES})
    batch_size: int | None = field(default=None, metadata={
        "help": "SVI minibatch rows (default: the model's, else all)", "min": 1})
    elbo: str | None = field(default=None, metadata={
        "help": "ELBO estimator (default: the guide's)", "choices": ESTIMATORS})
    num_particles: int | None = field(default=None, metadata={
        "help": "ELBO particles per step (default 1)", "min": 1})
    jit: bool | None = field(default=None, metadata={
        "help": "JIT-compile the ELBO estimator (JitTrace_ELBO for Trace_ELBO; default: the "
                "model's choice, on for dglvm); a model that does not trace falls back to the "
                "plain estimator"})
    restarts: int | None = field(default=None, metadata={
        "help": "SVI restarts from data-based inits; the best final ELBO is kept (default 1)",
        "min": 1})
    stop_tol: float | None = field(default=None, metadata={
        "help": "SVI stops when the smoothed ELBO gains less than this many nats per "
                "datapoint over a window, three windows in a row, with confidence (the gain "
                "plus two standard errors of the steps' noise; default 1e-4; 0: never)",
        "min": 0.0})
    stop_window: int | None = field(default=None, metadata={
        "help": "steps per window of the stopping rule (default 100)", "min": 2})
    validation: float | None = field(default=None, metadata={
        "help": "share of the training rows SVI holds out: their ELBO chooses the parameters "
                "kept and stops the fit early (default: the model's; 0.1 for dglvm, else 0)",
        "min": 0.0})
    checkpoint_every: int | None = field(default=None, metadata={
        "help": "SVI checkpoint every N steps (default: every 60 s of training)", "min": 1})


@dataclass(frozen=True)
class SVIGridOptions:
    elbos: tuple[str, ...] | None = field(default=None, metadata={
        "help": "comma-separated ELBO estimators to run with every guide, beside its default "
                "one, e.g. Trace_ELBO,TraceMeanField_ELBO", "choices": ESTIMATORS})


class StochasticVariationalInference(Strategy):
    name = "svi"
    summary = "stochastic variational inference with a guide and an ELBO estimator"
    Options = SVIOptions
    GridOptions = SVIGridOptions
    requires = (GUIDES,)
    uses_guide = True
    checkpoints = True

    def fit(self, spec, config, x, options: SVIOptions, *, guide=None,
            context: FitContext = DEFAULT_CONTEXT) -> FitResult:
        """The best of ``restarts`` fits, since mixtures collapse from bad starts. A fit's score
        is the mean ELBO of its last tenth of steps, or of its best window when it kept that
        window's parameters (see :func:`~inference.svi.fit_svi`).

        Restart ``r`` checkpoints to :func:`restart_checkpoint` (``context.checkpoint`` itself
        for ``r = 0``). With ``context.resume`` every restart resumes from its own file: a
        finished one is reused as it ended, the interrupted one continues, the ones not yet
        begun start afresh, so that a resumed run ends as the uninterrupted one would have.
        ``seconds`` is the time of all restarts together."""
        guide = guide or spec.default_guide or next(iter(spec.guides))
        if guide not in spec.guides:
            raise InputError(f"model '{spec.name}' has no guide '{guide}'; choose one of: "
                             + ", ".join(spec.guides))
        settings = self.settings(spec, config, x, options, guide)
        if context.chunk_rows is not None and settings.get("validation"):
            settings["validation"] = 0.0  # held-out rows would copy a streamed file whole
        if context.binarize == "dynamic":
            settings["binarize"] = "dynamic"
        restarts = options.restarts or 1
        group = distributed.current()
        if context.checkpoint is not None and not context.resume and (
                group is None or group.is_main):  # rank 0 alone writes checkpoints
            _remove_restart_checkpoints(context.checkpoint)  # an older run's, into this folder
        best, scores, seconds, resumed = None, [], 0.0, []
        for restart in range(restarts):
            run_seed = context.seed + 1000 * restart
            pyro.set_rng_seed(run_seed)  # networks are initialized when model and guide are built
            generator = torch.Generator(device=x.device).manual_seed(run_seed)
            # a streamed file starts from a seeded subsample of one chunk's size
            source = (context.rows(x).sample(context.chunk_rows, generator)
                      if context.chunk_rows is not None else x)
            init = spec.init_params(config, source, generator) if spec.init_params else None
            model = spec.make_model(config, init)
            built = build_guide(spec, guide, model, config, x, settings["elbo"])
            result = fit_svi(model, built, x, seed=run_seed,
                             progress=context.progress, model_name=spec.name, guide_name=guide,
                             checkpoint=restart_checkpoint(context.checkpoint, restart),
                             resume=context.resume, restart=restart if restarts > 1 else None,
                             **settings)
            result.info.update(getattr(built, "start_record", {}))  # where the guide began
            scores.append(_score(result))
            seconds += result.seconds
            resumed.append(result.info.get("resumed_from_step"))
            if best is None or scores[-1] > scores[best[0]]:
                best = (restart, result)
        restart, result = best
        result.seed = context.seed
        result.seconds = seconds
        result.info.update(restarts=restarts, best_restart=restart)
        if restarts > 1:
            result.info.update(restart_elbos=scores, restart_resumed_from_step=resumed)
        return result

    @staticmethod
    def settings(spec, config, x, options: SVIOptions, guide: str) -> dict:
        """``fit_svi``'s keywords: the options given, else the guide's ``svi_defaults`` (a
        class attribute of its factory), else the model's.

        Under a process group of ``W`` ranks ``batch_size`` is per rank (``W`` of them make a
        step's global batch): a default one larger than the data's share, ``N // W``, is cut to
        it, and ``--epochs`` counts passes of global batches."""
        factory = spec.guides[guide]
        factory = getattr(factory, "factory", factory)  # a guide's own, over the model's
        chosen = {**spec.svi_defaults, **getattr(factory, "svi_defaults", {}),
                  **{k: v for k, v in vars(options).items()
                     if v is not None and k != "restarts"}}
        chosen.setdefault("elbo", spec.default_elbo.get(guide, "Trace_ELBO"))
        num_data = x.shape[0]
        group = distributed.current()
        world = group.world_size if group is not None else 1
        # the rows SVI fits: those left after the held-out ones (inference.svi_validation)
        held = 0 if getattr(spec.guides[guide], "per_datapoint", False) else round(
            (chosen.get("validation") or 0.0) * num_data)
        share = max(1, (num_data - held) // world)
        if options.batch_size is None and (chosen.get("batch_size") or 0) > share:
            chosen["batch_size"] = share  # a default minibatch larger than small data
        if options.steps is None and hasattr(config, "steps_for"):  # the model's --epochs
            batch = chosen.get("batch_size")
            chosen["steps"] = config.steps_for(num_data, None if batch is None else
                                               batch * world)
        return chosen

    def cells(self, spec, config, x, grid_options: SVIGridOptions | None) -> list[Cell]:
        extra = list((grid_options.elbos if grid_options else None) or ())
        if config is not None and x is not None and has_discrete_local_latent(spec, config, x):
            extra.append("TraceEnum_ELBO")
        cells = []
        for guide in spec.guides:
            cells.append(Cell(self.name, guide))
            default = spec.default_elbo.get(guide, "Trace_ELBO")
            cells += [Cell(self.name, guide, (("elbo", e),), e)
                      for e in dict.fromkeys(extra) if e != default]
        return cells


ENUMERATING = frozenset({"TraceEnum_ELBO", "JitTraceEnum_ELBO"})


def build_guide(spec, name: str, model, config, x: torch.Tensor, elbo="Trace_ELBO"):
    """The guide ``name`` of ``spec`` for ``model``, ready for SVI on ``x`` under ``elbo``.

    A factory that takes ``enumerate`` is told whether ``elbo`` enumerates (a guide must not
    ask Pyro's handler stack); a guide with a ``setup(x)`` method runs it here, inside a
    param-store scope of its own so that what it reads of the model leaves no parameter
    behind."""
    factory = spec.guides[name]
    factory = getattr(factory, "factory", factory)  # a registry entry: the factory it calls
    options = {}
    if _takes(factory, "enumerate"):
        options["enumerate"] = (elbo if isinstance(elbo, str)
                                else type(elbo).__name__) in ENUMERATING
    guide = factory(model, config, **options)
    setup = getattr(guide, "setup", None)
    if callable(setup):
        with pyro.get_param_store().scope():
            setup(x)
    return guide


def _takes(factory, keyword: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no keywords of ours
        return False
    return keyword in parameters


def restart_checkpoint(checkpoint: Path | None, restart: int) -> Path | None:
    """Where restart ``restart`` saves its state: ``checkpoint`` itself for the first one
    (``checkpoint.pt``), ``checkpoint-restart{r}.pt`` beside it for the others."""
    if checkpoint is None or restart == 0:
        return checkpoint
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}-restart{restart}{checkpoint.suffix}")


def _remove_restart_checkpoints(checkpoint: Path) -> None:
    """Delete the other restarts' checkpoints beside ``checkpoint`` (a new fit's first restart
    overwrites ``checkpoint`` itself), so that a later ``--resume`` never reuses them."""
    checkpoint = Path(checkpoint)
    prefix = f"{checkpoint.stem}-restart"
    if not checkpoint.parent.is_dir():
        return
    for path in checkpoint.parent.glob(f"{prefix}*{checkpoint.suffix}"):
        number = path.name[len(prefix):len(path.name) - len(checkpoint.suffix)]
        if number.isdigit() and path.is_file():
            path.unlink(missing_ok=True)


def _score(result: FitResult) -> float:
    """The mean ELBO of the state a fit returns: its held-out rows' ELBO when it has them,
    its kept best window, else its last tenth."""
    if result.info.get("validation_elbo") is not None:
        return float(result.info["validation_elbo"])
    if result.info.get("kept") == "best":
        return float(result.info["best_window_elbo"])
    history = result.history["elbo"]
    tail = history[-max(1, len(history) // 10):]
    return sum(tail) / len(tail)


def has_discrete_local_latent(spec, config, x: torch.Tensor) -> bool:
    """Whether the model draws a discrete latent inside the data plate (one trace, two rows)."""
    with pyro.get_param_store().scope(), torch.no_grad(), poutine.block():
        trace = poutine.trace(spec.make_model(config)).get_trace(x[:2])
    return any(site["type"] == "sample" and not site["is_observed"]
               and site["fn"].has_enumerate_support
               and any(f.name == DATA_PLATE for f in site["cond_indep_stack"])
               for site in trace.nodes.values())


register(StochasticVariationalInference())
