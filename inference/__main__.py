"""``python -m inference`` is the ``lvm-zoo`` command."""

from inference.cli import run

run()
