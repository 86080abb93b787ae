"""The checks of a model and its guides on a few rows, before any training: what ``lvm-zoo
check`` runs in full, and what every fit with a guide runs first (:func:`preflight`), so that a
model or guide that ``check`` passes does not break a fit or its yardstick, and one that would
is refused in one line before any work.

:func:`check_model` runs the model and each guide once under Pyro's validation, in a param
store and random stream of their own (the caller's state is left as it was), and returns each
:class:`Problem` (site, what, fix). ``thorough=False`` keeps the checks that a fit and the
yardstick need: the model and the guide run, their log-densities, batch dimensions that no
plate accounts for, an event dimension that swallows the data plate, a guide site the model
lacks or observes, a guide site whose shape, event dimensions or plates differ from the
model's, and the model replaying the guide's draws. ``lvm-zoo check`` adds the device audit,
the local / global declarations, subsampling, enumeration, parameter constraints and one ELBO
(:mod:`inference.check`).

The package, in the order it is built (each module imports only those above it): ``report``
(:class:`Problem`, :class:`CheckReport`), ``devices`` (the device audit), ``tracing`` (one run
under validation; a failure as a Problem naming the site), ``model_checks`` and
``guide_checks`` (the checks, by what they look at), ``checker`` (runs them), and this module.
"""

from __future__ import annotations

import warnings

import pyro
import torch

from inference.data import too_large
from inference.preflight.checker import _Checker
from inference.preflight.report import CheckReport, Problem
from zoo.errors import InputError
from zoo.registry import ModelSpec, model_reference
from zoo.seeding import own_random_stream

__all__ = ["PREFLIGHT_ROWS", "CheckReport", "Problem", "check_model", "preflight"]

PREFLIGHT_ROWS = 64  # rows of the training data the checks run on


def check_model(spec: ModelSpec, config, x: torch.Tensor, *,
                guides: tuple[str, ...] | None = None, seed: int = 0,
                thorough: bool = True) -> list[Problem]:
    """Every :class:`Problem` of ``spec``'s model and ``guides`` on ``x : (N, D)``, each once
    (``thorough=False``: those that break a fit or its yardstick)."""
    guides = tuple(spec.guides) if guides is None else guides
    found: list[Problem] = []
    with own_random_stream(seed, x.device), pyro.validation_enabled(True), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each finding becomes a Problem, not a warning
        _Checker(spec, config, x, found, thorough=thorough).run(guides)
    unique, seen = [], set()
    for problem in found:
        key = (problem.kind, problem.site, problem.what, problem.guide)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique


def preflight(spec: ModelSpec, config, x: torch.Tensor, guide: str | None, *,
              seed: int = 0) -> None:
    """Before a fit with ``guide`` trains (``None``: the model alone, as a comparison does
    before it builds its grid): the model and the guide run on the first
    :data:`PREFLIGHT_ROWS` rows of ``x`` and fit each other (:func:`check_model`,
    ``thorough=False``); the first problem is an :class:`InputError`, one line naming the
    site and the fix."""
    problems = check_model(spec, config, x[:PREFLIGHT_ROWS], seed=seed, thorough=False,
                           guides=() if guide is None else (guide,))
    large = too_large(x[:PREFLIGHT_ROWS])
    if problems and large is not None:  # the data, not the model: say what to do with them
        raise InputError(f"model '{spec.name}' cannot be fitted on these data: {large}")
    if problems:
        more = f" ({len(problems) - 1} more)" if len(problems) > 1 else ""
        which = "" if guide is None else f" with guide {guide}"
        raise InputError(f"model '{spec.name}'{which} cannot be fitted{more}: "
                         f"{problems[0].line()}; `lvm-zoo check {model_reference(spec)}` "
                         "lists every problem")
