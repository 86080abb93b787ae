"""Two habits every Monte Carlo figure here shares: draws vectorized in a particle plate, and
a random stream of their own so that the same files give the same numbers."""

from __future__ import annotations

import pyro

from zoo.seeding import own_random_stream  # noqa: F401  (re-exported: one idiom)


def vectorized(fn, num_particles: int):
    """``fn`` run with ``num_particles`` independent draws at once, in a plate at dim −2
    (outside the data plate)."""
    def wrapped(*args, **kwargs):
        with pyro.plate("particles", num_particles, dim=-2):
            return fn(*args, **kwargs)
    return wrapped
