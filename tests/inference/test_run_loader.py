"""A run folder is data, validated once by one loader (``inference.run_loader.load``) that
``evaluate``, ``sample``, ``predict``, ``api.load`` and ``fit --resume`` share: every edited
file is refused with exit status 2 and one line naming the file, the key and what was
expected, before anything is computed or written, and nothing in the folder is unpickled.

Each case edits a copy of a run fitted once per module; most run the console entry point in
this process, a few a new ``python -m inference`` process as a user does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference import api, fitting
from inference.cli import main
from inference.run_loader import constraint_fault, expected_guide_params, expected_params
from inference.run_loader import load as load_saved
from zoo.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
ENV_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A mixture fitted by EM (full covariances), PPCA by SVI with its checkpoint, a GMM with
    diagonal covariances by SVI under its mean-field guide (per-datapoint guide parameters),
    and the deep model (IWAE yardstick; its encoder's weights are guide parameters)."""
    root = tmp_path_factory.mktemp("runs")
    folders = {"gmm": root / "gmm", "ppca": root / "ppca", "diag": root / "diag",
               "dglvm": root / "dglvm"}
    fitting.fit("gmm", inference="em", out=folders["gmm"], figures=False)
    fitting.fit("ppca", inference="svi", latent_dim=2, data="iris", steps=30,
                out=folders["ppca"], figures=False)
    fitting.fit("gmm", inference="svi", covariance_type="diag", guide="mean-field", steps=20,
                out=folders["diag"], figures=False)
    fitting.fit("dglvm", data="iris", hidden=(8,), latent_dim=2, steps=5, iwae_samples=4,
                batch_size=32,
                out=folders["dglvm"], figures=False)
    return folders


def copy_of(runs, name: str, to: Path) -> Path:
    return Path(shutil.copytree(runs[name], to / name))


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def run_main(capsys, *argv) -> subprocess.CompletedProcess:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["lvm-zoo", *argv], code, out, err)


TORCHRUN = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
            "MASTER_PORT")  # another test's torchrun variables must not reach a plain command


def lvm_zoo(*argv, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    plain = {k: v for k, v in os.environ.items() if k not in TORCHRUN}
    return subprocess.run([sys.executable, "-m", "inference", *map(str, argv)], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**plain, **ENV_THREADS, **(env or {}),
                               "PYTHONPATH": str(ROOT)})


