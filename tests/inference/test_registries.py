"""The house: a strategy or a guide declared in a test file reaches `lvm-zoo list`, `fit` and
`compare` with no other file changed; the zoo never loads guides or inference."""

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import pytest
import torch

from guides import registry as guide_registry
from inference import strategies
from inference.catalog import get_model
from inference.cli import main
from inference.results import FitResult
from inference.strategies import DEFAULT_CONTEXT, Strategy


@dataclass(frozen=True)
class MomentOptions:
    shrink: float | None = field(default=None, metadata={
        "help": "pull the means towards the grand mean by this share (default 0)",
        "min": 0.0})


class MomentMatching(Strategy):
    """A toy strategy: deal the rows out to the components in turn (row n to component
    n mod K), take each component's moments (the model's M-step on those assignments), and
    pull the means ``shrink`` of the way towards the grand mean."""

    name = "toy-moments"
    summary = "moments of rows dealt out in turn (a test's toy)"
    Options = MomentOptions
    baseline = True

    def applies(self, spec) -> bool:
        return spec.from_assignments is not None

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
    yield "toy-moments"
    strategies.unregister("toy-moments")


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
