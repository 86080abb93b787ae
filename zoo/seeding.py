"""A random stream of its own: draws inside are seeded and leave the caller's state as it was.

The zoo and the inference layer both use it (synthetic data, Monte Carlo figures that must
reproduce from a run's files), so it lives at the bottom of the arrows."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def own_random_stream(seed: int | None, device: torch.device | str | None = None):
    """Draws inside come from a stream seeded by ``seed`` (on the CPU and on ``device``), and
    the caller's random state is as it was afterwards. ``seed=None`` only forks the stream."""
    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield
