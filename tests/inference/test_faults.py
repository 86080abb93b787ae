"""Faults a user runs into: each is refused with exit status 2 and one line that names the input
and the fix (no traceback), and nothing that was there before is lost.

Each case does what a user does: `python -m inference ...` in a new process where the command
line is the surface (several at once, to keep the file quick on a small machine), the Python
API where that is. The folders they write into are copies of runs fitted once per module.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo.registry
from inference import api, strategies
from inference.catalog import get_model
from zoo import declare
from zoo.errors import InputError
from zoo.registry import register

LVM_ZOO = [sys.executable, "-m", "inference"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
AT_ONCE = 4  # processes run side by side
EM = ["--inference", "em"]
TINY_COMPARE = ["--gap-rows", "0", "--draws", "2"]


# --- running the command line as a user does ---------------------------------------------------


def lvm_zoo(*argv, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*LVM_ZOO, *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=600)


def lvm_zoo_all(commands: dict[str, list], cwd=None) -> dict[str, subprocess.CompletedProcess]:
    """Run each ``name: argv`` (an argv starting with ``"-c"`` is a Python program run with
    the rest as its arguments), AT_ONCE at a time; their results by name."""
    pending, running, done = list(commands.items()), {}, {}
    while pending or running:
        while pending and len(running) < AT_ONCE:
            name, argv = pending.pop(0)
            command = ([sys.executable, *map(str, argv)] if argv[0] == "-c"
                       else [*LVM_ZOO, *map(str, argv)])
            running[name] = (command, subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                env=ENV))
        name = next(iter(running))
        command, process = running.pop(name)
        out, err = process.communicate(timeout=600)
        done[name] = subprocess.CompletedProcess(command, process.returncode, out, err)
    return done


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2, one line on stderr that starts `lvm-zoo: error:` and holds ``words``,
    no traceback; returns the line."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.args, done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("lvm-zoo: error: "), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def succeeded(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (done.args, done.stderr[-3000:])
    return done


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (names relative to it) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


# --- what the cases damage: runs fitted once per module ----------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict[str, Path]:
    """A finished EM run of the mixture, a PPCA SVI run with q=2 and its checkpoint, and a
    comparison of two cells: fitted side by side, then kept read-only in spirit (every case
    works on a copy and checks that these are unchanged at the end)."""
    root = tmp_path_factory.mktemp("fitted")
    folders = {"run": root / "gmm-em", "svi": root / "ppca-svi", "comparison": root / "compare"}
    results = lvm_zoo_all({
        "run": ["fit", "gmm", *EM, "--out", folders["run"], "--json"],
        "svi": ["fit", "ppca", "--inference", "svi", "--latent-dim", "2", "--data", "iris",
                "--steps", "30", "--out", folders["svi"], "--json"],
        "comparison": ["compare", "gmm", "--strategies", "em,kmeans", *TINY_COMPARE, "--out",
                       folders["comparison"]],
    })
    for result in results.values():
        succeeded(result)
    assert (folders["svi"] / "checkpoint.pt").is_file()
    before = {name: contents(folder) for name, folder in folders.items()}
    yield folders
    for name, folder in folders.items():  # no case touched the originals
        assert contents(folder) == before[name], name


# --- two writers, one folder -------------------------------------------------------------------


def test_a_second_writer_into_the_same_out_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "shared-out"
    first = subprocess.Popen([*LVM_ZOO, "fit", "gmm", "--inference", "svi", "--stop-tol", "0",
                              "--steps", "100000", "--out", str(out), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 300
        while not ((out / ".lock").is_file()
                   and (out / ".lock").read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first fit never took the lock"
            time.sleep(0.2)
        second = lvm_zoo_all({  # a fit and a comparison into the folder being written
            "fit": ["fit", "gmm", *EM, "--out", out],
            "compare": ["compare", "gmm", "--strategies", "em", *TINY_COMPARE, "--out", out],
        })
        for done in second.values():
            refused(done, f"--out {out} is being written by another lvm-zoo process "
                          f"(pid {first.pid})", "choose another --out")
        assert first.poll() is None  # the first one went on training, undisturbed
    finally:
        first.send_signal(signal.SIGKILL)  # killed: its lock file stays behind
        first.communicate()
    assert (out / ".lock").is_file() and not (out / "metrics.json").exists()
    # the kernel released the dead process's lock: its stale lock file does not block
    succeeded(lvm_zoo("fit", "gmm", *EM, "--out", out, "--json"))
    assert (out / "metrics.json").is_file() and not (out / ".lock").exists()


# --- nothing replaced that was not asked for ---------------------------------------------------


def test_compare_never_replaces_an_earlier_comparison_unless_asked(tmp_path, fitted):
    folder = copy(fitted["comparison"], tmp_path / "compare")
    (folder / "notes.txt").write_text("mine")  # the user's own file beside the comparison
    damaged = copy(fitted["comparison"], tmp_path / "damaged")
    (damaged / "comparison.json").write_text('[{"run_dir": ')
    before, damaged_before = contents(folder), contents(damaged)
    results = lvm_zoo_all({
        "again": ["compare", "gmm", "--strategies", "em", *TINY_COMPARE, "--out", folder],
        "fit into it": ["fit", "gmm", *EM, "--out", folder],
        "damaged": ["compare", "gmm", "--strategies", "em", *TINY_COMPARE, "--out", damaged,
                    "--overwrite"],
    })
    refused(results["again"], f"--out {folder} already holds a comparison", "--overwrite")
    refused(results["fit into it"], "holds a comparison (comparison.json), not a run")
    refused(results["damaged"], "comparison.json cannot be read as JSON")
    with pytest.raises(InputError, match="already holds a comparison"):
        api.compare("gmm", out=folder, strategies=["em"], gap_rows=0, draws=2)
    assert contents(folder) == before and contents(damaged) == damaged_before

    succeeded(lvm_zoo("compare", "gmm", "--strategies", "em", *TINY_COMPARE, "--out", folder,
                      "--overwrite"))
    records = json.loads((folder / "comparison.json").read_text())
    assert [Path(r["run_dir"]).name for r in records] == ["em-seed0"]
    assert not (folder / "kmeans-seed0").exists()  # the earlier comparison's own run folder
    assert (folder / "em-seed0" / "metrics.json").is_file()
    assert (folder / "notes.txt").read_text() == "mine"  # not the comparison's: kept
    assert not (folder / ".lock").exists()


def test_fit_never_replaces_a_finished_run_unless_asked(tmp_path, fitted):
    run = copy(fitted["run"], tmp_path / "run")
    before = contents(run)
    results = lvm_zoo_all({
        "again": ["fit", "gmm", *EM, "--out", run],
        "both": ["fit", "gmm", *EM, "--out", run, "--resume", "--overwrite"],
    })
    refused(results["again"], f"--out {run} already holds a finished run", "--resume",
            "--overwrite")
    refused(results["both"], "give one of them")
    assert contents(run) == before

    succeeded(lvm_zoo("fit", "gmm", "--inference", "kmeans", "--out", run, "--overwrite"))
    assert json.loads((run / "run.json").read_text())["inference"] == "kmeans"
    assert not (run / ".lock").exists()


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    results = lvm_zoo_all({
        "existing file": ["fit", "gmm", *EM, "--out", a_file],
        "under a file": ["fit", "gmm", *EM, "--out", a_file / "run"],
        "read-only place": ["fit", "gmm", *EM, "--out", "/proc/lvm-zoo-run"],
    })
    refused(results["existing file"], f"--out {a_file} is an existing file")
    refused(results["under a file"], "cannot be written", "choose a folder you can write to")
    refused(results["read-only place"], "/proc/lvm-zoo-run cannot be written")
    assert a_file.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["a-file"]


# --- damaged run folders: refused by evaluate, never half-read ---------------------------------


class Planted:
    """Unpickling this would create a file: a params.pt must never run code."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _params(folder: Path) -> dict:
    return torch.load(folder / "params.pt", weights_only=True)


def _run_json(folder: Path, **changes) -> None:
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**record, **changes}))


def _planted(folder: Path) -> None:
    Planted.marker = str(folder / "ran")
    torch.save({"params": Planted()}, folder / "params.pt")


DAMAGE = {  # name: (what is done to a copy of the run, the file the message names, words)
    "params.pt truncated": (lambda d: (d / "params.pt").write_bytes(
        (d / "params.pt").read_bytes()[:100]), "params.pt", "cannot be read as a tensor file"),
    "params.pt empty": (lambda d: (d / "params.pt").write_bytes(b""), "params.pt",
                        "cannot be read as a tensor file"),
    "params.pt with NaN": (lambda d: torch.save(
        {"params": {k: torch.full_like(v, float("nan")) for k, v in _params(d)["params"].items()},
         "guide_params": {}}, d / "params.pt"), "params.pt", "NaN or infinite"),
    "params.pt not a dict": (lambda d: torch.save([torch.zeros(2)], d / "params.pt"),
                             "params.pt", "not lvm-zoo's dict of tensors"),
    "params.pt of plain numbers": (lambda d: torch.save({"params": {"weights": 1.0},
                                                         "guide_params": {}}, d / "params.pt"),
                                   "params.pt", "no dict of tensors 'params'"),
    "params.pt that would run code": (_planted, "params.pt", "cannot be read as a tensor file"),
    "params.pt of another shape": (lambda d: torch.save(
        {"params": {k: torch.zeros(7) for k in _params(d)["params"]}, "guide_params": {}},
        d / "params.pt"), "", "has shape (7,)"),
    "params.pt missing": (lambda d: (d / "params.pt").unlink(), "", "not a run directory"),
    "run.json malformed": (lambda d: (d / "run.json").write_text('{"model": "gmm", '),
                           "run.json", "cannot be read as JSON"),
    "run.json empty": (lambda d: (d / "run.json").write_text(""), "run.json",
                       "cannot be read as JSON"),
    "run.json partial": (lambda d: (d / "run.json").write_text('{"model": "gmm"}'), "run.json",
                         "lacks inference, guide, seed, config, data"),
    "run.json a list": (lambda d: (d / "run.json").write_text("[]"), "run.json",
                        "holds a JSON list, not a dict"),
    "run.json config of the wrong type": (lambda d: _run_json(d, config=[2]), "run.json",
                                          "config [2] (not dict)"),
    "run.json seed of the wrong type": (lambda d: _run_json(d, seed="0"), "run.json",
                                        "seed '0' (not int)"),
    "run.json config out of range": (lambda d: _run_json(d, config={"dim": 2, "components": 0}),
                                     "run.json", "holds a config that model 'gmm' does not take"),
    "metrics.json malformed": (lambda d: (d / "metrics.json").write_text('{"seconds": 1.'),
                               "metrics.json", "cannot be read as JSON"),
    "metrics.json empty": (lambda d: (d / "metrics.json").write_text(""), "metrics.json",
                           "cannot be read as JSON"),
    "metrics.json a list": (lambda d: (d / "metrics.json").write_text("[1]"), "metrics.json",
                            "holds a JSON list, not a dict"),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, fitted) -> dict[str, tuple[Path, dict]]:
    """Each case of DAMAGE done to its own copy of the run: name -> (folder, its contents)."""
    root = tmp_path_factory.mktemp("damaged")
    folders = {}
    for number, (name, (damage, _, _)) in enumerate(DAMAGE.items()):
        folder = copy(fitted["run"], root / f"case{number}")
        damage(folder)
        folders[name] = (folder, contents(folder))
    return folders


