"""Rows larger than memory: a ``.npy`` file mapped into memory, read chunk by chunk.

:func:`map_npy` checks the file's header as every ``.npy`` is checked (no objects, no pickle,
no header promising more bytes than follow it), then maps it copy-on-write (``mmap_mode="c"``:
the file is never written, and a page is read only when a chunk touches it) and checks that
every value is finite, one chunk at a time, before any fit starts. The tensors it returns are
views of the map: slicing them reads nothing; a fit reads the rows chunk by chunk
(:class:`inference.shards.Rows`) and holds one chunk at a time.

The held-out rows of a mapped file are its last ``ceil(test_fraction * N)`` rows, not a seeded
choice (which would copy them all): shuffle a file whose rows are ordered before holding some
out, or hold none out (``test_fraction=0``).
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np
import torch

from zoo.datasets.base import Dataset
from zoo.datasets.files import _SAVE_HINT, _check_is_file, _check_npy_header, _open
from zoo.errors import InputError

CHUNK_BYTES = 64 * 2**20  # the default chunk: 64 MiB of rows
# the files behind the maps made here, by the address of the map's first byte: a map whose
# file shrinks kills the process with SIGBUS when a page past the new end is touched, so every
# read of a chunk asks :func:`check_intact` first
_MAPS: dict[int, tuple[pathlib.Path, int, int]] = {}
_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def default_chunk_rows(dim: int, dtype: torch.dtype) -> int:
    """Rows per chunk of :data:`CHUNK_BYTES`."""
    return max(1024, CHUNK_BYTES // (dim * torch.finfo(dtype).bits // 8))


def too_large_for_memory(path: str | os.PathLike, share: float = 0.5) -> bool:
    """Whether ``path`` (a ``.npy``) holds more bytes than ``share`` of the memory available
    now; such a file is streamed rather than loaded."""
    try:
        size = pathlib.Path(path).stat().st_size
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return False
    return size > share * available


def map_npy(path: str | os.PathLike, *, dtype: torch.dtype, test_fraction: float = 0.0,
            chunk_rows: int | None = None) -> Dataset:
    """The rows of the ``.npy`` at ``path``, memory-mapped, as a :class:`Dataset` whose train
    and test tensors are views of the map (CPU). The file must hold a C-ordered 2-D array of
    ``dtype`` (its values are not converted: a converted copy would not fit either)."""
    path = pathlib.Path(path).expanduser()
    what = f"data file '{path}'"
    if path.suffix.lower() != ".npy":
        raise InputError(f"{what}: only .npy files are read memory-mapped (chunk by chunk); "
                         "save the rows with numpy.save(path, data), or load them in memory "
                         "(leave out --chunk-rows)")
    _check_is_file(path)
    with _open(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size == 0:
            raise InputError(f"{what} is empty (0 bytes); write it with {_SAVE_HINT['.npy']}")
        _check_npy_header(stream, size=size, what=what, fix=_SAVE_HINT[".npy"])
    try:
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"{what} cannot be mapped as a numeric .npy array ({error}); save "
                         f"it with {_SAVE_HINT['.npy']}") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{what} holds an array of shape {array.shape}; a streamed file must "
                         "hold a non-empty (N, D) array, rows being observations")
    if not array.flags.c_contiguous:
        raise InputError(f"{what} is stored column-major (Fortran order); rows are read in "
                         "chunks only from a C-ordered array: save np.ascontiguousarray(data)")
    kind = _DTYPES.get(array.dtype)
    if kind is None:
        raise InputError(f"{what} holds {array.dtype} values; a streamed file must hold float32 "
                         "or float64: save data.astype(np.float32)")
    if kind != dtype:
        name = str(kind).removeprefix("torch.")
        raise InputError(f"{what} holds {name} values but the fit asks for "
                         f"{str(dtype).removeprefix('torch.')}; streamed rows are not converted "
                         f"(a converted copy would not fit in memory): use --dtype {name}")
    rows = chunk_rows or default_chunk_rows(array.shape[1], kind)
    for start in range(0, array.shape[0], rows):
        block = array[start:start + rows]
        if not np.isfinite(block).all():
            bad = start + int(np.nonzero(~np.isfinite(block).all(1))[0][0])
            raise InputError(f"{what} has a non-finite value in row {bad}; remove or impute "
                             "the rows with NaN or infinity")
    x = torch.from_numpy(array)
    stat = path.stat()
    _MAPS[x.untyped_storage().data_ptr()] = (path, stat.st_size, stat.st_mtime_ns)
    num_test = math.ceil(test_fraction * x.shape[0])
    if x.shape[0] - num_test < 1:
        raise InputError(f"--test-fraction={test_fraction} leaves no training rows out of the "
                         f"{x.shape[0]} rows of {what}; use a smaller fraction, e.g. 0")
    return Dataset(name=str(path), train=x[:x.shape[0] - num_test],
                   test=x[x.shape[0] - num_test:], train_labels=None, test_labels=None,
                   obs_shape=(x.shape[1],), is_image=False, source=str(path.resolve()))


def check_intact(x: torch.Tensor) -> None:
    """Raise :class:`InputError` naming the file when ``x`` is a view of a map made by
    :func:`map_npy` whose file has since shrunk or been rewritten: reading it could meet pages
    past the file's end (SIGBUS, which no Python code can catch) or rows that are not the rows
    the fit started on. Costs one ``stat``; nothing for tensors in memory."""
    if x.device.type != "cpu" or not _MAPS:
        return
    known = _MAPS.get(x.untyped_storage().data_ptr())
    if known is None:
        return
    path, size, mtime = known
    try:
        stat = path.stat()
    except OSError as error:
        raise InputError(f"data file '{path}' went away while the fit was reading it "
                         f"({error.strerror}); keep the file in place until the fit ends") \
            from None
    if stat.st_size < size:
        raise InputError(f"data file '{path}' shrank from {size} to {stat.st_size} bytes "
                         "while the fit was reading it; keep the file unchanged until the fit "
                         "ends, then run again")
    if stat.st_size != size or stat.st_mtime_ns != mtime:
        raise InputError(f"data file '{path}' was rewritten while the fit was reading it; "
                         "keep the file unchanged until the fit ends, then run again")
