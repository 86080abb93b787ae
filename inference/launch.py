"""The ``lvm-zoo`` console script and ``python -m inference``: the command's imports with
Python's cyclic garbage collector paused.

Importing torch, Pyro and matplotlib builds about a million objects, almost none of them ever
garbage; each full collection meanwhile walks all that were built before it. With the
collector paused during the imports, then the imported objects moved out of its reach
(:func:`gc.freeze`), ``import torch`` and the command's own imports took 1.50-1.69 s against
1.97-2.40 s (six runs each, interleaved, ``python benchmarks/command_wall.py`` measures the
whole command). The fit itself runs with the collector on, as always: Pyro's traces make
reference cycles that must be collected. What the imports left as cyclic garbage is frozen
with the rest and never freed: 7,365 objects of 305,893 after ``lvm-zoo fit``'s imports.

Nothing here imports torch; :mod:`inference.cli` does, within :func:`run`.
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn

from inference.gc_pause import paused_gc


def run() -> NoReturn:
    """``lvm-zoo``: import the command line and the command's module with the collector
    paused, freeze what they built (a collection never walks it again), then run
    :func:`inference.cli.run`."""
    with paused_gc():
        from inference import cli

        cli.import_command(sys.argv[1:])
        gc.freeze()
    cli.run()