def run_main(capsys, *argv) -> subprocess.CompletedProcess:
    """The console entry point in this process (what `lvm-zoo` calls), as a finished process:
    for the many cases that need no process of their own."""
    from inference.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["lvm-zoo", *argv], code, out, err)


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_run_files_are_refused_by_evaluate(capsys, damaged, case):
    folder, before = damaged[case]
    _, file, words = DAMAGE[case]
    refused(run_main(capsys, "evaluate", folder), words, *([str(folder / file)] if file else []))
    assert contents(folder) == before  # evaluate wrote nothing
    assert not (folder / "ran").exists()  # and ran nothing


def test_a_damaged_run_is_refused_by_a_new_process_too(damaged):
    results = lvm_zoo_all({case: ["evaluate", damaged[case][0]] for case in (
        "params.pt truncated", "params.pt that would run code")})
    for case, done in results.items():
        refused(done, DAMAGE[case][2], str(damaged[case][0] / DAMAGE[case][1]))
    assert not (damaged["params.pt that would run code"][0] / "ran").exists()


# --- resuming: only the same fit, from a readable checkpoint -----------------------------------


RESUME = ["fit", "ppca", "--inference", "svi", "--data", "iris", "--steps", "60", "--resume"]


def test_resume_refuses_a_damaged_or_foreign_checkpoint(capsys, tmp_path, fitted):
    cases = {  # name: (damage, extra flags, words)
        "truncated checkpoint": (lambda d: (d / "checkpoint.pt").write_bytes(
            (d / "checkpoint.pt").read_bytes()[:200]), ["--latent-dim", "2"],
            "checkpoint.pt' cannot be read as a tensor file"),
        "empty checkpoint": (lambda d: (d / "checkpoint.pt").write_bytes(b""),
                             ["--latent-dim", "2"], "cannot be read as a tensor file"),
        "another latent dimension": (None, ["--latent-dim", "3"],
                                     "was fitted with --latent-dim 2, not 3"),
        "another seed": (None, ["--latent-dim", "2", "--seed", "1"], "--seed 0, not 1"),
        "other data": (None, ["--latent-dim", "2", "--data", "old-faithful"],
                       "--data iris, not old-faithful"),
        "other guide": (None, ["--latent-dim", "2", "--guide", "mean-field"],
                        "--guide exact, not mean-field"),
    }
    folders, before = {}, {}
    for number, (name, (damage, _, _)) in enumerate(cases.items()):
        folder = folders[name] = copy(fitted["svi"], tmp_path / f"case{number}")
        if damage is not None:
            damage(folder)
        before[name] = contents(folder)
    no_checkpoint = copy(fitted["run"], tmp_path / "em-run")
    commands = {**{name: [*RESUME, *cases[name][1], "--out", folder]
                   for name, folder in folders.items()},
                "no checkpoint": ["fit", "gmm", *EM, "--resume", "--out", no_checkpoint]}
    in_new_processes = ("truncated checkpoint", "another latent dimension")
    results = lvm_zoo_all({name: commands[name] for name in in_new_processes})
    results.update({name: run_main(capsys, *argv) for name, argv in commands.items()
                    if name not in in_new_processes})
    for name, (_, _, words) in cases.items():
        line = refused(results[name], words)
        assert str(folders[name]) in line
        assert contents(folders[name]) == before[name], name  # the run and checkpoint intact
    refused(results["no checkpoint"], "--resume: there is no checkpoint")
    assert contents(no_checkpoint) == contents(fitted["run"])


