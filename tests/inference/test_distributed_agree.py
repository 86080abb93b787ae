"""torchrun workers agree before they work: ranks started with different options or data stop
together with one line naming what differs (two gloo processes on localhost)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from inference import distributed
from tests.worker_end import end_worker
from zoo.errors import InputError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, fingerprints: list, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=distributed.collective_timeout())
    try:
        distributed.agree(fingerprints[rank], distributed.current())
        out.put((rank, "agreed"))
    except InputError as error:
        out.put((rank, str(error)))
    finally:
        dist.destroy_process_group()
    end_worker()


def _run(fingerprints: list) -> dict:
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, port, fingerprints, out))
                 for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    return dict(out.get() for _ in processes)


def test_alone_agrees_with_itself():
    distributed.agree({"steps": 10}, None)  # no group: nothing to compare, nothing raised


def test_ranks_with_the_same_options_and_rows_go_on():
    x = torch.arange(300.0).reshape(100, 3)
    same = {"steps": 100, "components": 3, **distributed.data_fingerprint(x)}
    assert _run([same, dict(same)]) == {0: "agreed", 1: "agreed"}


def test_ranks_with_other_steps_or_rows_stop_together_naming_them():
    x = torch.arange(300.0).reshape(100, 3)
    other_rows = x.clone()
    other_rows[-1, 0] += 1  # one value in the last rows differs
    first = {"steps": 100, "components": 3, **distributed.data_fingerprint(x)}
    second = {"steps": 200, "components": 3, **distributed.data_fingerprint(other_rows)}
    said = _run([first, second])
    for rank, line in said.items():
        assert "disagree on rows_hash, steps" in line, line
        assert f"rank {rank} of 2" in line and "\n" not in line


def test_ranks_with_other_sets_of_settings_stop_together():
    said = _run([{"steps": 1}, {"steps": 1, "lr": 0.1}])
    assert all("different options" in line for line in said.values())


def test_collective_timeout_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("LVM_ZOO_COLLECTIVE_TIMEOUT", "30")
    assert distributed.collective_timeout().total_seconds() == 30
    for bad in ("0", "-1", "nan", "inf", "soon"):
        monkeypatch.setenv("LVM_ZOO_COLLECTIVE_TIMEOUT", bad)
        with pytest.raises(InputError, match="LVM_ZOO_COLLECTIVE_TIMEOUT"):
            distributed.collective_timeout()


def test_torchrun_workers_given_other_steps_stop_together_in_one_line(tmp_path):
    """Two workers of `lvm-zoo fit` under torchrun, rank 1 with another --steps: both exit
    with status 2 and one line naming --steps, well within a minute, instead of hanging."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import numpy as np

    root = Path(__file__).resolve().parents[2]
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).normal(size=(400, 2)))
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, runpy, sys\n"
        "sys.argv = ['lvm-zoo', 'fit', 'gmm', '--inference', 'svi', '--data', "
        f"{str(tmp_path / 'rows.npy')!r}, '--dtype', 'float64', '--out', "
        f"{str(tmp_path / 'run')!r}, '--steps', '20' if os.environ['RANK'] == '0' else '30']\n"
        "runpy.run_module('inference', run_name='__main__')\n")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(script)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(root),
                               "OMP_NUM_THREADS": "1"})
    assert time.monotonic() - start < 60 + 30  # torchrun's own start and stop included
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "disagree on --steps" in line]
    assert len(lines) >= 2, done.stderr[-3000:]  # both ranks say it, once each
    # no traceback of ours (torchrun's own launcher reports the failed workers its way)
    assert not [line for line in done.stderr.splitlines()
                if line.strip().startswith("File") and any(
                    str(root / package) in line for package in ("inference", "zoo", "guides"))
                ], done.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.json").exists()
