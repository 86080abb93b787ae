"""Two habits every Monte Carlo figure here shares: draws vectorized in a particle plate, and
a random stream of their own so that the same files give the same numbers."""

from __future__ import annotations

from contextlib import contextmanager

import pyro
import torch


@contextmanager
def own_random_stream(seed: int, device: torch.device | None = None):
    """Draws inside come from a stream seeded by ``seed`` (on the CPU and on ``device``), and
    the caller's random state is as it was afterwards: Monte Carlo figures reproduce exactly."""
    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def vectorized(fn, num_particles: int):
    """``fn`` run with ``num_particles`` independent draws at once, in a plate at dim −2
    (outside the data plate)."""
    def wrapped(*args, **kwargs):
        with pyro.plate("particles", num_particles, dim=-2):
            return fn(*args, **kwargs)
    return wrapped