# --- model names are taken once ----------------------------------------------------------------


USER_MODEL = '''
from zoo import declare


def model(x=None, *, num_data=None, subsample_size=None):
    """a user's model"""


declare({name!r}, model{extra})
'''


@pytest.fixture
def clean_registry():
    registry, sources = zoo.registry.models(), dict(zoo.registry._SOURCES)
    origins = dict(zoo.registry._ORIGINS)
    yield
    zoo.registry._REGISTRY.clear()
    zoo.registry._REGISTRY.update(registry)
    zoo.registry._SOURCES.clear()  # which file declared each name goes back too
    zoo.registry._SOURCES.update(sources)
    zoo.registry._ORIGINS.clear()
    zoo.registry._ORIGINS.update(origins)


def user_file(tmp_path: Path, name: str, extra: str = "", stem: str = "user_model") -> str:
    path = tmp_path / f"{stem}.py"
    path.write_text(USER_MODEL.format(name=name, extra=extra))
    return f"{path}:{name}"


def test_a_user_file_may_not_take_a_built_in_name(tmp_path, clean_registry):
    reference = user_file(tmp_path, "gmm")
    refused(lvm_zoo("fit", reference, *EM), "model 'gmm' is already registered",
            "replace=True", str(tmp_path / "user_model.py"))
    with pytest.raises(InputError, match="model 'gmm' is already registered"):
        get_model(reference)
    assert get_model("gmm").summary.startswith("Gaussian mixture")  # the built-in stays

    mine = user_file(tmp_path, "my-model", stem="mine")
    assert get_model(mine).summary == "a user's model"
    assert get_model(mine).summary == "a user's model"  # the same file again: fine

    def other(x=None, *, num_data=None, subsample_size=None):
        pass

    with pytest.raises(InputError, match="'my-model' is already registered .*mine.py"):
        declare("my-model", other)  # another file's model name, from here
    ppca = zoo.registry.models()["ppca"]
    impostor = dataclasses.replace(ppca, summary="not the built-in",
                                   make_model=lambda config, params=None: other)
    with pytest.raises(InputError, match="'ppca' is already registered .*ppca.py"):
        register(impostor)
    assert zoo.registry.models()["ppca"] is ppca

    # asked for, a name is replaced (the fixture puts the built-ins back)
    assert register(impostor, replace=True) is zoo.registry.models()["ppca"]
    replaced = get_model(user_file(tmp_path, "gmm", ", replace=True", stem="on_purpose"))
    assert replaced.summary == "a user's model"


