"""Sizes checked before work: a request whose tensors cannot fit in this machine's memory is
refused with the estimate, the limit and the fix, before anything is allocated (an allocation
that fails half-way is a traceback, or the kernel's OOM killer, not an answer)."""

from __future__ import annotations

import os

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
