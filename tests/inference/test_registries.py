"""The house: one way to extend. A strategy or a guide declared in a test file, and a model
family, a guide and a strategy of a separately installed distribution (its entry points), reach
`lvm-zoo list`, `fit`, `compare` and the estimators with no other file changed; what is
registered is checked by its properties; the zoo never loads guides or inference."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import tomllib
import torch

from guides import registry as guide_registry
from guides.registry import GuideEntry
from inference import strategies
from inference.catalog import get_model, models
from inference.cli import main
from inference.estimators_sklearn import base as estimators
from inference.figures import MODEL_FIGURES
from inference.results import FitResult
from inference.strategies import DEFAULT_CONTEXT, Strategy
from inference.svi import ELBOS
from zoo import registry as model_registry
from zoo.errors import InputError
from zoo.plugins import Registry
from zoo.registry import HARD_ASSIGNMENT_M_STEP

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tests" / "data" / "plugin"  # an installed distribution: a package + dist-info


@dataclass(frozen=True)
class MomentOptions:
    shrink: float | None = field(default=None, metadata={
        "help": "pull the means towards the grand mean by this share (default 0)",
        "min": 0.0})


class MomentMatching(Strategy):
    """A toy strategy: deal the rows out to the components in turn (row n to component
    n mod K), take each component's moments (the model's M-step on those assignments), and
    pull the means ``shrink`` of the way towards the grand mean."""

    name = "toy-dealt"
    summary = "moments of rows dealt out in turn (a test's toy)"
    Options = MomentOptions
    requires = (HARD_ASSIGNMENT_M_STEP,)
    baseline = True

    def fit(self, spec, config, x, options, *, guide=None, context=DEFAULT_CONTEXT):
        start = time.perf_counter()
        labels = torch.arange(x.shape[0], device=x.device) % config.components
        params = spec.from_assignments(config, x, labels)
        shrink = options.shrink or 0.0
        params["means"] = (1 - shrink) * params["means"] + shrink * x.mean(0)
        return FitResult(model=spec.name, inference=self.name, guide=None, params=params,
                         seconds=time.perf_counter() - start, steps=1, converged=True,
                         device=str(x.device), seed=context.seed)


class PriorGuide:
    """A toy guide for the GMM: z from the mixture weights, ignoring x."""

    per_datapoint = False

    def __init__(self, model, config):
        self.model, self.config = model, config

    def __call__(self, x=None, *, num_data=None, subsample_size=None):
        logits = pyro.param("toy_logits", lambda: x.new_zeros(self.config.components))
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, device=x.device):
            pyro.sample("z", dist.Categorical(logits=logits))


@pytest.fixture
def toy_strategy():
    strategies.register(MomentMatching())
    yield "toy-dealt"
    strategies.unregister("toy-dealt")


@pytest.fixture
def toy_guide():
    guide_registry.register("gmm", "toy-prior", PriorGuide)
    yield "toy-prior"
    guide_registry.unregister("gmm", "toy-prior")


def test_a_strategy_from_a_test_file_reaches_list_fit_and_compare(capsys, tmp_path,
                                                                   toy_strategy):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["inference"][toy_strategy]["options"] == ["shrink"]
    assert toy_strategy in listing["models"]["gmm"]["inference"]
    assert toy_strategy not in listing["models"]["ppca"]["inference"]  # applies() says no

    code = main(["fit", "gmm", "--inference", toy_strategy, "--shrink", "0.5",
                 "--out", str(tmp_path / "fit"), "--json"])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and record["inference"] == toy_strategy
    assert (tmp_path / "fit" / "run.json").is_file()
    options = json.loads((tmp_path / "fit" / "run.json").read_text())["options"]
    assert options == {"shrink": 0.5}

    code = main(["compare", "gmm", "--strategies", f"em,{toy_strategy}", "--gap-rows", "0",
                 "--draws", "5", "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    assert code == 0 and toy_strategy in out and "em" in out
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    toy = next(r for r in rows if r["strategy"] == toy_strategy)
    em = next(r for r in rows if r["strategy"] == "em")
    assert toy["train_log_likelihood"] < em["train_log_likelihood"]  # one Gaussian is worse


def test_an_option_of_another_strategy_is_refused_by_name(capsys, toy_strategy):
    code = main(["fit", "gmm", "--inference", "em", "--shrink", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "--shrink does not apply to --inference em; it applies to " \
                         f"--inference {toy_strategy}" in err


def test_a_guide_from_a_test_file_reaches_list_fit_and_compare(capsys, tmp_path, toy_guide):
    assert toy_guide in get_model("gmm").guides
    assert main(["list", "--json"]) == 0
    assert toy_guide in json.loads(capsys.readouterr().out)["models"]["gmm"]["guides"]
    code = main(["fit", "gmm", "--guide", toy_guide, "--steps", "50",
                 "--out", str(tmp_path / "fit"), "--json"])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and record["guide"] == toy_guide
    assert record["gap"] > 0.05  # a guide that ignores x leaves a real gap to log p(x)
    code = main(["compare", "gmm", "--strategies", f"svi-{toy_guide}", "--steps", "50",
                 "--gap-rows", "0", "--draws", "5", "--out", str(tmp_path / "cmp")])
    assert code == 0 and f"svi {toy_guide}" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["zoo", "zoo.registry", "zoo.gmm", "zoo.ppca", "zoo.dglvm",
                                    "zoo.declare", "zoo.mppca", "zoo.student_t_mixture",
                                    "zoo.datasets"])
def test_importing_the_zoo_loads_no_guides_or_inference(module):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('guides', 'inference'))"
            "; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- what is registered, by its properties ----------------------------------------------------


REGISTRIES = {"lvm_zoo.models": model_registry._REGISTRY, "lvm_zoo.guides": guide_registry._GUIDES,
              "lvm_zoo.strategies": strategies._REGISTRY, "lvm_zoo.figures": MODEL_FIGURES,
              "lvm_zoo.estimators": estimators.ESTIMATORS}


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_pyproject_declares_the_built_ins_the_code_loads(group):
    """The built-ins are declared once as entry points, as a plugin declares its own; the code
    keeps the same list (in the same order) so that a source tree needs no reinstall."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    registry = REGISTRIES[group]
    assert registry.group == group
    assert list(declared[group].items()) == list(registry.builtins)