def test_a_name_taken_back_from_a_user_file_is_saved_as_the_built_in(tmp_path, clean_registry):
    """A run records where its model comes from. After a user file replaced 'gmm' and the
    built-in was registered back, a run of the built-in names 'gmm', not the user's file."""
    built_in = zoo.registry.models()["gmm"]
    mine = get_model(user_file(tmp_path, "gmm", ", replace=True", stem="on_purpose"))
    assert zoo.registry.model_reference(mine).endswith("on_purpose.py:gmm")
    register(built_in, replace=True)
    assert zoo.registry.model_reference(built_in) == "gmm"


# --- misspelled and mistyped options: refused with the closest name ----------------------------


def test_misspelled_and_mistyped_options_are_refused_with_a_suggestion(tmp_path):
    with pytest.raises(InputError, match="--n-components does not apply.*did you mean "
                                         "--components"):
        api.fit("gmm", n_components=3)
    with pytest.raises(InputError, match=r"--max-iter='10' must be int"):
        api.fit("gmm", inference="em", max_iter="10")
    with pytest.raises(InputError, match="--maxiter does not apply.*did you mean --max-iter"):
        api.fit("gmm", inference="em", maxiter=10)
    with pytest.raises(InputError, match="--steps does not apply to --inference em; it "
                                         "applies to --inference svi"):
        api.fit("gmm", inference="em", steps=10)
    with pytest.raises(InputError, match=r"takes no option --component \(did you mean "
                                         r"--components\?\)"):
        get_model("gmm").make_config(2, component=3)
    em = strategies.strategies()["em"]
    with pytest.raises(InputError, match="--tols does not apply.*did you mean --tol"):
        strategies.make_options(em.Options, {"tols": 1e-3}, owner="--inference em")
    refused(lvm_zoo("fit", "gmm", *EM, "--stop-tol", "0", "--out", tmp_path / "run"),
            "--stop-tol does not apply to --inference em; it applies to --inference svi")
    assert not (tmp_path / "run").exists()


