"""The bench's grid: every (posterior, strategy) cell run once, written once, reused after.

A cell is ``OUT/cells/<posterior>/<strategy>.json``, written atomically when it ends, failed
cells too (with the error line). A rerun into the same folder skips every finished cell whose
file holds the same settings (budget and seed) and runs the others, failed ones included;
``overwrite`` runs them all again. The cells to run go longest expected first
(:func:`schedule`: longest-processing-time-first over the whole grid, each cell's seconds
from :mod:`inference.bench.costs`: its own earlier file in the folder, else the seconds
measured per posterior and strategy, scaled to the budget). With ``jobs > 1`` they run in
spawned processes of one thread each (``OMP_NUM_THREADS=1``), each taking the next cell as it
comes free, and a worker finds its posterior again from the suite's reference
(``module:function`` or ``FILE.py:function``), so nothing but names crosses processes.
"""

from __future__ import annotations

import dataclasses
import heapq
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from inference.bench import costs, metrics
from inference.bench.fits import STRATEGIES, Budget, declared, fit
from inference.runs import write_json
from zoo.errors import InputError

DEFAULT_SUITE = "zoo.posteriordb:suite"
CELLS = "cells"


def load_suite(reference: str = DEFAULT_SUITE) -> dict:
    """The suite ``{name: Posterior}`` that ``reference`` names: ``package.module:function``
    or ``path/to/file.py:function`` (a function of no arguments)."""
    module_name, _, function = reference.rpartition(":")
    if not module_name or not function:
        raise InputError(f"--suite {reference}: give module:function or FILE.py:function")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise InputError(f"--suite {reference}: there is no file {path}")
        name = f"_bench_suite_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it runs
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise InputError(f"--suite {reference}: cannot import {module_name} ({error})"
                             ) from None
    maker = getattr(module, function, None)
    if not callable(maker):
        raise InputError(f"--suite {reference}: {module_name} has no function {function}")
    suite = maker()
    if not isinstance(suite, Mapping) or not suite:
        raise InputError(f"--suite {reference}: {function}() must return a non-empty dict "
                         "{name: Posterior}")
    return dict(suite)


def cell_path(out: Path, posterior: str, strategy: str) -> Path:
    return Path(out) / CELLS / posterior / f"{strategy}.json"


def settings_of(budget: Budget, strategy: str) -> dict:
    """The part of the budget a cell of ``strategy`` depends on (a rerun with another SVI
    step count keeps the NUTS cells)."""
    chosen = dataclasses.asdict(budget)
    nuts = ("nuts_warmup", "nuts_samples", "nuts_chains")
    drop = ("steps", "lr", "draws") if strategy == "nuts" else nuts
    return {k: v for k, v in chosen.items() if k not in drop}


def finished(out: Path, posterior: str, strategy: str, budget: Budget) -> dict | None:
    """The cell's record when it finished with these settings (else None: run it)."""
    try:
        record = json.loads(cell_path(out, posterior, strategy).read_text())
    except (OSError, ValueError):
        return None
    same = record.get("settings") == settings_of(budget, strategy)
    return record if same and record.get("status") == "ok" else None


def written(out: Path, posteriors: Sequence[str], strategies: Sequence[str],
            budget: Budget) -> list[dict]:
    """The cells already written with these settings, finished or failed, in grid order."""
    records = []
    for name in posteriors:
        for strategy in strategies:
            try:
                record = json.loads(cell_path(out, name, strategy).read_text())
            except (OSError, ValueError):
                continue
            if record.get("settings") == settings_of(budget, strategy):
                records.append(record)
    return records


_DECLARED: dict[tuple, object] = {}  # a process's declared specs, by posterior and model


