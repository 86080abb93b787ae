"""zoo.declare: a model written in any file gets what the built-in models get. The main check
writes a model into a temporary file and runs `lvm-zoo fit`, `lvm-zoo compare` (with its
report) and `lvm-zoo check` on it, as a user would."""

import dataclasses
import json
import textwrap
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import zoo.registry
from inference import catalog, strategies
from inference.catalog import get_model
from inference.cli import main
from zoo import InputError, ModelSpec, declare

MODEL_FILE = '''
"""One factor: z_n ~ N(0, 1), x_n | z_n ~ N(loc + w z_n, noise^2 I)."""
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from zoo import declare


@dataclass(frozen=True)
class Config:
    init_scale: float = field(default=0.5, metadata={"help": "initial factor loading"})


def factor_model(x=None, *, num_data=None, subsample_size=None, config):
    """one-factor model declared in a user file"""
    like = x if x is not None else torch.zeros(())
    loc = pyro.param("loc", lambda: like.new_zeros(config.dim))
    weight = pyro.param("weight", lambda: like.new_full((config.dim,), config.init_scale))
    noise = pyro.param("noise", lambda: like.new_ones(()), constraint=constraints.positive)
    n = x.shape[0] if x is not None else num_data
    with pyro.plate("data", n, subsample_size=subsample_size, device=like.device) as rows:
        z = pyro.sample("z", dist.Normal(like.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(loc + weight * z.unsqueeze(-1), noise).to_event(1),
                    obs=None if x is None else x[rows])


declare("my-factor", factor_model, config=Config, local_sites=("z",),
        svi_defaults={"steps": 40, "lr": 0.05})
'''


