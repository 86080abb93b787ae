"""`lvm-zoo check`: every common stumble, written deliberately into a model file, is caught with
its site named and exit status 2; healthy models (the built-ins, the worked examples) pass."""

import json
import textwrap

import pytest

import zoo.registry
from inference.catalog import models
from inference.check import check
from inference.cli import main

HEADER = '''
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import constraints

from zoo import declare


@dataclass(frozen=True)
class Config:
    dim: int = field(default=2, metadata={"cli": False})
    latent_dim: int = 2


def parameters(config, like):
    d, q = config.dim, config.latent_dim
    loc = pyro.param("loc", lambda: like.new_zeros(d))
    weight = pyro.param("weight", lambda: 0.5 * torch.eye(d, q, dtype=like.dtype,
                                                            device=like.device))
    noise = pyro.param("noise", lambda: like.new_ones(()), constraint=constraints.positive)
    return loc, weight, noise
'''

# A healthy one-factor linear-Gaussian model; each case below breaks one line of it.
GOOD = '''
def model(x=None, *, num_data=None, subsample_size=None, config):
    like = x if x is not None else torch.zeros(())
    loc, weight, noise = parameters(config, like)
    n = x.shape[0] if x is not None else num_data
    with pyro.plate("data", n, subsample_size=subsample_size, device=like.device) as idx:
        z = pyro.sample("z", dist.Normal(like.new_zeros(config.latent_dim), 1.0).to_event(1))
        mean = loc + z @ weight.T
        pyro.sample("x", dist.Normal(mean, noise).to_event(1),
                    obs=None if x is None else x[idx])


declare("broken", model, config=Config, local_sites=("z",))
'''


@pytest.fixture(autouse=True)
def _clean_registry():
    registry = zoo.registry.models()
    yield
    zoo.registry._REGISTRY.clear()
    zoo.registry._REGISTRY.update(registry)


def write_model(tmp_path, body: str) -> str:
    path = tmp_path / "my_model.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return f"{path}:broken"