def run_cell(posterior, strategy: str, budget: Budget) -> dict:
    """Fit ``posterior`` with ``strategy`` and measure the draws against its reference: the
    cell's JSON-ready record (``status`` ``"ok"`` or ``"failed"`` with ``error``)."""
    reference = posterior.reference
    record = {"posterior": posterior.name, "strategy": strategy,
              "settings": settings_of(budget, strategy), "parameters": list(reference.names),
              "status": "ok", "error": None}
    start = time.perf_counter()
    try:
        key = (posterior.name, posterior.model)
        spec = _DECLARED.get(key)
        if spec is None:
            spec = _DECLARED[key] = declared(posterior)
        draws = fit(posterior, spec, strategy, budget)
        flat = draws.values.reshape(-1, draws.values.shape[-1])
        if not np.all(np.isfinite(flat)):
            raise FloatingPointError("the fit's draws are not all finite")
        record.update(metrics.moment_errors(flat, reference.mean, reference.sd))
        if reference.draws is not None:
            record.update(metrics.distances(flat, np.asarray(reference.draws), reference.sd,
                                            seed=budget.seed))
        record["pareto_k"] = (None if draws.log_weights is None
                              else metrics.pareto_k(draws.log_weights))
        if strategy == "nuts":
            record["agreement"] = metrics.nuts_agreement(
                draws.values, reference.mean, reference.sd, reference.names,
                thinned=reference.draws)
        record.update(gradient_evaluations=draws.gradient_evaluations,
                      seconds=draws.seconds, draws=int(flat.shape[0]), info=draws.info)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # a failed fit is a result of the bench, said in its cell
        line = (str(error).strip().splitlines() or [""])[0]
        record.update(status="failed", error=f"{type(error).__name__}: {line}",
                      where=traceback.format_exc(limit=-3))
    record["wall_seconds"] = time.perf_counter() - start
    record["reaches"] = record["status"] == "ok" and metrics.reaches(record)
    return record


_SUITES: dict[str, dict] = {}


def _worker_cell(suite: str, name: str, strategy: str, budget: Budget, out: str) -> dict:
    posteriors = _SUITES.get(suite) or _SUITES.setdefault(suite, load_suite(suite))
    record = run_cell(posteriors[name], strategy, budget)
    write_json(cell_path(Path(out), name, strategy), record)
    return record


def _start_worker() -> None:
    torch.set_num_threads(1)


def run_grid(posteriors: Mapping[str, object], strategies: Sequence[str], budget: Budget,
             out: str | Path, *, jobs: int = 1, suite: str = DEFAULT_SUITE,
             overwrite: bool = False,
             progress: Callable[[dict, int, int], None] | None = None) -> list[dict]:
    """Every cell of ``posteriors`` × ``strategies`` (finished ones read back), in the order
    posteriors × strategies. ``suite`` lets a worker process find the posteriors by name."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise InputError(f"--strategies: unknown {', '.join(unknown)}; choose from "
                         + ", ".join(STRATEGIES))
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise InputError(f"--jobs {jobs}: give an integer of at least 1")
    budget.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], dict] = {}
    todo = []
    for name in posteriors:
        for strategy in strategies:
            record = None if overwrite else finished(out, name, strategy, budget)
            if record is None:
                todo.append((name, strategy))
            else:
                done[name, strategy] = record
    todo = [(name, strategy) for name, strategy, _, _ in schedule(todo, budget, out)]
    total = len(todo)
    for count, record in enumerate(_run(posteriors, todo, budget, out, jobs, suite), 1):
        done[record["posterior"], record["strategy"]] = record
        if progress is not None:
            progress(record, count, total)
    return [done[name, strategy] for name in posteriors for strategy in strategies]


def schedule(cells: Sequence[tuple[str, str]], budget: Budget,
             out: str | Path | None = None) -> list[tuple[str, str, float, str]]:
    """The cells to run, longest expected first: ``(posterior, strategy, seconds, source)``
    by descending :func:`inference.bench.costs.estimate` (ties in the given order). The
    workers take cells in this order as they come free, which is longest-processing-time-
    first list scheduling: its makespan is at most 4/3 of the best possible (Graham 1969),
    and the longest cells no longer start last."""
    rows = []
    for index, (name, strategy) in enumerate(cells):
        recorded = None if out is None else cell_path(Path(out), name, strategy)
        seconds, source = costs.estimate(name, strategy, budget, recorded)
        rows.append((-seconds, index, name, strategy, source))
    rows.sort()
    return [(name, strategy, -negative, source)
            for negative, _, name, strategy, source in rows]


def makespan(seconds: Sequence[float], jobs: int) -> float:
    """When the last of the cells ends if ``jobs`` workers take them in the given order as
    each comes free (what :func:`run_grid`'s process pool does), each cell taking its
    ``seconds``."""
    free = [0.0] * jobs
    for duration in seconds:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def _run(posteriors, todo, budget, out: Path, jobs: int, suite: str) -> Iterator[dict]:
    if jobs == 1 or len(todo) <= 1:
        for name, strategy in todo:
            record = run_cell(posteriors[name], strategy, budget)
            write_json(cell_path(out, name, strategy), record)
            yield record
        return
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers, read when torch loads
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                                 mp_context=get_context("spawn"),
                                 initializer=_start_worker) as pool:
            futures = [pool.submit(_worker_cell, suite, name, strategy, budget, str(out))
                       for name, strategy in todo]
            for future in as_completed(futures):
                yield future.result()
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads
