"""The training rows as EM and K-means see them: one tensor, the shards of a process group,
or the chunks of a memory-mapped file, or both.

:class:`Rows` holds every row (a tensor in memory, or one mapped from a ``.npy`` file, whose
pages are read only when a chunk is used), the process group (:mod:`inference.distributed`)
and the chunk size. A rank sees its shard (:func:`inference.distributed.shard`) in chunks of
at most ``chunk_rows`` rows, each moved to the fit's device when it is used, so a streamed fit
holds one chunk (and what its E-step makes of it) in memory at a time. Statistics computed
chunk by chunk are folded by the model's ``combine`` hook and then across ranks
(:meth:`Rows.gather`), in a fixed order, so that every rank holds the same numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

from inference import distributed
from inference.distributed import Group
from zoo.datasets.mapped import check_intact


class Rows:
    """``x : (N, D)`` (all rows, possibly memory-mapped) as shards and chunks.

    ``device`` is where chunks go (default ``x``'s); ``chunk_rows=None`` takes a rank's shard
    as one chunk. ``parted`` says whether the fit must combine statistics (several chunks or
    several ranks); otherwise :attr:`tensor` is the one tensor and nothing changes.
    """

    def __init__(self, x: torch.Tensor, *, group: Group | None = None,
                 chunk_rows: int | None = None, device: torch.device | None = None):
        self.x = x
        self.group = group
        self.num_data = int(x.shape[0])
        self.dim = int(x.shape[1])
        self.device = torch.device(device) if device is not None else x.device
        self.dtype = x.dtype
        self.streamed = chunk_rows is not None
        if self.streamed:
            return_large_buffers()
        self.local = x[distributed.shard(self.num_data, group)]
        size = chunk_rows or max(1, self.local.shape[0])
        # the chunks' views, made once: EM meets the same tensors every iteration (the GMM's
        # E-step keeps its quadratic features for a tensor it has seen)
        self._views = [self.local[start:start + size]
                       for start in range(0, self.local.shape[0], size)]
        self.parted = group is not None or len(self._views) > 1

    @property
    def tensor(self) -> torch.Tensor:
        """All rows on the device (only where the fit is not parted)."""
        return self.local.to(self.device)

    @property
    def world_size(self) -> int:
        return 1 if self.group is None else self.group.world_size

    def chunks(self):
        """This rank's rows, chunk by chunk, on the device."""
        for view in self._views:
            if self.streamed:
                check_intact(view)  # a file that shrank is an error naming it, not a SIGBUS
            yield view.to(self.device)

    def probe(self, rows: int = 8) -> torch.Tensor:
        """The first few rows on the device (shapes, dtype and constraints; no statistics)."""
        return self.x[:min(rows, self.num_data)].to(self.device)

    def sample(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """About ``rows`` distinct rows of all ``N`` (every row when ``N <= rows``), a seeded
        uniform choice in file order: what a start computed once is computed on when the rows
        are streamed."""
        check_intact(self.x)
        if self.num_data <= rows:
            return self.x.to(self.device)
        # distinct draws (no permutation of all N: 8 bytes a row), sorted: reads in file order
        chosen = torch.unique(torch.randint(self.num_data, (rows,), generator=generator,
                                            device=generator.device))
        return self.x[chosen.cpu() if self.x.device.type == "cpu" else chosen].to(self.device)

    def gather(self, tree) -> list:
        """Every rank's ``tree`` in rank order (``[tree]`` alone)."""
        return distributed.gather(tree, self.group)

    def total(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks."""
        return distributed.total(tensor, self.group)

    def describe(self) -> dict:
        """What a run record says about how the rows were seen."""
        return {"world_size": self.world_size,
                "backend": None if self.group is None else self.group.backend,
                "chunk_rows": self._views[0].shape[0] if self.streamed and self._views else None}


_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD = -3, -1  # glibc mallopt parameters
_LARGE = 2**18


def return_large_buffers() -> None:
    """Have glibc give every buffer of 256 KiB or more back to the system when it is freed.

    By default glibc raises its mmap threshold to the size of the largest buffer freed so far
    (up to 32 MiB), so a chunk's buffers, allocated and freed chunk after chunk, end up on
    the heap, where the small allocations between them keep the memory from being returned:
    a streamed fit then holds memory growing with the file (measured: 26 MiB for 24 chunks,
    47 MiB for 48) instead of a few chunks' worth (8 MiB). A fixed threshold keeps them
    mmap'ed; at 1 MiB the E-step's block buffers (sized just under 1 MiB, to stay in cache)
    still fell below it, and a streamed fit held 24-49 MiB in some runs; at 256 KiB, 1-5 MiB.
    The importance sampler calls it too: an IWAE-5000 pass over 10,000 rows of the VampPrior
    model grew by 5 MB/s to 23 GB without it, and held 1.2 GB with it. Elsewhere than glibc
    this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _LARGE)
        libc.mallopt(_M_TRIM_THRESHOLD, _LARGE)
    except (OSError, AttributeError):
        pass