# --- a run is data: evaluated from anywhere ----------------------------------------------------


def test_a_run_on_a_csv_file_is_evaluated_from_another_working_directory(tmp_path):
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    rows = np.random.default_rng(0).normal(size=(120, 2)) + np.repeat([[0, 0], [4, 4]], 60, 0)
    np.savetxt(here / "points.csv", rows, delimiter=",")
    fit = succeeded(lvm_zoo("fit", "gmm", *EM, "--data", "points.csv", "--out", "run", "--json",
                            cwd=here))
    record = json.loads(fit.stdout)
    run = json.loads((here / "run" / "run.json").read_text())
    assert run["data"]["name"] == str((here / "points.csv").resolve())  # absolute
    again = json.loads(succeeded(lvm_zoo("evaluate", here / "run", "--json",
                                         cwd=elsewhere)).stdout)
    for key in ("train_log_likelihood", "test_log_likelihood", "n_train", "n_test"):
        assert again[key] == record[key], key
    (here / "points.csv").rename(here / "moved.csv")  # the data went away: said so
    refused(lvm_zoo("evaluate", here / "run", cwd=elsewhere),
            str((here / "points.csv").resolve()), "does not exist")


# --- the operating system and floating point: one line too -------------------------------------


def _patched(patch: str, *argv) -> list:
    """``python -c`` running the command line after ``patch`` (a full disk, say)."""
    program = "import errno, os, sys\n" + textwrap.dedent(patch) + (
        "\nfrom inference.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return ["-c", program, *argv]


def test_errors_of_the_disk_and_of_floating_point_are_one_line(tmp_path, fitted):
    full, denied = (copy(fitted["run"], tmp_path / name) for name in ("full", "denied"))
    huge = tmp_path / "huge.csv"
    np.savetxt(huge, np.random.default_rng(0).normal(size=(100, 3)) * 1e300, delimiter=",")
    results = lvm_zoo_all({
        "disk full": _patched("""
            def fsync(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync = fsync
        """, "fit", "gmm", *EM, "--out", full, "--overwrite"),
        "permission denied": _patched("""
            def replace(source, target):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            os.replace = replace
        """, "fit", "gmm", *EM, "--out", denied, "--overwrite"),
        "overflow": _patched("""
            import inference.fitting
            def evaluate_fit(*args, **kwargs):
                raise FloatingPointError("overflow encountered in exp")
            inference.fitting.evaluate_fit = evaluate_fit
        """, "fit", "gmm", *EM, "--out", tmp_path / "overflow"),
        "values near 1e300": ["fit", "ppca", "--data", huge, "--dtype", "float64", "--out",
                              tmp_path / "ppca"],
    })
    refused(results["disk full"], f"{full / 'params.pt'}: {os.strerror(errno.ENOSPC)}; the "
                                  "disk is full")
    refused(results["permission denied"], f"{denied / 'params.pt'}: "
                                          f"{os.strerror(errno.EACCES)}; check its permissions")
    refused(results["overflow"], "the fit on old-faithful failed numerically",
            "FloatingPointError: overflow", "--standardize", "--dtype float64")
    line = refused(results["values near 1e300"], f"the fit on {huge} failed numerically",
                   "LinAlgError", "--standardize")
    assert "--dtype float64" not in line  # already float64
    for folder in (full, denied):  # the earlier run, which --overwrite was to replace: whole
        assert contents(folder) == contents(fitted["run"])
    left = [p.name for folder in (full, denied) for p in folder.iterdir()]
    assert not [name for name in left if name.startswith(".")]  # no temporary file, no lock
