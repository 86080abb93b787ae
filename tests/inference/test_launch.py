"""The console script imports with the garbage collector paused, freezes what the imports
built, and runs the command with the collector on (Pyro's traces make reference cycles)."""

import gc
import json
import subprocess
import sys

import pytest

from inference.gc_pause import paused_gc


def test_paused_gc_restores_the_collector_as_it_was_even_on_an_error():
    assert gc.isenabled()
    with pytest.raises(ValueError), paused_gc():
        assert not gc.isenabled()
        raise ValueError
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_the_command_runs_with_the_collector_on_and_the_imports_frozen():
    """``lvm-zoo list`` through the console script's entry, its command module's ``main``
    replaced by one that reports the collector's state."""
    code = ("import gc, json, sys; sys.argv = ['lvm-zoo', 'list']\n"
            "import inference.commands.listing as listing\n"
            "listing.main = lambda args: print(json.dumps({'enabled': gc.isenabled(), "
            "'frozen': gc.get_freeze_count(), 'torch': 'torch' in sys.modules, "
            "'command': 'inference.commands.listing' in sys.modules})) or 0\n"
            "from inference.launch import run\nrun()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads(done.stdout)
    assert state["enabled"] and state["torch"] and state["command"]
    assert state["frozen"] > 100_000  # torch's objects, out of every collection's walk