@pytest.fixture(autouse=True)
def _clean_registry():
    registry = zoo.registry.models()
    yield
    zoo.registry._REGISTRY.clear()
    zoo.registry._REGISTRY.update(registry)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_FILE)
    return f"{path}:my-factor"


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_model_in_a_temporary_file_is_fitted_compared_reported_and_checked(
        capsys, tmp_path, model_file):
    code, out, err = cli(capsys, "fit", model_file, "--standardize", "--guide", "amortized",
                         "--out", str(tmp_path / "fit"), "--iwae-samples", "50", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["model"] == "my-factor" and record["guide"] == "amortized"
    assert record["log_likelihood_method"] == "iwae-50" and record["test_log_likelihood"]
    run = json.loads((tmp_path / "fit" / "run.json").read_text())
    assert run["model_ref"] == model_file  # a new process finds the model again by its file

    code, out, err = cli(capsys, "compare", model_file, "--standardize", "--steps", "30",
                         "--iwae-samples", "20", "--gap-rows", "0", "--draws", "10",
                         "--out", str(tmp_path / "compare"), "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert {row["guide"] for row in rows} == {"auto-normal", "amortized", "flow"}
    assert all(row["elbo"] is not None for row in rows)
    compare_dir = tmp_path / "compare"
    assert (compare_dir / "comparison.json").exists()
    assert (compare_dir / "report.html").exists()
    assert "my-factor" in (compare_dir / "report.html").read_text()

    code, out, err = cli(capsys, "check", model_file, "--standardize", "--rows", "24")
    assert code == 0, out + err
    assert out.startswith("ok: model 'my-factor'")


def test_its_options_come_from_its_config(capsys, model_file):
    with pytest.raises(SystemExit):
        main(["fit", model_file, "--help"])
    assert "--init-scale" in capsys.readouterr().out


def test_declare_builds_a_registered_spec_with_generic_guides(model_file):
    spec = get_model(model_file)
    assert isinstance(spec, ModelSpec) and zoo.registry.models()["my-factor"].name == spec.name
    assert spec.summary == "one-factor model declared in a user file"  # from the docstring
    assert spec.local_sites == ("z",) and spec.global_sites == ()
    assert list(spec.guides) == ["auto-normal", "amortized", "flow"]
    # no closed forms declared: only the strategies that fit with a guide apply
    assert all(strategies.strategies()[s].uses_guide for s in strategies.applicable(spec))
    names = {f.name for f in dataclasses.fields(spec.config_class)}
    assert names == {"dim", "init_scale"}  # dim added, filled in from the data
    config = spec.make_config(3, init_scale=0.25)
    config.validate(10)  # a validate method was added too
    assert config.dim == 3 and config.init_scale == 0.25


def test_initial_parameters_start_the_fit(model_file):
    """``make_model(config, params)`` starts the ``pyro.param`` sites at ``params`` (EM's or
    ``init_params``'s values), with the model's own constraints."""
    spec = get_model(model_file)
    config = spec.make_config(2)
    start = {"loc": torch.tensor([1.0, -1.0]), "noise": torch.tensor(0.3)}
    x = torch.randn(5, 2)
    with pyro.get_param_store().scope():
        trace = poutine.trace(spec.make_model(config, start)).get_trace(x)
        assert torch.equal(trace.nodes["loc"]["value"], start["loc"])
        assert torch.allclose(trace.nodes["noise"]["value"], start["noise"])
        assert torch.equal(trace.nodes["weight"]["value"], torch.full((2,), 0.5))


def _mixture(x=None, *, num_data=None, subsample_size=None):
    like = x if x is not None else torch.zeros(())
    n = x.shape[0] if x is not None else num_data
    locs = pyro.param("locs", lambda: torch.stack([like.new_zeros(2), like.new_ones(2)]))
    with pyro.plate("data", n, subsample_size=subsample_size, device=like.device) as rows:
        c = pyro.sample("c", dist.Categorical(logits=like.new_zeros(2)))
        pyro.sample("x", dist.Normal(locs[c], 1.0).to_event(1),
                    obs=None if x is None else x[rows])


def test_decorator_form_and_discrete_sites():
    @declare("test-mixture-decorated", local_sites=("c",))
    def model(x=None, *, num_data=None, subsample_size=None):
        return _mixture(x, num_data=num_data, subsample_size=subsample_size)

    assert callable(model) and model.__name__ == "model"  # the function comes back unchanged
    spec = catalog.models()["test-mixture-decorated"]
    assert list(spec.guides) == ["auto-normal", "amortized"]  # no continuous site to flow
    assert set(spec.default_elbo.values()) == {"TraceEnum_ELBO"}  # c is enumerated
    assert spec.config_class().dim == 2


def test_own_guides_replace_the_generic_ones():
    def guide_factory(model, config):
        return lambda x=None, **_: None

    spec = declare("test-own-guides", _mixture, local_sites=("c",),
                   guides={"mine": guide_factory}, default_elbo={"mine": "TraceEnum_ELBO"},
                   default_guide="mine")
    spec = catalog.join(spec)
    assert list(spec.guides) == ["mine"] and spec.default_guide == "mine"


@dataclass(frozen=True)
class _Options:
    components: int = 2


BAD_DECLARATIONS = {
    "name with a colon": (dict(name="a:b", model=_mixture), "name"),
    "not callable": (dict(name="x", model=3), "model must be a function"),
    "no zoo signature": (dict(name="x", model=lambda x: None), "num_data, subsample_size"),
    "site declared twice": (dict(name="x", model=_mixture, local_sites=("c",),
                                 global_sites=("c",)), "both local and global"),
    "sites as a string": (dict(name="x", model=_mixture, local_sites="c"), "tuple of site"),
    "config instance": (dict(name="x", model=_mixture, config=_Options()), "dataclass"),
    "unknown default guide": (dict(name="x", model=_mixture, local_sites=("c",),
                                   default_guide="nope"), "default_guide 'nope'"),
    "elbo for a missing guide": (dict(name="x", model=_mixture, local_sites=("c",),
                                      default_elbo={"nope": "Trace_ELBO"}), "nope"),
}


@pytest.mark.parametrize("case", list(BAD_DECLARATIONS))
def test_bad_declarations_say_what_to_fix(case):
    arguments, words = BAD_DECLARATIONS[case]
    arguments = dict(arguments)
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        # defaults that name generic guides are checked where the guides are joined
        catalog.join(declare(arguments.pop("name"), arguments.pop("model"), **arguments))


def test_a_model_file_with_a_declaration_error_exits_2(capsys, tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent('''
        from zoo import declare
        def model(x=None, *, num_data=None, subsample_size=None):
            pass
        declare("bad", model, local_sites=("z",), global_sites=("z",))
    '''))
    code, _, err = cli(capsys, "fit", f"{path}:bad")
    assert code == 2 and "both local and global" in err


def test_config_fields_keep_their_types_and_defaults():
    @dataclass(frozen=True)
    class Config:
        latent_dim: int = field(default=3, metadata={"help": "q"})

    spec = declare("test-config", _mixture, config=Config, local_sites=("c",))
    assert spec.make_config(4).latent_dim == 3
    with pytest.raises(InputError, match="--components"):
        spec.make_config(4, components=2)
