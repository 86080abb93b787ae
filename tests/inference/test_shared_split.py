"""The split's copies shared by the ranks of one machine (:mod:`inference.shared_split`; two
gloo processes on localhost).

- Two ranks loading a file through :class:`SharedGather` get the training and held-out rows
  of a one-process load, bit for bit, in one mapped file that both ranks hold and that no
  longer exists in its folder (nothing outlives the processes).
- Where the shared file cannot be made (no such folder), or the ranks ask for rows of
  different shapes (their files differ), each rank copies its own rows: the same rows, no
  hang.
"""

from __future__ import annotations

import datetime
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from inference import distributed
from inference.shared_split import SharedGather
from tests.worker_end import end_worker
from zoo.datasets import load_dataset

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _storage_file(x: torch.Tensor) -> str:
    return x.untyped_storage().filename or ""


def _worker(rank: int, port: int, data: str, folder: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    group = distributed.current()
    results = {}
    shared = load_dataset(data, seed=3, gather=SharedGather(group, folder=folder, threshold=0))
    results["shared"] = (shared.train, shared.test)
    results["shared_files"] = (_storage_file(shared.train), _storage_file(shared.test))
    missing = load_dataset(data, seed=3, gather=SharedGather(
        group, folder=f"{folder}/no-such-folder", threshold=0))
    results["fallback"] = (missing.train, missing.test)
    results["fallback_files"] = (_storage_file(missing.train), _storage_file(missing.test))
    # ranks whose requests differ (a file per rank): each copies its own rows
    values = torch.arange(60.0).reshape(20, 3)
    index = torch.arange(0, 20 - 5 * rank, 2)
    alone = SharedGather(group, folder=folder, threshold=0)(values, index)
    results["different"] = (alone, _storage_file(alone))
    torch.save(results, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()
    end_worker()


def test_two_ranks_share_one_copy_of_the_one_process_split(tmp_path):
    rows = np.random.default_rng(0).standard_normal((5000, 7))
    np.save(tmp_path / "rows.npy", rows)
    folder = tmp_path / "shared"
    folder.mkdir()
    out = tmp_path / "results.pt"
    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "rows.npy"), str(folder), str(out)),
             nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(WORLD)]
    alone = load_dataset(str(tmp_path / "rows.npy"), seed=3)
    for result in ranks:
        for case in ("shared", "fallback"):
            train, test = result[case]
            assert torch.equal(train, alone.train) and torch.equal(test, alone.test), case
        # one file per part, the same on both ranks, in the folder given, and gone from it
        assert all(name.startswith(str(folder)) for name in result["shared_files"])
        assert result["shared_files"] == ranks[0]["shared_files"]
        assert result["fallback_files"] == ("", "")
    assert len(set(ranks[0]["shared_files"])) == 2
    assert list(folder.iterdir()) == []
    values = torch.arange(60.0).reshape(20, 3)
    for rank, result in enumerate(ranks):
        copied, name = result["different"]
        assert name == ""
        assert torch.equal(copied, values[torch.arange(0, 20 - 5 * rank, 2)])
