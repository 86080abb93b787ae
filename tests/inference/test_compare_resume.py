"""A comparison stopped part way (SIGTERM, SIGINT, a crash) keeps the fits it finished and
`compare ... --out DIR --resume` fits only the others: the finished comparison equals an
uninterrupted one (the same records and table, but the time taken and the folder's name).
`--resume` under other options is refused in one line naming the option, exit status 2.

The signals are real ones, in a new process that signals itself when the comparison starts
its n-th fit (so the point is known without racing a clock); the resumes and refusals run the
command line in this process. The comparison is small: a mixture on Old Faithful by EM and
by SVI (20 steps), two seeds each: four fits.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from inference import interrupt
from inference.cli import main
from inference.compare import harness
from inference.compare.resume import CELLS_DIR

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
       "PYTHONPATH": str(ROOT)}
for _name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT"):
    ENV.pop(_name, None)
COMPARE = ["compare", "gmm", "--strategies", "em,svi-exact", "--steps", "20", "--seeds", "2",
           "--gap-rows", "0", "--draws", "2"]
FITS = 4  # 2 cells x 2 seeds

# the process sends itself SIGNAL when the comparison starts its CALL-th fit
SELF_SIGNAL = """
import os, signal, sys
from inference.compare import harness
call, name = int(sys.argv[1]), sys.argv[2]
original, calls = harness._fitted, [0]
def fitted(*args, **kwargs):
    calls[0] += 1
    if calls[0] == call:
        os.kill(os.getpid(), getattr(signal, name))
    return original(*args, **kwargs)
harness._fitted = fitted
from inference.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_main(capsys, argv) -> subprocess.CompletedProcess:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def one_line(done: subprocess.CompletedProcess, status: int, start: str) -> str:
    """Exit ``status``, one line on stderr starting with ``start``, no traceback."""
    lines = [line for line in done.stderr.splitlines() if line.strip()
             and "Warning" not in line and not line.startswith("  warnings.warn")]
    assert done.returncode == status, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith(start), done.stderr
    return lines[0]


def counted(monkeypatch, stop_at: int | None = None, raising=None) -> list[int]:
    """Count the fits the comparison runs in this process; with ``stop_at``, raise
    ``raising`` when it starts that fit."""
    original, calls = harness._fitted, [0]

    def fitted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == stop_at:
            raise raising
        return original(*args, **kwargs)

    monkeypatch.setattr(harness, "_fitted", fitted)
    return calls


def tables(folder: Path) -> tuple[list[dict], list[dict]]:
    """comparison.json and summary.json without what differs between any two runs (the time
    taken, the folder's name)."""
    def plain(row: dict) -> dict:
        return {k: v for k, v in row.items() if "seconds" not in k and k not in (
            "run_dir", "compare_dir", "posterior_file")}

    return ([plain(r) for r in json.loads((folder / "comparison.json").read_text())],
            [plain(r) for r in json.loads((folder / "summary.json").read_text())])


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "whole"
    assert main([*COMPARE, "--out", str(out)]) == 0
    return out


def interrupted_in_process(capsys, monkeypatch, out: Path, at: int = 2) -> None:
    """A comparison in ``out`` stopped (as by SIGTERM) when it starts fit ``at``."""
    counted(monkeypatch, stop_at=at, raising=interrupt.Interrupted(signal.SIGTERM))
    one_line(run_main(capsys, [*COMPARE, "--out", out]), 143, "lvm-zoo: interrupted")
    monkeypatch.undo()


