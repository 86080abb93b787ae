"""Nothing half-written: a run folder, a comparison and a checkpoint are written beside their
destination and moved into place only when whole, so a full disk leaves what was there before
as it was, with one line and exit status 2.

The full disk is real and needs no root: the command runs under a file-size limit
(``RLIMIT_FSIZE``, SIGXFSZ ignored), so a write past the limit fails with EFBIG exactly where
a write to a full disk fails with ENOSPC.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from inference import cli
from inference.compare.resume import CELLS_DIR
from tests.toy import TOY

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
       "PYTHONPATH": str(ROOT)}
TIMEOUT = 300
EM = ["--inference", "em"]
TINY_COMPARE = ["--gap-rows", "0", "--draws", "2"]


def lvm_zoo(*argv) -> int:
    """The command line in this process (what is written before the fault)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli.main([str(a) for a in argv])


def on_a_full_disk(limit: int, *argv) -> subprocess.CompletedProcess:
    """The command line in a new process that can write no file larger than ``limit``
    bytes."""
    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "inference", *map(str, argv)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=TIMEOUT,
                          preexec_fn=limited)


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and not line.startswith("lvm-zoo: resuming from step")]
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("lvm-zoo: error: "), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def nothing_left_over(folder: Path) -> None:
    """No staging folder, temporary file or lock left behind."""
    assert not [p for p in folder.rglob(".*")], sorted(folder.rglob(".*"))


def test_fit_overwrite_on_a_full_disk_keeps_the_earlier_run(tmp_path):
    run = tmp_path / "run"
    assert lvm_zoo("fit", "gmm", *EM, "--out", run) == 0
    before = contents(run)
    # params.pt (about 2.6 kB) is the first file the new run writes that does not fit
    done = on_a_full_disk(1000, "fit", "gmm", *EM, "--seed", "1", "--out", run, "--overwrite")
    refused(done, str(run / "params.pt"), "File too large", "--out")
    assert contents(run) == before
    nothing_left_over(run)


def test_a_checkpoint_that_cannot_be_written_leaves_the_earlier_one_whole(tmp_path):
    run = tmp_path / "run"
    argv = ["fit", TOY, "--standardize", "--stop-tol", "0", "--checkpoint-every", "10",
            "--out", run]
    assert lvm_zoo(*argv, "--steps", "20") == 0
    before = (run / "checkpoint.pt").read_bytes()
    done = on_a_full_disk(len(before) // 2, *argv, "--steps", "40", "--resume")
    refused(done, str(run / "checkpoint.pt"), "File too large")
    assert (run / "checkpoint.pt").read_bytes() == before
    nothing_left_over(run)


def test_compare_overwrite_on_a_full_disk_keeps_the_earlier_comparison(tmp_path):
    """The small files of the new comparison (each run folder's parameters and records) fit
    under the limit and its posterior draws (posterior.nc) do not: still none of them
    replaces the earlier comparison's."""
    out = tmp_path / "compare"
    argv = ["compare", "gmm", "--strategies", "em,kmeans", *TINY_COMPARE, "--out", out]
    assert lvm_zoo(*argv) == 0
    before = contents(out)
    small = max(len(v) for k, v in before.items() if k.endswith((".json", ".pt", ".csv")))
    draws = min(len(v) for k, v in before.items() if k.endswith(".nc"))
    assert small * 2 < draws
    done = on_a_full_disk(small * 2, *argv, "--seed", "1", "--overwrite")
    refused(done, "File too large")
    # the new comparison's finished fits are kept beside it for --resume, nothing else
    kept = out / CELLS_DIR
    assert sorted(p.name for p in kept.iterdir()) == [
        "em-seed1.json", "em-seed1.pt", "kmeans-seed1.json", "kmeans-seed1.pt", "options.json"]
    shutil.rmtree(kept)
    assert contents(out) == before
    nothing_left_over(out)
