"""A user's model file is input: whatever goes wrong while it is imported, or between its
model and its guide, is one line on standard error and exit status 2, for ``fit``, ``check``
and ``compare`` alike -- never a traceback, another exit status, or output on standard output
(which ``--json`` keeps for its one object).

The mismatches are found before any training by the same checks ``lvm-zoo check`` runs
(:mod:`inference.preflight`), so a model that ``check`` refuses is refused by ``fit`` too,
and one ``check`` passes trains and is judged.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.cli import main

ROOT = Path(__file__).resolve().parents[2]

HEADER = '''
from dataclasses import dataclass, field
import pyro, pyro.distributions as dist, torch
from zoo import declare

@dataclass(frozen=True)
class Config:
    dim: int = field(default=2, metadata={"cli": False})

'''

# a healthy one-factor model; {latent} is its latent site's line, {guides} extra declare args
MODEL = '''
def model(x=None, *, num_data=None, subsample_size=None, config):
    loc = pyro.param("loc", lambda: x.new_zeros(config.dim))
    n = x.shape[0] if x is not None else num_data
    {global_line}
    with pyro.plate("data", n, subsample_size=subsample_size, device=x.device) as idx:
        {latent}
        pyro.sample("x", dist.Normal(loc + z, 1.0).to_event(1), obs=x[idx])

{extra}
declare("{name}", model, config=Config, local_sites=("z",){declared})
'''

HEALTHY = 'z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0)).unsqueeze(-1)'


_FILES = itertools.count()  # one process runs them all: each file declares a name of its own


def _model_file(tmp_path: Path, name: str, *, latent: str = HEALTHY, global_line: str = "",
                extra: str = "", declared: str = "", before: str = "") -> str:
    """``path/to/name_N.py:name-N`` for a new file declaring model ``name-N``."""
    name = f"{name}-{next(_FILES)}"
    text = before + HEADER + MODEL.format(name=name, latent=latent, global_line=global_line,
                                          extra=extra, declared=declared)
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(text)
    return f"{path}:{name}"


EXTRA_SITE_GUIDE = '''
def make_guide(model, config):
    def guide(x=None, *, num_data=None, subsample_size=None):
        n = x.shape[0] if x is not None else num_data
        pyro.sample("extra", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("data", n, subsample_size=subsample_size, device=x.device):
            pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
    return guide
'''

# name -> (how the file is written, the words its one line must hold)
FAULTS = {
    "import error": (lambda p: _model_file(p, "imports", before="import no_such_module_xyz\n"),
                     "failed to import (ModuleNotFoundError: No module named "
                     "'no_such_module_xyz')"),
    "syntax error": (lambda p: _model_file(p, "syntax", before="def broken(:\n"),
                     "has a syntax error at line 1"),
    "sys.exit(0)": (lambda p: _model_file(p, "exits0", before="import sys\nsys.exit(0)\n"),
                    "called sys.exit(0) while being imported"),
    "sys.exit(3)": (lambda p: _model_file(p, "exits3", before="import sys\nsys.exit(3)\n"),
                    "called sys.exit(3) while being imported"),
    "missing name": (lambda p: _model_file(p, "present") + "-typo",
                     "-typo'; did you mean 'present-"),
}
MISMATCHES = {  # found by the checks both check and fit run
    "guide samples a site the model lacks": (
        lambda p: _model_file(p, "extra-site", extra=EXTRA_SITE_GUIDE,
                              declared=', guides={"mine": make_guide}'),
        "mismatch: site 'extra' (guide mine): the guide samples it but the model has no site"),
    "latent batch shape the plate does not hold": (
        lambda p: _model_file(p, "wide-latent", latent='z = pyro.sample("z", dist.Normal('
                              'x.new_zeros(3), 1.0))[..., :1]'),
        "shape: site 'z': its distribution has a batch dimension of size 3 at dim -1"),
    "global latent with a batch dimension": (
        lambda p: _model_file(p, "wide-global", global_line='w = pyro.sample("w", dist.Normal('
                              'x.new_zeros(3), 1.0))[..., :2]',
                              latent=HEALTHY + " + w", declared=', global_sites=("w",)'),
        "shape: site 'w': its distribution has batch shape (3,) but no plate encloses it"),
}


FAULTS = {**FAULTS, **MISMATCHES}


def _argv(command: str, reference: str, tmp_path: Path) -> list[str]:
    common = ["--data", "old-faithful"]
    if command == "fit":
        return ["fit", reference, *common, "--steps", "5", "--no-figures",
                "--out", str(tmp_path / "run"), "--json"]
    if command == "compare":
        return ["compare", reference, *common, "--steps", "5", "--seeds", "1",
                "--out", str(tmp_path / "comparison"), "--json"]
    return ["check", reference, *common, "--json"]


@pytest.mark.parametrize("command", ["fit", "check", "compare"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_faulty_model_file_is_one_line_and_exit_2(capsys, tmp_path, fault, command):
    write, words = FAULTS[fault]
    reference = write(tmp_path)
    if command == "check" and fault in MISMATCHES:  # check's report: a line per problem
        code = main(["check", reference, "--data", "old-faithful"])
        out, err = capsys.readouterr()
        assert code == 2, out + err
        assert any(line.startswith(words) for line in out.splitlines()), out
        assert len(err.strip().splitlines()) == 1 and "problem(s) in model" in err, err
        return
    code = main(_argv(command, reference, tmp_path))
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""  # nothing on stdout: not even half a JSON object
    assert err.startswith("lvm-zoo: error: ") and len(err.strip().splitlines()) == 1, err
    assert words in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "params.pt").exists()  # refused before any training


def _subprocess(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "LVM_ZOO_DATA": str(ROOT.parent / "shared" / "data")}
    return subprocess.run([sys.executable, "-m", "inference", *argv], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("status", [0, 3])
def test_sys_exit_at_import_is_exit_2_in_a_process_of_its_own(tmp_path, status):
    reference = _model_file(tmp_path, "quits", before=f"import sys\nsys.exit({status})\n")
    done = _subprocess("fit", reference, "--steps", "5", "--no-figures",
                       "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"called sys.exit({status}) while being imported" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_output_printed_on_import_goes_to_stderr_and_json_stays_one_object(tmp_path):
    reference = _model_file(tmp_path, "chatty", before='print("hello from the model file")\n')
    done = _subprocess("fit", reference, "--steps", "5", "--no-figures", "--out",
                       str(tmp_path / "run"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)  # the whole of stdout is the one record
    assert record["model"] == reference.rsplit(":", 1)[1] and record["steps"] == 5
    assert "hello from the model file" in done.stderr


def test_a_model_check_passes_trains_and_is_judged(capsys, tmp_path):
    """The converse: what ``check`` passes, ``fit`` trains and its yardstick judges (the
    preflight refuses nothing that ``check`` accepts)."""
    reference = _model_file(tmp_path, "fine")
    assert main(["check", reference]) == 0
    capsys.readouterr()
    for guide in ("auto-normal", "amortized"):
        assert main(["fit", reference, "--guide", guide, "--steps", "5", "--no-figures",
                     "--out", str(tmp_path / guide), "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["guide"] == guide and record["train_log_likelihood"] < 0


def test_the_python_face_raises_the_same_input_error(tmp_path):
    from inference import api
    from zoo.errors import InputError

    reference = _model_file(tmp_path, "extra-site", extra=EXTRA_SITE_GUIDE,
                            declared=', guides={"mine": make_guide}')
    with pytest.raises(InputError, match="the guide samples it but the model has no site"):
        api.fit(reference, steps=5)


def test_the_preflight_leaves_the_fit_bit_for_bit_as_without_it(tmp_path, monkeypatch):
    """The checks run in a random stream and param store of their own: a fit's numbers do
    not depend on them."""
    from inference import api, fitting

    reference = _model_file(tmp_path, "same")
    first = api.fit(reference, steps=20, seed=3)
    monkeypatch.setattr(fitting, "preflight", lambda *args, **kwargs: None)
    second = api.fit(reference, steps=20, seed=3)
    assert first.result.history["elbo"] == second.result.history["elbo"]
    assert first.metrics["train_log_likelihood"] == second.metrics["train_log_likelihood"]
