"""What a fit asks for, settled before any data are loaded or work is done.

:func:`prepare` checks the model, the strategy, the guide and their options;
:func:`data_request` makes the data request (the model's default held-out share,
:func:`default_test_fraction`); :func:`make_config` the model's config once the data are
loaded; :func:`default_run_dir` names a new run folder. :func:`inference.fitting.plan` settles
a fit with them (and re-exports them), so the command line, the Python API, ``compare`` and
``check`` ask the same questions in the same words.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from inference import strategies
from inference.catalog import get_model
from inference.data import DataRequest, LoadedData
from inference.strategies import Strategy
from zoo.errors import InputError
from zoo.registry import ModelSpec

TEST_FRACTION = 0.2  # held-out share by default; 0 for models with global latents


def split_options(spec: ModelSpec, options: dict) -> tuple[dict, dict]:
    """``options`` -> (the model's config fields, the rest)."""
    names = {f.name for f in dataclasses.fields(spec.config_class)}
    return ({k: v for k, v in options.items() if k in names},
            {k: v for k, v in options.items() if k not in names})


def grid_option_names() -> set[str]:
    """The strategies' grid options (SVI's ``elbos``): flags of ``compare`` only."""
    return {f for s in strategies.strategies().values() if s.GridOptions is not None
            for f in s.GridOptions.__dataclass_fields__}


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


def prepare(spec: ModelSpec | str, *, inference: str | None = None, guide: str | None = None,
            **options) -> tuple[ModelSpec, Strategy, object, dict]:
    """The spec, the strategy, its validated options and the model's own options: what can
    be checked of a fit before data are loaded."""
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
    # the config's fields checked as the strategy's options are: from what they declare
    model_options = {**model_options, **strategies.checked_fields(spec.config_class,
                                                                  model_options)}
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


def default_test_fraction(spec: ModelSpec) -> float:
    """A Bayesian model (global latents) gives every row to the posterior by default; other
    models hold out :data:`TEST_FRACTION` of the rows for the held-out log-likelihood."""
    return 0.0 if spec.global_sites else TEST_FRACTION


# the keywords of a fit that ask for its data: DataRequest's fields (but the dataset and seed)
DATA_KEYWORDS = frozenset(f.name for f in dataclasses.fields(DataRequest)) - {"name", "seed"}


def data_request(spec: ModelSpec, data: DataRequest | str | None, seed: int,
                 **keywords) -> DataRequest:
    """The request for ``data``: a :class:`DataRequest` as given, else one for the dataset
    name (``None``: the model's default) with the model's default held-out share; data
    ``keywords`` (``standardize=True``, ``binarize="static"``, ...: :data:`DATA_KEYWORDS`,
    ``None`` for the default) change either, checked as the data flags are."""
    given = strategies.checked_fields(DataRequest, {
        k: str(v) if isinstance(v, Path) else v for k, v in keywords.items()})
    if isinstance(data, DataRequest):
        return dataclasses.replace(data, **given) if given else data
    return DataRequest.coerce(data, seed=seed, **{
        "test_fraction": default_test_fraction(spec), **given})


def default_run_dir(model: str, inference: str, guide: str | None, data: str,
                    seed: int) -> Path:
    """``runs/<model>-<strategy>-<guide>-<data>-seed<S>-<time>``."""
    name = "-".join(p for p in (model, inference, guide, Path(data).stem, f"seed{seed}") if p)
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