def _module_of(group: str, key, item) -> str:
    if group == "lvm_zoo.models":  # the file that registered it
        return model_registry._SOURCES[key][1]
    if group == "lvm_zoo.guides":
        return item.factory.__module__
    return type(item).__module__ if isinstance(item, Strategy) else item.__module__


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_every_built_in_module_registers_something(group):
    registry = REGISTRIES[group]
    found = {_module_of(group, key, item) for key, item in registry.items()}
    for _, module in registry.builtins:
        path = str(ROOT / (module.replace(".", "/") + ".py"))
        assert module in found or path in found, (group, module)


def test_every_strategy_applies_exactly_where_the_model_has_what_it_requires():
    """For every registered model and strategy: a strategy that leaves ``applies`` to its
    ``requires`` applies exactly where the model has those capabilities; every model has one
    that applies (its default), and a strategy without a guide refuses ``--guide``."""
    for spec in models().values():
        applicable = strategies.applicable(spec)
        assert applicable, spec.name
        assert strategies.get(None, spec).name == applicable[0]
        for name, strategy in strategies.strategies().items():
            assert all(isinstance(c, str) for c in strategy.requires), name
            if type(strategy).applies is Strategy.applies:
                wanted = all(spec.has(c) for c in strategy.requires)
                assert (name in applicable) == wanted, (spec.name, name)
            if strategy.uses_guide and name in applicable:
                assert spec.guides, (spec.name, name)


def test_every_options_field_is_optional_and_described():
    """Every strategy fits with no option given (``None`` means its default), and every option
    has help text for its flag."""
    for name, strategy in strategies.strategies().items():
        assert strategies.make_options(strategy.Options, {}, owner=name) == strategy.Options()
        for f in dataclasses.fields(strategy.Options):
            assert f.default is None and f.metadata.get("help"), (name, f.name)


def test_every_guide_is_a_typed_entry_that_the_catalog_keeps():
    """The catalog hands out the guide registry's entries: per_datapoint as the guide class
    says, one default at most (the spec's default_guide), an estimator SVI knows."""
    for spec in models().values():
        assert spec.default_guide is None or spec.default_guide in spec.guides
        for name, entry in spec.guides.items():
            assert isinstance(entry, GuideEntry) and entry.name == name
            assert entry.per_datapoint == bool(getattr(entry.factory, "per_datapoint", False))
            assert entry.default == (name == spec.default_guide), (spec.name, name)
            assert entry.elbo == spec.default_elbo[name] and entry.elbo in ELBOS


def test_every_figure_and_estimator_belongs_to_a_registered_model():
    names = set(model_registry.models())
    assert set(MODEL_FIGURES) <= names
    assert set(estimators.ESTIMATORS) <= names
    for model, cls in estimators.ESTIMATORS.items():
        assert cls._model == model