def run_check(capsys, reference: str, *extra: str):
    code = main(["check", reference, "--standardize", "--rows", "32", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_healthy_declared_model_passes(capsys, tmp_path):
    code, out, err = run_check(capsys, write_model(tmp_path, GOOD))
    assert code == 0, out + err
    assert out.startswith("ok: model 'broken'") and "auto-normal" in out


BROKEN = {
    # model/guide site mismatch: the guide names its site 'latent', the model 'z'
    "guide site name": ("mismatch", ["'latent'", "'z'"], GOOD.replace(
        'declare("broken", model, config=Config, local_sites=("z",))', '''
def guide(x=None, *, num_data=None, subsample_size=None):
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        pyro.sample("latent", dist.Normal(x.new_zeros(len(idx), 2), 1.0).to_event(1))


declare("broken", model, config=Config, local_sites=("z",), guides={"mine": lambda m, c: guide})
''')),
    # a per-datapoint vector without .to_event(1): its size-2 dimension collides with the plate
    "missing to_event": ("shape", ["'z'", "to_event"], GOOD.replace(
        "dist.Normal(like.new_zeros(config.latent_dim), 1.0).to_event(1)",
        "dist.Normal(like.new_zeros(config.latent_dim), 1.0)")),
    # a global site with a batch shape no plate accounts for
    "global batch shape": ("shape", ["'shift'", "to_event"], GOOD.replace(
        "    n = x.shape[0]",
        "    shift = pyro.sample('shift', dist.Normal(like.new_zeros(config.dim), 1.0))\n"
        "    n = x.shape[0]").replace("mean = loc + z", "mean = loc + shift + z").replace(
        'local_sites=("z",)', 'local_sites=("z",), global_sites=("shift",)')),
    # one .to_event too many: the observation's event shape swallows the data plate
    "to_event swallows the plate": ("shape", ["'x'", "swallows"], GOOD.replace(
        "dist.Normal(mean, noise).to_event(1)", "dist.Normal(mean, noise).to_event(2)")),
    # the guide forgets .to_event(1) on the per-datapoint vector
    "guide to_event": ("shape", ["'z'", "(guide mine)", "to_event"], GOOD.replace(
        'declare("broken", model, config=Config, local_sites=("z",))', '''
def guide(x=None, *, num_data=None, subsample_size=None):
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        pyro.sample("z", dist.Normal(x.new_zeros(len(idx), 2), 1.0))


declare("broken", model, config=Config, local_sites=("z",), guides={"mine": lambda m, c: guide})
''')),
    # the guide draws a 3-vector where the model has a 2-vector
    "guide shape": ("shape", ["'z'", "(guide mine)", "(32, 3)"], GOOD.replace(
        'declare("broken", model, config=Config, local_sites=("z",))', '''
def guide(x=None, *, num_data=None, subsample_size=None):
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        pyro.sample("z", dist.Normal(x.new_zeros(len(idx), 3), 1.0).to_event(1))


declare("broken", model, config=Config, local_sites=("z",), guides={"mine": lambda m, c: guide})
''')),
    # a local latent drawn for all rows outside the data plate
    "local site outside the plate": ("plate", ["'z'", "outside pyro.plate('data')"], '''
def model(x=None, *, num_data=None, subsample_size=None, config):
    like = x if x is not None else torch.zeros(())
    loc, weight, noise = parameters(config, like)
    n = x.shape[0] if x is not None else num_data
    z = pyro.sample("z", dist.Normal(like.new_zeros(n, config.latent_dim), 1.0).to_event(2))
    with pyro.plate("data", n, subsample_size=subsample_size, device=like.device) as idx:
        pyro.sample("x", dist.Normal(loc + z[idx] @ weight.T, noise).to_event(1),
                    obs=None if x is None else x[idx])


declare("broken", model, config=Config, local_sites=("z",))
'''),
    # the plate is the minibatch: rows drawn by hand, so nothing scales them by N / B
    "subsampling by hand": ("subsampling", ["'z'", "N / B"], '''
def model(x=None, *, num_data=None, subsample_size=None, config):
    like = x if x is not None else torch.zeros(())
    loc, weight, noise = parameters(config, like)
    n = x.shape[0] if x is not None else num_data
    rows = torch.randperm(n, device=like.device)[:subsample_size or n]
    with pyro.plate("data", len(rows), device=like.device):
        z = pyro.sample("z", dist.Normal(like.new_zeros(config.latent_dim), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(loc + z @ weight.T, noise).to_event(1),
                    obs=None if x is None else x[rows])


declare("broken", model, config=Config, local_sites=("z",))
'''),
    # the plate scales by N / B and the model scales again
    "scaled twice": ("subsampling", ["'x'", "scaled twice"], GOOD.replace(
        """        pyro.sample("x", dist.Normal(mean, noise).to_event(1),
                    obs=None if x is None else x[idx])""",
        """        with poutine.scale(scale=n / len(idx)):
            pyro.sample("x", dist.Normal(mean, noise).to_event(1),
                        obs=None if x is None else x[idx])""")),
    # a mixture whose code flattens the assignment: parallel enumeration cannot work
    "enumeration breaks": ("enumeration", ["'assignment'", "new dimension on the left"], '''
def model(x=None, *, num_data=None, subsample_size=None, config):
    like = x if x is not None else torch.zeros(())
    locs = pyro.param("locs", lambda: torch.linspace(-1, 1, 4, dtype=like.dtype,
                                                     device=like.device).reshape(2, 2))
    n = x.shape[0] if x is not None else num_data
    with pyro.plate("data", n, subsample_size=subsample_size, device=like.device) as idx:
        assignment = pyro.sample("assignment", dist.Categorical(logits=like.new_zeros(2)))
        pyro.sample("x", dist.Normal(locs[assignment.view(-1)], 1.0).to_event(1),
                    obs=None if x is None else x[idx])


declare("broken", model, config=Config, local_sites=("assignment",))
'''),
    # a discrete latent with infinite support cannot be enumerated
    "infinite support": ("enumeration", ["'count'", "cannot be enumerated"], '''
def model(x=None, *, num_data=None, subsample_size=None, config):
    like = x if x is not None else torch.zeros(())
    loc, weight, noise = parameters(config, like)
    n = x.shape[0] if x is not None else num_data
    with pyro.plate("data", n, subsample_size=subsample_size, device=like.device) as idx:
        count = pyro.sample("count", dist.Poisson(like.new_ones(())))
        pyro.sample("x", dist.Normal(loc + count[..., None], noise).to_event(1),
                    obs=None if x is None else x[idx])


declare("broken", model, config=Config, local_sites=("count",))
'''),
    # a tensor made without device=: on a GPU it stays on the CPU
    "tensor on the wrong device": ("device", ["'z'", "device="], GOOD.replace(
        "dist.Normal(like.new_zeros(config.latent_dim), 1.0)",
        "dist.Normal(torch.zeros(config.latent_dim), 1.0)")),
    # a latent site's distribution from Python numbers: its draws are made on the CPU
    "distribution of numbers": ("device", ["'z'", "Python numbers"], GOOD.replace(
        "dist.Normal(like.new_zeros(config.latent_dim), 1.0).to_event(1)",
        "dist.Normal(0.0, 1.0).expand([config.latent_dim]).to_event(1)")),
    # a scale parameter without constraints.positive
    "parameter without constraint": ("constraint", ["'noise'", "constraints.positive"],
                                     GOOD.replace(
        "loc, weight, noise = parameters(config, like)",
        "loc, weight, _ = parameters(config, like)\n"
        "    noise = pyro.param('noise_scale', lambda: like.new_ones(()))").replace(
        "dist.Normal(mean, noise)", "dist.Normal(mean, noise)").replace(
        "'noise_scale'", "'noise'").replace(
        'noise = pyro.param("noise", lambda: like.new_ones(()), constraint=constraints.positive)',
        'pass')),
    # a guide's scale parameter without a constraint
    "guide parameter without constraint": ("constraint", ["'z_scale'", "constraints.positive"],
                                           GOOD.replace(
        'declare("broken", model, config=Config, local_sites=("z",))', '''
def guide(x=None, *, num_data=None, subsample_size=None):
    z_loc = pyro.param("z_loc", lambda: x.new_zeros(x.shape[0], 2))
    z_scale = pyro.param("z_scale", lambda: x.new_ones(x.shape[0], 2))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        pyro.sample("z", dist.Normal(z_loc[idx], z_scale[idx]).to_event(1))


declare("broken", model, config=Config, local_sites=("z",), guides={"mine": lambda m, c: guide})
''')),
    # per-datapoint guide parameters used whole inside a subsampled plate
    "guide parameters not subsampled": ("subsampling", ["'z'", "(guide mine)", "loc[idx]"],
                                        GOOD.replace(
        'declare("broken", model, config=Config, local_sites=("z",))', '''
def guide(x=None, *, num_data=None, subsample_size=None):
    z_loc = pyro.param("z_loc", lambda: x.new_zeros(x.shape[0], 2))
    z_scale = pyro.param("z_scale", lambda: x.new_ones(x.shape[0], 2),
                         constraint=constraints.positive)
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size):
        pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))


declare("broken", model, config=Config, local_sites=("z",), guides={"mine": lambda m, c: guide})
''')),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_model_is_caught_with_its_site_named(capsys, tmp_path, case):
    kind, words, body = BROKEN[case]
    code, out, err = run_check(capsys, write_model(tmp_path, body))
    assert code == 2, f"{case}: not caught\n{out}{err}"
    lines = [line for line in out.splitlines() if line.startswith(f"{kind}: ")]
    assert lines, f"{case}: no {kind} problem in\n{out}"
    text = "\n".join(lines)
    for word in words:
        assert word in text, f"{case}: {word!r} missing from\n{out}"


@pytest.mark.parametrize("name", sorted(models()))
def test_every_registered_model_passes(capsys, name):
    """The built-in models and the worked examples, with their default data and guides."""
    code, out, err = run_check(capsys, name)
    assert code == 0, out + err
    assert out.startswith(f"ok: model '{name}'")


def test_json_report_and_python_call_agree(capsys, tmp_path):
    reference = write_model(tmp_path, BROKEN["scaled twice"][2])
    code, out, _ = run_check(capsys, reference, "--json")
    assert code == 2
    report = json.loads(out)
    assert report["ok"] is False and report["rows"] == 32
    assert [p["site"] for p in report["problems"]] == ["x"]
    again = check(reference, standardize=True, rows=32)
    assert [p.line() for p in again.problems] == [
        f"{p['kind']}: site '{p['site']}': {p['what']}; {p['fix']}" for p in report["problems"]]


def test_only_the_named_guides_are_checked(capsys, tmp_path):
    reference = write_model(tmp_path, GOOD)
    code, out, _ = run_check(capsys, reference, "--guides", "amortized")
    assert code == 0 and "(amortized)" in out
    code, _, err = run_check(capsys, reference, "--guides", "nope")
    assert code == 2 and "no guide nope" in err
