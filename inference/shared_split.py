"""The train/test split's copies under ``torchrun`` on one machine: one copy of the rows for
the machine, each rank copying its share of it.

The seeded split (:func:`zoo.datasets.load_dataset`) gathers a file's rows into a training
and a held-out tensor. Every rank needs all of them (its shard for the fit, but also the
start's sample, the yardstick's shards, the fingerprint the ranks compare), and alone each rank
would copy every row itself: W copies of the data on one machine, made W times over at once.
Writing fresh memory is what that copy costs (page faults; 0.45 s for 12 million rows of 16
float32 values alone, against 0.07 s into memory already touched), and ranks faulting memory
at the same time slow each other down (2.6-3.3 s each for two ranks, 24 million rows).

:class:`SharedGather` gives the split one copy in shared memory instead (a file in
``/dev/shm``, mapped by every rank): each rank reserves and fills only its share of the rows,
then waits for the others. The file is unlinked as soon as every rank has mapped it, so
nothing outlives the processes. Anything that cannot be shared (rows under
:data:`SHARED_BYTES`, ranks on several machines or without one ``/dev/shm``, a ``/dev/shm``
too small, ranks whose files differ) falls back to each rank's own copy; every rank takes the
same path, decided by collectives, and the result is the same rows either way.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from inference.distributed import Group, shard

SHARED_BYTES = 64 * 2**20  # below this a rank copies its own rows (the setup costs more)
SHARED_FOLDER = Path("/dev/shm")
_PREFIX = "lvm-zoo-split-"


class SharedGather:
    """``torch.index_select(values, 0, index)`` for the split, the result shared by the ranks
    of ``group`` on one machine (see the module's docstring). Every rank must call it with
    the same sequence of requests, as the split does (train, then test)."""

    def __init__(self, group: Group, *, folder: str | os.PathLike = SHARED_FOLDER,
                 threshold: int = SHARED_BYTES):
        self.group, self.folder, self.threshold = group, Path(folder), threshold

    def __call__(self, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        shape = (int(index.numel()), *values.shape[1:])
        nbytes = math.prod(shape) * values.element_size()
        request = torch.tensor([*shape, len(shape), values.element_size(),
                                int(values.dtype.is_floating_point)], dtype=torch.float64)
        if not self._alike(request) or nbytes < self.threshold or values.device.type != "cpu":
            return torch.index_select(values, 0, index)
        shared = self._mapped(shape, values.dtype, nbytes)
        if shared is None:
            return torch.index_select(values, 0, index)
        mine = shard(shape[0], self.group)
        torch.index_select(values, 0, index[mine], out=shared[mine])
        self.group.barrier()  # every share written before any rank reads the rows
        return shared

    def _alike(self, request: torch.Tensor) -> bool:
        """Whether every rank asks for rows of the same shape and type (a rank whose file
        differs copies its own; :func:`inference.distributed.agree` then stops them all)."""
        every = self.group.gather(request)
        return all(torch.equal(part, every[0]) for part in every)

    def _mapped(self, shape: tuple[int, ...], dtype: torch.dtype,
                nbytes: int) -> torch.Tensor | None:
        """The shared tensor of ``shape``, its file created by rank 0, this rank's share of
        it reserved (``posix_fallocate``: a full ``/dev/shm`` is an error here, not a SIGBUS
        later) and mapped by every rank; ``None`` on every rank when any rank could not."""
        created = self._create(nbytes) if self.group.is_main else None
        try:  # rank 0 unlinks its file however this ends, once every rank has mapped it
            return self._map(created, shape, dtype, nbytes)
        finally:
            if created:
                Path(created).unlink(missing_ok=True)  # the maps hold it until they end

    def _map(self, created: str | None, shape: tuple[int, ...], dtype: torch.dtype,
             nbytes: int) -> torch.Tensor | None:
        text = self.group.broadcast(
            {"path": torch.tensor(list(os.fsencode(created or "")), dtype=torch.uint8)}
            if self.group.is_main else None)["path"]
        path = os.fsdecode(bytes(text.to(torch.uint8).tolist()))
        if not path:
            return None
        shared = None
        try:
            mine = shard(shape[0], self.group)
            row_bytes = nbytes // shape[0]
            descriptor = os.open(path, os.O_RDWR)
            try:
                if os.fstat(descriptor).st_size != nbytes:  # another machine's file
                    raise OSError(f"{path} is not the file rank 0 made")
                if mine.stop > mine.start:
                    os.posix_fallocate(descriptor, mine.start * row_bytes,
                                       (mine.stop - mine.start) * row_bytes)
            finally:
                os.close(descriptor)
            shared = torch.from_file(path, shared=True, size=math.prod(shape),
                                     dtype=dtype).view(shape)
        except (OSError, RuntimeError):  # not the same folder, or no room: copies of its own
            shared = None
        ready = self.group.gather(torch.tensor([float(shared is not None)]))
        return shared if all(bool(part[0]) for part in ready) else None

    def _create(self, nbytes: int) -> str | None:
        """A new file of ``nbytes`` (sparse) in the shared folder, or ``None`` (also where
        the system cannot reserve a file's blocks up front: no ``posix_fallocate``)."""
        if not hasattr(os, "posix_fallocate"):
            return None
        try:
            descriptor, path = tempfile.mkstemp(prefix=_PREFIX, dir=self.folder)
        except OSError:
            return None
        try:
            os.ftruncate(descriptor, nbytes)
        except OSError:
            os.unlink(path)
            return None
        finally:
            os.close(descriptor)
        return path