@pytest.mark.parametrize(("name", "at"), [("SIGTERM", 2), ("SIGINT", 3)])
def test_a_signalled_comparison_says_how_to_resume_and_resumes_to_the_same_table(
        capsys, monkeypatch, uninterrupted, tmp_path, name, at):
    out = tmp_path / "compare"
    argv = [*COMPARE, "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", SELF_SIGNAL, str(at), name, *argv], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    line = one_line(done, 128 + getattr(signal, name), f"lvm-zoo: interrupted ({name})")
    kept = at - 1
    assert f"at fit {at} of {FITS}" in line and f"{kept} finished fit" in line, line
    assert str(out / CELLS_DIR) in line, line
    words = shlex.split(line.split("; resume with: ", 1)[1])
    assert words == ["lvm-zoo", *argv, "--resume"], words
    # the finished fits are kept, nothing of the comparison itself is written
    assert sorted(p.name for p in (out / CELLS_DIR).glob("*.json")) == sorted(
        ["options.json", "em-seed0.json", "em-seed1.json"][:kept + 1])
    assert not (out / "comparison.json").exists()

    fits = counted(monkeypatch)
    resumed = run_main(capsys, words[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert fits[0] == FITS - kept  # only the fits that had not finished
    assert tables(out) == tables(uninterrupted)
    assert not (out / CELLS_DIR).exists()  # nothing left to resume
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(
        p.name for p in uninterrupted.iterdir() if p.is_dir())


def test_resume_under_another_option_is_refused_naming_it(capsys, monkeypatch, tmp_path):
    out = tmp_path / "compare"
    interrupted_in_process(capsys, monkeypatch, out)
    before = contents(out)
    changes = {"--steps 20, not 30": ["--steps", "30"], "--seeds 2, not 3": ["--seeds", "3"],
               "--strategies em,svi-exact, not em": ["--strategies", "em"],
               "without --lr, not with --lr 0.1": ["--lr", "0.1"],
               "without --iwae-rows, not with --iwae-rows 50": ["--iwae-rows", "50"]}
    for words, change in changes.items():
        argv = [*COMPARE, *change, "--out", out, "--resume"]
        line = one_line(run_main(capsys, argv), 2, "lvm-zoo: error: --resume")
        assert words in line and "same options" in line, (words, line)
    assert contents(out) == before  # the kept fits as they were, still resumable


def test_a_stopped_comparison_is_neither_lost_nor_silently_restarted(
        capsys, monkeypatch, uninterrupted, tmp_path):
    """Without --resume the same command is refused (the kept fits are not thrown away);
    --resume without --out is refused; a crash keeps the finished fits as a signal does."""
    out = tmp_path / "compare"
    counted(monkeypatch, stop_at=3, raising=OSError(28, "No space left on device",
                                                    str(out / "x")))
    one_line(run_main(capsys, [*COMPARE, "--out", out]), 2, "lvm-zoo: error:")
    monkeypatch.undo()
    assert sorted(p.name for p in (out / CELLS_DIR).glob("*-seed*.json")) == [
        "em-seed0.json", "em-seed1.json"]
    line = one_line(run_main(capsys, [*COMPARE, "--out", out]), 2, "lvm-zoo: error:")
    assert "stopped after 2 fit(s)" in line and "--resume" in line, line
    line = one_line(run_main(capsys, [*COMPARE, "--resume"]), 2, "lvm-zoo: error:")
    assert "--out" in line, line
    fits = counted(monkeypatch)
    assert run_main(capsys, [*COMPARE, "--out", out, "--resume"]).returncode == 0
    assert fits[0] == 2 and tables(out) == tables(uninterrupted)


def test_a_damaged_kept_fit_is_refused_naming_the_file(capsys, monkeypatch, tmp_path):
    out = tmp_path / "compare"
    interrupted_in_process(capsys, monkeypatch, out)
    kept = out / CELLS_DIR / "em-seed0.json"
    record = json.loads(kept.read_text())
    record["seed"] = 7
    kept.write_text(json.dumps(record))
    line = one_line(run_main(capsys, [*COMPARE, "--out", out, "--resume"]), 2,
                    "lvm-zoo: error:")
    assert str(kept) in line and "fit that cell anew" in line, line
    (out / CELLS_DIR / "em-seed0.pt").write_bytes(b"not a tensor file")
    kept.write_text(json.dumps({**record, "seed": 0}))
    line = one_line(run_main(capsys, [*COMPARE, "--out", out, "--resume"]), 2,
                    "lvm-zoo: error:")
    assert "em-seed0.pt" in line and "cannot be read as a tensor file" in line, line