def test_a_built_in_strategy_keeps_its_place_whichever_module_is_imported_first():
    """The grid's order (and so each model's default strategy) does not depend on imports."""
    code = ("import inference.strategies.svi, inference.strategies.em; "
            "from inference.strategies import BUILTINS, strategies; "
            "print(list(strategies()) == [name for name, _ in BUILTINS])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "True", done.stdout + done.stderr


def test_a_broken_plugin_is_named_with_its_distribution(tmp_path, monkeypatch):
    info = tmp_path / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[lvm_zoo_test.things]\nbad = no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("lvm_zoo_test.things", "thing")
    with pytest.raises(InputError, match="'bad = no_such_module_here' of distribution "
                                         "'broken-plugin'.*fix or uninstall it"):
        registry.load()
    with pytest.raises(InputError):  # and again on the next look-up: never half-loaded
        list(registry)


def test_lvm_zoos_own_installed_entry_points_are_not_read(tmp_path, monkeypatch):
    """The built-ins come from the code's list, so an installed copy of lvm-zoo older or newer
    than the source tree (naming a module that no longer exists) changes nothing."""
    info = tmp_path / "lvm_zoo-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: LVM_Zoo\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[lvm_zoo_test.things]\nold = no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("lvm_zoo_test.things", "thing")
    assert registry.plugins() == [] and list(registry) == []


# --- a separately installed distribution --------------------------------------------------------

DRIVE = """
import contextlib, io, json, sys
import inference.strategies.em  # imported first on purpose: the grid's order must not change
from inference.cli import main
from inference.data import DataRequest, load
from inference.estimators_sklearn import PyroLatentModel, load as load_run
from inference.strategies import BUILTINS, strategies

out, folder = {}, sys.argv[1]

def run(key, *argv):
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main(list(argv))
    out[key] = [code, text.getvalue()]

run("list", "list", "--json")
run("fit", "fit", "toy-factor", "--inference", "toy-moments", "--out", folder + "/fit", "--json")
run("ppca", "fit", "ppca", "--data", "old-faithful", "--inference", "closed-form",
    "--latent-dim", "1", "--json")
run("guide", "fit", "gmm", "--guide", "toy-prior", "--steps", "30", "--json")
run("compare", "compare", "toy-factor", "--strategies", "toy-moments,svi-amortized",
    "--steps", "20", "--gap-rows", "0", "--draws", "5", "--out", folder + "/cmp", "--json")
from inference.catalog import get_model
x = load(DataRequest("old-faithful"), get_model("toy-factor")).train.double().numpy()
fitted = PyroLatentModel("toy-factor", inference="toy-moments").fit(x)
out["estimator"] = [fitted.inference_, fitted.score(x), load_run(folder + "/fit").score(x),
                    type(load_run(folder + "/fit")).__name__]
out["order"] = list(strategies())
out["builtins"] = [name for name, _ in BUILTINS]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """One process with the plugin distribution on its path, as `pip install` would leave it:
    list, fit, compare and the estimators, through lvm-zoo's own entry points only."""
    folder = tmp_path_factory.mktemp("plugin")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGIN), str(ROOT)]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", DRIVE, str(folder)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for key, value in results.items():
        if isinstance(value, list) and len(value) == 2 and value[0] in (0, 1, 2):
            code, text = value
            assert code == 0, (key, done.stderr[-3000:])
            results[key] = json.loads(text) if text.strip().startswith(("{", "[")) else text
    return results


def test_a_plugin_model_family_strategy_and_guide_reach_list(plugin_run):
    listing = plugin_run["list"]
    family = listing["models"]["toy-factor"]
    assert family["inference"] == ["svi", "toy-moments"]  # its capability, and its guides
    assert family["guides"] == ["auto-normal", "amortized", "flow"]  # the generic guides
    assert "toy-moments" in listing["inference"]
    for name, model in listing["models"].items():  # no built-in offers the plugin's capability
        assert ("toy-moments" in model["inference"]) == (name == "toy-factor")
    assert "toy-prior" in listing["models"]["gmm"]["guides"]
    # the built-ins first, in the grid's order, then the plugin's
    assert plugin_run["order"] == [*plugin_run["builtins"], "toy-moments"]


def test_a_plugin_model_family_and_strategy_fit_to_maximum_likelihood(plugin_run):
    """The plugin's moments fit of one factor is probabilistic PCA with q = 1: its log p(x)
    is the built-in PPCA closed form's (Tipping & Bishop) on the same split."""
    record, reference = plugin_run["fit"], plugin_run["ppca"]
    assert record["inference"] == "toy-moments" and record["log_likelihood_method"] == "exact"
    assert record["train_log_likelihood"] == pytest.approx(reference["train_log_likelihood"],
                                                           abs=1e-4)
    assert record["test_log_likelihood"] == pytest.approx(reference["test_log_likelihood"],
                                                          abs=1e-4)


def test_a_plugin_guide_for_a_built_in_model_fits(plugin_run):
    record = plugin_run["guide"]
    assert record["guide"] == "toy-prior" and record["inference"] == "svi"
    assert record["gap"] > 0.05  # a guide that ignores x leaves a real gap to log p(x)


def test_a_plugin_model_and_strategy_reach_compare_and_the_estimators(plugin_run):
    rows = plugin_run["compare"]
    rows = rows["rows"] if isinstance(rows, dict) and "rows" in rows else rows
    labels = {row["strategy"] for row in rows}
    assert {"toy-moments", "svi amortized"} <= labels
    moments = next(r for r in rows if r["strategy"] == "toy-moments")
    assert moments["train_log_likelihood"] == pytest.approx(
        plugin_run["fit"]["train_log_likelihood"], abs=1e-4)
    inference, score, loaded, kind = plugin_run["estimator"]
    assert inference == "toy-moments" and kind == "PyroLatentModel"
    assert score == pytest.approx(plugin_run["fit"]["train_log_likelihood"], abs=1e-4)
    assert loaded == pytest.approx(score, abs=1e-4)  # the saved run, as an estimator
