"""A streamed .npy that shrinks or is rewritten while a fit reads it is an error naming the
file, never a SIGBUS: every chunk read asks the file's size first."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from inference.shards import Rows
from zoo.datasets.mapped import check_intact, map_npy
from zoo.errors import InputError


def _mapped(tmp_path, rows=4000):
    path = tmp_path / "rows.npy"
    np.save(path, np.random.default_rng(0).normal(size=(rows, 3)).astype(np.float32))
    data = map_npy(path, dtype=torch.float32)
    return path, data


def test_chunks_of_an_unchanged_file_are_read(tmp_path):
    path, data = _mapped(tmp_path)
    rows = Rows(data.train, chunk_rows=1000)
    total = sum(float(chunk.sum()) for chunk in rows.chunks())
    assert total == pytest.approx(float(np.load(path).sum(dtype=np.float64)), rel=1e-5)


def test_a_file_truncated_under_the_fit_is_named(tmp_path):
    path, data = _mapped(tmp_path)
    rows = Rows(data.train, chunk_rows=1000)
    chunks = rows.chunks()
    next(chunks)
    os.truncate(path, 256)  # pages past here would kill the process on the next read
    with pytest.raises(InputError, match=r"rows\.npy' shrank from \d+ to 256 bytes"):
        next(chunks)
    with pytest.raises(InputError, match="shrank"):
        rows.sample(10, torch.Generator().manual_seed(0))


def test_a_file_rewritten_under_the_fit_is_named(tmp_path):
    path, data = _mapped(tmp_path)
    stat = path.stat()
    with open(path, "r+b") as stream:  # same size, other bytes, a later modification time
        stream.seek(stat.st_size - 4)
        stream.write(b"\0\0\0\0")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(InputError, match="was rewritten"):
        check_intact(data.train)


def test_tensors_in_memory_are_not_checked():
    check_intact(torch.zeros(3, 2))  # nothing mapped behind it: nothing to ask
