"""Python's cyclic garbage collector paused for a block: imports that build many long-lived
objects (torch, Pyro, matplotlib) run faster without full collections amid them, each of
which walks every object built before it (:mod:`inference.launch`)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic collector off within (imports that build many long-lived objects), on
    again after if it was on; anything that became garbage meanwhile is collected later."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