def lvm_zoo_started(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "inference", *map(str, argv)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV_THREADS, "PYTHONPATH": str(ROOT)})


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one line `lvm-zoo: error: ...` holding ``words``, no traceback."""
    lines = [line for line in done.stderr.splitlines() if line.strip()
             and "Warning" not in line and not line.startswith("  warnings.warn")]
    assert done.returncode == 2, (done.args, done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("lvm-zoo: error: "), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def edit_json(folder: Path, name: str, change) -> None:
    record = json.loads((folder / name).read_text())
    change(record)
    (folder / name).write_text(json.dumps(record))


def edit_tensors(folder: Path, name: str, change) -> None:
    state = torch.load(folder / name, weights_only=True)
    change(state)
    torch.save(state, folder / name)


def setting(path: str, value):
    """A change of run.json: ``"data.test_fraction"`` -> ``value``."""
    def change(record):
        *parents, key = path.split(".")
        for parent in parents:
            record = record[parent]
        record[key] = value
    return change


# --- run.json against its schema --------------------------------------------------------------

RUN_JSON = {  # name: (run, change, the key the line names, what it expects)
    "test_fraction a string": ("gmm", setting("data.test_fraction", "abc"),
                               "data.test_fraction is 'abc'", "in [0, 1)"),
    "test_fraction of 1": ("gmm", setting("data.test_fraction", 1.0),
                           "data.test_fraction is 1.0", "in [0, 1)"),
    "seed of 2**70": ("gmm", setting("seed", 2**70), "seed is 1180591620717411303424",
                      "int in ["),
    "data seed of -2**70": ("gmm", setting("data.seed", -(2**70)), "data.seed is", "int in"),
    "iwae_samples of 0": ("dglvm", setting("iwae_samples", 0), "iwae_samples 0",
                          "at least 1"),
    "iwae_samples of 10**12": ("dglvm", setting("iwae_samples", 10**12),
                               "iwae_samples 1,000,000,000,000", "of memory needed"),
    "chunk_rows negative": ("gmm", setting("data.chunk_rows", -3), "data.chunk_rows is -3",
                            "at least 1"),
    "dtype unknown": ("gmm", setting("data.dtype", "float16"), "data.dtype is 'float16'",
                      "one of 'float32', 'float64'"),
    "binarize unknown": ("gmm", setting("data.binarize", "maybe"), "data.binarize",
                         "one of null, 'static', 'dynamic'"),
    "standardize a number": ("gmm", setting("data.standardize", 1), "data.standardize is 1",
                             "bool"),
    "inference unknown": ("gmm", setting("inference", "banana"), "inference is 'banana'",
                          "expected one of"),
    "guide unknown": ("ppca", setting("guide", "nope"), "guide is 'nope'", "guides"),
    "options out of range": ("ppca", setting("options.steps", -5), "options hold",
                             "--steps"),
    "components a string": ("gmm", setting("config.components", "3"),
                            "config.components is '3'", "expected int"),
    "components zero": ("gmm", setting("config.components", 0), "does not take",
                        "components"),
    "dim zero": ("gmm", setting("config.dim", 0), "config.dim is 0", "positive int"),
    "reg_covar infinite": ("gmm", setting("config.reg_covar", float("inf")),
                           "config.reg_covar is inf", "finite"),
    "seed missing": ("gmm", lambda r: r.pop("seed"), "lacks seed", "fit again"),
}


@pytest.mark.parametrize("case", list(RUN_JSON))
def test_a_run_json_outside_its_schema_is_refused_naming_file_key_and_expectation(
        capsys, runs, tmp_path, case):
    name, change, key, expected = RUN_JSON[case]
    folder = copy_of(runs, name, tmp_path)
    edit_json(folder, "run.json", change)
    before = contents(folder)
    command = ("sample", folder, "-n", "3", "--out", tmp_path / "s.csv")
    line = refused(run_main(capsys, *command), str(folder / "run.json"), key, expected)
    assert "Traceback" not in line
    refused(run_main(capsys, "evaluate", folder), str(folder / "run.json"), key)
    assert contents(folder) == before and not (tmp_path / "s.csv").exists()


def test_run_json_faults_are_one_line_in_a_new_process_too(runs, tmp_path):
    folders = {}
    for case in ("test_fraction a string", "seed of 2**70", "iwae_samples of 10**12"):
        name, change, _, _ = RUN_JSON[case]
        folders[case] = copy_of(runs, name, tmp_path / case.replace(" ", "-").replace("*", ""))
        edit_json(folders[case], "run.json", change)
    processes = {case: lvm_zoo_started("evaluate", folder) for case, folder in folders.items()}
    for case, process in processes.items():  # side by side: a new process imports torch
        out, err = process.communicate(timeout=600)
        done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        refused(done, str(folders[case] / "run.json"), RUN_JSON[case][2])


# --- params.pt against the config --------------------------------------------------------------


def _params(change):
    return lambda folder: edit_tensors(folder, "params.pt", lambda s: change(s["params"]))


def _guide(change):
    return lambda folder: edit_tensors(folder, "params.pt", lambda s: change(s["guide_params"]))


PARAMS = {  # name: (run, change, words of the line)
    "wrong shape": ("gmm", _params(lambda p: p.__setitem__("means", torch.zeros(3, 2))),
                    ["params 'means' has shape (3, 2), expected (2, 2)", "components=2"]),
    "int64 dtype": ("gmm", _params(lambda p: p.__setitem__("means", torch.ones(2, 2,
                                                                              dtype=torch.int64))),
                    ["params 'means' has dtype torch.int64", "floating-point"]),
    "missing key": ("gmm", _params(lambda p: p.pop("scale_tril")),
                    ["params lack 'scale_tril'", "model 'gmm'"]),
    "extra key": ("ppca", _params(lambda p: p.__setitem__("bias", torch.zeros(4))),
                  ["params hold 'bias'", "does not have"]),
    "negative weights": ("gmm", _params(lambda p: p.__setitem__("weights",
                                                                torch.tensor([1.5, -0.5]))),
                         ["params 'weights'", "off the simplex", "sum to 1"]),
    "weights not summing to one": ("gmm", _params(lambda p: p.__setitem__(
        "weights", torch.tensor([0.3, 0.3]))), ["params 'weights'", "sum 0.6"]),
    "covariance not positive definite": ("gmm", _params(lambda p: p["scale_tril"].mul_(-1)),
                                         ["params 'scale_tril'", "positive-definite"]),
    "negative variance": ("diag", _params(lambda p: p["scale"].mul_(-1)),
                          ["params 'scale'", "expected positive values"]),
    "zero noise": ("ppca", _params(lambda p: p.__setitem__("noise", torch.tensor(0.0))),
                   ["params 'noise' holds 0", "positive"]),
    "NaN": ("ppca", _params(lambda p: p["weight"].fill_(float("nan"))),
            ["NaN or infinite", "weight"]),
    # the guide's parameters against the shapes the guide registers over the model's
    "guide wrong shape": ("diag", _guide(lambda g: g.__setitem__("assignment_logits",
                                                                 torch.zeros(5, 2))),
                          ["guide_params 'assignment_logits' has shape (5, 2), expected "
                           "(217, 2)", "guide 'mean-field'"]),
    "guide missing key": ("diag", _guide(lambda g: g.pop("assignment_logits")),
                          ["guide_params lack 'assignment_logits' of shape (217, 2)"]),
    "guide extra key": ("diag", _guide(lambda g: g.__setitem__("bias", torch.zeros(2))),
                        ["guide_params hold 'bias'", "(it has 'assignment_logits')"]),
    "guide NaN": ("diag", _guide(lambda g: g["assignment_logits"][3].fill_(float("nan"))),
                  ["NaN or infinite", "assignment_logits"]),
    "encoder wrong shape": ("dglvm", _guide(lambda g: g.__setitem__(
        "encoder$$$net.0.weight", torch.zeros(8, 5))),
        ["guide_params 'encoder$$$net.0.weight' has shape (8, 5), expected (8, 4)",
         "guide 'amortized' of model 'dglvm'"]),
    "encoder missing key": ("dglvm", _guide(lambda g: g.pop("encoder$$$net.2.bias")),
                            ["guide_params lack 'encoder$$$net.2.bias' of shape (4,)"]),
    "encoder extra key": ("dglvm", _guide(lambda g: g.__setitem__(
        "encoder$$$net.4.weight", torch.zeros(4, 4))),
        ["guide_params hold 'encoder$$$net.4.weight'", "does not have"]),
    "encoder NaN": ("dglvm", _guide(lambda g: g["encoder$$$net.2.weight"].fill_(float("inf"))),
                    ["NaN or infinite", "encoder$$$net.2.weight"]),
}
DATA = {"gmm": "old-faithful", "diag": "old-faithful", "ppca": "iris", "dglvm": "iris"}


@pytest.mark.parametrize("command", ["evaluate", "sample", "predict", "api.load"])
@pytest.mark.parametrize("case", list(PARAMS))
def test_parameters_against_the_config_are_refused_by_every_command(
        capsys, runs, tmp_path, case, command):
    name, damage, words = PARAMS[case]
    folder = copy_of(runs, name, tmp_path)
    damage(folder)
    before = contents(folder)
    out = tmp_path / "written.csv"
    if command == "api.load":
        with pytest.raises(InputError) as caught:
            api.load(folder)
        line = str(caught.value)
        assert str(folder / "params.pt") in line and "\n" not in line
        assert all(word in line for word in words), (words, line)
    else:
        argv = {"evaluate": ["evaluate", folder],
                "sample": ["sample", folder, "-n", "4", "--out", out],
                "predict": ["predict", folder, "--data", DATA[name], "--out", out]}[command]
        refused(run_main(capsys, *argv), str(folder / "params.pt"), *words)
    assert contents(folder) == before and not out.exists()  # nothing written, no NaN rows


def test_predict_on_negative_mixture_weights_refuses_in_a_new_process(runs, tmp_path):
    folder = copy_of(runs, "gmm", tmp_path)
    PARAMS["negative weights"][1](folder)
    done = lvm_zoo("predict", folder, "--data", "old-faithful", cwd=tmp_path)
    refused(done, "off the simplex")
    assert not list(tmp_path.glob("predictions*.csv"))


def test_a_params_file_that_would_unpickle_code_is_never_run(capsys, runs, tmp_path):
    folder = copy_of(runs, "gmm", tmp_path)
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"params": Planted(), "guide_params": {}}, folder / "params.pt")
    refused(run_main(capsys, "sample", folder, "-n", "2", "--out", tmp_path / "s.csv"),
            "cannot be read as a tensor file")
    assert not marker.exists()


# --- checkpoints likewise ----------------------------------------------------------------------


def _checkpoint(change):
    return lambda folder: edit_tensors(folder, "checkpoint.pt", change)


CHECKPOINTS = {  # name: (change, words)
    "NaN parameters": (_checkpoint(lambda s: [v.fill_(float("nan"))
                                              for v in s["params"].values()]),
                       ["params 'loc' is NaN or infinite", "finite values"]),
    "step of -5": (_checkpoint(lambda s: s.__setitem__("step", -5)),
                   ["step is -5", "an integer of at least 0"]),
    "history shorter than its step": (_checkpoint(lambda s: s.__setitem__(
        "history", s["history"][:3])), ["history is 3 values long", "expected 30"]),
    "int64 parameters": (_checkpoint(lambda s: s["params"].__setitem__(
        "loc", torch.zeros(4, dtype=torch.int64))), ["params 'loc' is of dtype torch.int64"]),
    "not a checkpoint": (_checkpoint(lambda s: s.pop("step")), ["lacks step"]),
}
RESUME = ["fit", "ppca", "--inference", "svi", "--latent-dim", "2", "--data", "iris",
          "--steps", "60", "--resume", "--no-figures"]


@pytest.mark.parametrize("command", ["resume", "sample"])
@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_damaged_checkpoint_is_refused_by_resume_and_by_the_estimator(
        capsys, runs, tmp_path, case, command):
    folder = copy_of(runs, "ppca", tmp_path)
    damage, words = CHECKPOINTS[case]
    damage(folder)
    before = contents(folder)
    argv = ([*RESUME, "--out", folder] if command == "resume"
            else ["sample", folder, "-n", "2", "--out", tmp_path / "s.csv"])
    refused(run_main(capsys, *argv), str(folder / "checkpoint.pt"), *words)
    assert contents(folder) == before  # the run and its checkpoint as they were


def test_a_damaged_checkpoint_is_one_line_in_a_new_process(runs, tmp_path):
    folder = copy_of(runs, "ppca", tmp_path)
    CHECKPOINTS["history shorter than its step"][0](folder)
    refused(lvm_zoo(*RESUME, "--out", folder), "history is 3 values long")


# --- the loader's parts against independent references --------------------------------------


def test_every_fitted_run_loads_and_its_layout_is_the_models_own(runs):
    """The traced layout equals the parameters each strategy saved (names, shapes), and the
    constraints are the model's: the loader refuses nothing a fit wrote."""
    for name, folder in runs.items():
        saved = load_saved(folder)
        layout = expected_params(saved.spec, saved.config)
        assert {k: s for k, (s, _) in layout.items()} == {
            k: tuple(v.shape) for k, v in saved.params.items()}, name
        if saved.record["guide"] is not None:  # the guide's, registered over the model's
            assert expected_guide_params(saved.spec, saved.config, saved.record["guide"],
                                         saved.params, saved.metrics["n_train"]) == {
                k: tuple(v.shape) for k, v in saved.guide_params.items()}, name
    assert len(load_saved(runs["diag"]).guide_params["assignment_logits"]) == 217
    gmm = load_saved(runs["gmm"])
    constraints_of = {k: type(c).__name__ for k, (_, c) in
                      expected_params(gmm.spec, gmm.config).items()}
    assert constraints_of == {"weights": "_Simplex", "means": "_Real",
                              "scale_tril": "_LowerCholesky"}


def test_the_simplex_is_checked_to_float32_precision_and_no_looser():
    from torch.distributions import constraints

    weights = torch.softmax(torch.randn(200, generator=torch.Generator().manual_seed(0)), 0)
    assert constraint_fault(weights, constraints.simplex) == ""  # float32 rounding is fine
    off = weights.clone()
    off[0] += 1e-3
    assert "off the simplex" in constraint_fault(off, constraints.simplex)
    spd = torch.linalg.cholesky(torch.tensor([[2.0, 0.5], [0.5, 1.0]]))
    assert constraint_fault(spd, constraints.lower_cholesky) == ""
    assert "Cholesky" in constraint_fault(spd.T.contiguous(), constraints.lower_cholesky)
