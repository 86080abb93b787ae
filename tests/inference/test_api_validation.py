"""Every keyword of the Python face and every flag of the command line is checked, before any
data or work, against what its field declares (:func:`inference.strategies.checked_fields`:
the field's type, ``min``, ``positive``, ``choices``; a float is finite): a strategy's options,
a model's config fields and the data request alike. A numerical failure that the options or
the data caused ends in one line that names them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path

import numpy as np
import pytest

from inference import api, fitting, strategies
from inference.catalog import models
from inference.check import check
from inference.cli import main
from inference.data import DataRequest
from zoo.errors import InputError

TOY = str(Path(__file__).resolve().parents[1] / "data" / "toy_model.py") + ":toy"


@pytest.mark.parametrize(("value", "words"), [
    (2.5, "--components=2.5 must be int, got float"),
    ("3", "--components='3' must be int, got str"),
    (True, "--components=True must be int, got bool"),
])
def test_a_model_option_of_the_wrong_type_names_the_option_and_the_type(value, words):
    with pytest.raises(InputError) as raised:
        api.fit("gmm", components=value)
    assert str(raised.value) == words
    with pytest.raises(InputError) as again:  # check plans through the same plan()
        check("gmm", components=value)
    assert str(again.value) == words


def _int_fields():
    for name, spec in models().items():
        hints = typing.get_type_hints(spec.config_class)
        for field in dataclasses.fields(spec.config_class):
            if hints[field.name] is int and field.metadata.get("cli", True):
                yield name, field.name


@pytest.mark.parametrize(("model", "option"), list(_int_fields()))
def test_every_integer_config_field_of_every_model_refuses_a_fraction(model, option):
    with pytest.raises(InputError, match=rf"--{option.replace('_', '-')}=2\.5 must be int"):
        fitting.plan(model, **{option: 2.5})


def _positive_options():
    for strategy in strategies.strategies().values():
        for field in dataclasses.fields(strategy.Options):
            if field.metadata.get("positive"):
                yield strategy.name, field.name


@pytest.mark.parametrize(("strategy", "option"), list(_positive_options()))
@pytest.mark.parametrize("value", [math.inf, math.nan, 0.0, -1.0])
def test_every_positive_option_must_be_finite_and_positive(strategy, option, value):
    spec = next(s for s in models().values() if strategy in strategies.applicable(s))
    with pytest.raises(InputError, match=rf"{strategies.flag(option)} {value} must be "
                                         "positive and finite"):
        fitting.plan(spec, inference=strategy, **{option: value})


@pytest.mark.parametrize("lr", ["inf", "0", "-1", "nan"])
def test_lr_on_the_command_line_is_one_line_and_exit_2(capsys, tmp_path, lr):
    code = main(["fit", "gmm", "--inference", "svi", f"--lr={lr}", "--out",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"lvm-zoo: error: --lr {float(lr)} must be positive "
                                        "and finite"]
    assert not (tmp_path / "run").exists()


def test_a_divergence_at_a_huge_learning_rate_is_one_line_naming_it(capsys, tmp_path):
    code = main(["fit", "gmm", "--inference", "svi", "--lr", "1e6", "--steps", "30",
                 "--no-figures", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lvm-zoo: training stopped: "), err
    assert "at step 2 of gmm" in lines[0] and "lower the learning rate (--lr, 1e+06 now)" in \
        lines[0]
    assert "Trace Shapes" not in err and "Traceback" not in err


GENERIC = """
from dataclasses import dataclass, field
import pyro, pyro.distributions as dist
from zoo import declare

@dataclass(frozen=True)
class Config:
    dim: int = field(default=2, metadata={"cli": False})

def model(x=None, *, num_data=None, subsample_size=None, config):
    loc = pyro.param("loc", lambda: x.new_zeros(config.dim))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(loc + z[..., None], 1.0).to_event(1), obs=x[idx])

declare("huge-data-model", model, config=Config, local_sites=("z",))
"""


@pytest.mark.parametrize("guide", ["amortized", "auto-normal"])
def test_data_too_large_for_float32_are_refused_suggesting_standardize(capsys, tmp_path,
                                                                         guide):
    """Found by the preflight (the amortized guide's scale overflows) or at SVI's first step
    (the auto-normal guide runs; the loss is infinite): one line, exit 2, the fix."""
    rows = np.random.default_rng(0).normal(size=(60, 2)) * 1e30
    path = tmp_path / "huge.csv"
    np.savetxt(path, rows, delimiter=",")
    reference = TOY
    if guide == "auto-normal":
        (tmp_path / "generic.py").write_text(GENERIC)
        reference = f"{tmp_path / 'generic.py'}:huge-data-model"
    code = main(["fit", reference, "--guide", guide, "--data", str(path), "--steps", "5",
                 "--no-figures", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.search(r"the data reach \d\.\d+e\+30, too large for "
                                         "float32", lines[0]), err
    assert lines[0].endswith("rescale them with --standardize")
    if guide == "auto-normal":
        assert "the loss became inf at step 1" in lines[0]
    assert main(["fit", reference, "--guide", guide, "--data", str(path), "--steps", "5",
                 "--standardize", "--no-figures", "--out", str(tmp_path / "ok")]) == 0


def test_compare_with_no_strategies_is_refused():
    with pytest.raises(InputError, match="--strategies names no cell"):
        api.compare("gmm", strategies=(), seeds=1)


def test_data_keywords_of_the_python_face_are_the_data_request_fields():
    planned = api.plan("gmm", inference="em", standardize=True, test_fraction=0.3)
    assert planned.data == DataRequest(standardize=True, test_fraction=0.3)
    given = api.plan("gmm", inference="em", data=DataRequest("iris"), standardize=True)
    assert given.data == DataRequest("iris", standardize=True)
    with pytest.raises(InputError, match="--standardize='yes' must be bool, got str"):
        api.plan("gmm", standardize="yes")
    with pytest.raises(InputError, match="--test-fraction=True must be float"):
        api.plan("gmm", test_fraction=True)


def test_fit_with_standardize_as_a_keyword_fits_standardized_rows():
    fitted = api.fit("gmm", inference="em", standardize=True, components=2)
    train = fitted.data.train
    assert fitted.data.request.standardize
    assert np.allclose(train.mean(0).numpy(), 0.0, atol=1e-5)  # z-scored by the train rows
    assert np.allclose(train.std(0, unbiased=False).numpy(), 1.0, atol=1e-4)


def test_list_shows_each_models_capabilities_and_the_strategies_they_admit(capsys):
    assert main(["list", "--json"]) == 0
    catalogue = json.loads(capsys.readouterr().out)
    registered = strategies.strategies()
    for name, entry in catalogue["models"].items():
        spec = models()[name]
        assert entry["capabilities"] == [c for c in spec.offered() if spec.has(c)]
        for strategy in registered.values():  # a strategy is listed iff the model has all
            listed = strategy.name in entry["inference"]
            assert listed == strategy.applies(spec)
            if listed:
                assert set(strategy.requires) <= set(entry["capabilities"])
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for entry in catalogue["models"].values():
        assert f"has: {'; '.join(entry['capabilities'])}" in text
