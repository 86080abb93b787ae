"""``python -m inference`` is the ``lvm-zoo`` command."""

from inference.launch import run

run()
