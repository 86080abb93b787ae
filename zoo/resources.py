"""Sizes checked before work: a request whose tensors cannot fit in this machine's memory is
refused with the estimate, the limit and the fix, before anything is allocated (an allocation
that fails half-way is a traceback, or the kernel's OOM killer, not an answer).

- :func:`check_fits`: bytes against :func:`memory_limit` (``--hidden`` of the deep model);
- :func:`check_importance_samples`: the yardstick's ``(K, N)`` log-weights (``--iwae-samples``
  of ``fit`` and ``evaluate``, and ``iwae_samples`` in a run's ``run.json``);
- :func:`check_draws`: ``sample -n`` draws; :func:`check_disk`: a file against the free space;
- :func:`check_count`: a count against a fixed limit (``compare``'s seeds × cells, at most
  :data:`MAX_FITS` fits).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from zoo.errors import InputError

SHARE = 0.8  # of the physical memory one request may ask for


def memory_limit() -> int:
    """Bytes a single request may ask for: ``SHARE`` of the physical memory (``2**40`` where
    the system does not say)."""
    try:
        return int(SHARE * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**40


def human(nbytes: float) -> str:
    """``nbytes`` in the largest binary unit that keeps it above 1."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(nbytes) < 1024 or unit == "EiB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.3g} EiB"


def check_fits(what: str, nbytes: float, fix: str) -> None:
    """Raise :class:`InputError` when ``nbytes`` (the estimate for ``what``) exceeds
    :func:`memory_limit`, saying both and ``fix``."""
    limit = memory_limit()
    if nbytes > limit:
        raise InputError(f"{what}: about {human(nbytes)} of memory needed, more than the "
                         f"{human(limit)} this machine can give one request; {fix}")


MAX_FITS = 10_000  # fits one comparison runs (seeds × cells): more is a batch of comparisons
FLOAT_BYTES = 8  # what an estimate counts per number (float64, or float32 with a temporary)


def check_count(what: str, count: int, limit: int, fix: str) -> None:
    """Raise :class:`InputError` when ``count`` (of ``what``) exceeds ``limit``."""
    if count > limit:
        raise InputError(f"{what}: {count:,}, more than the limit of {limit:,}; {fix}")


def check_importance_samples(samples: int, rows: int, *, where: str = "--iwae-samples",
                             fix: str = "lower it") -> None:
    """The yardstick keeps ``samples`` log-weights for each of ``rows`` rows (a ``(K, N)``
    tensor): refuse a ``samples`` that is not a positive integer, or whose weights cannot fit
    in memory, before any work."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"{where} {samples!r} must be a positive integer (importance samples "
                         "per row, e.g. 1000)")
    on = "even one row" if rows == 1 else f"{rows:,} rows"
    check_fits(f"{where} {samples:,} on {on}", samples * rows * FLOAT_BYTES, fix)


def check_draws(draws: int, width: int, *, where: str = "-n", fix: str = "draw fewer") -> None:
    """``draws`` rows of ``width`` numbers each (the observation, its latents, a label), held
    as the draw and its float64 copy: refuse a count that is not positive or cannot fit."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise InputError(f"{where} {draws!r} must be a positive number of draws")
    check_fits(f"{where} {draws:,} draws of {width} numbers", 2 * draws * width * FLOAT_BYTES,
               fix)


def check_disk(what: str, nbytes: float, folder, fix: str) -> None:
    """Raise :class:`InputError` when ``nbytes`` (the estimate of a file ``what``) exceeds the
    space free where ``folder`` (or its nearest existing parent) lies."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the write itself will name the folder
    if nbytes > free:
        raise InputError(f"{what}: about {human(nbytes)} to write, more than the "
                         f"{human(free)} free in {folder}; {fix}")
