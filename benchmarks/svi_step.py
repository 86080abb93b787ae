"""One Pyro SVI step against a hand-written PyTorch step with the same networks, batch and loss.

The networks are the zoo's own (784-400-20 encoder and 20-400-784 decoder, Bernoulli likelihood,
ReLU); the hand-written step copies their weights, draws the same kind of minibatch (128 rows
by index from data already on the device, as ``pyro.plate`` subsampling does), computes the same
one-sample ELBO, scaled to the whole data set as the plate scales it, and takes one Adam step.

Both steps are timed in alternating rounds in one run (the ratio is what matters on a shared
machine); the medians over rounds are reported. Variants (:data:`VARIANTS`): ``Trace_ELBO``
(Monte Carlo KL), ``JitTrace_ELBO`` and ``TraceMeanField_ELBO`` (closed-form KL, against a
hand-written closed-form KL); Pyro's argument validation on (as ``fit_svi`` runs) and off;
Pyro's per-parameter optimizer (``SVI.step``) or one torch Adam after Pyro's
``loss_and_grads``. On a GPU it also reports seconds per MNIST epoch.

    python benchmarks/svi_step.py [--threads 2] [--rounds 7] [--steps 50] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guides.dglvm import AmortizedGuide  # noqa: E402
from inference.svi import make_elbo  # noqa: E402
from zoo.dglvm import DGLVMConfig, gaussian_kl, make_model  # noqa: E402

BATCH, LR = 128, 1e-3
CONFIG = DGLVMConfig(dim=784, latent_dim=20, hidden=(400,), likelihood="bernoulli")


def load_mnist(data_root: str | None, device: torch.device) -> torch.Tensor:
    """MNIST training images in [0, 1], on the device once; random pixels if absent."""
    try:
        from zoo.datasets import load_dataset

        root = data_root or str(Path(__file__).resolve().parents[2] / "shared" / "data")
        return load_dataset("mnist", root=root).train.to(device)
    except Exception as error:  # noqa: BLE001 - a benchmark falls back, it does not fail
        print(f"MNIST not loaded ({error}); timing on random pixels", file=sys.stderr)
        return torch.rand(60000, 784, device=device)


class PyroStep:
    """One SVI step on the zoo's model and encoder guide.

    ``optimizer="pyro"`` is ``pyro.infer.SVI.step`` with ``pyro.optim.Adam``, exactly what
    ``inference.svi.fit_svi`` runs: Pyro keeps one torch optimizer per parameter and zeroes
    gradients by allocating new tensors. ``optimizer="torch"`` keeps Pyro's ELBO
    (``loss_and_grads``: the traces, the estimator, the plate's subsampling and scaling) and
    steps one ``torch.optim.Adam`` over every parameter in the param store.
    """

    def __init__(self, x: torch.Tensor, elbo: str, validation: bool, optimizer: str = "pyro"):
        self.x, self.validation = x, validation
        pyro.clear_param_store()
        pyro.enable_validation(validation)
        self.model = make_model(CONFIG)
        self.guide = AmortizedGuide(self.model, CONFIG)
        options = {"ignore_jit_warnings": True} if elbo.startswith("Jit") else {}
        self.elbo = make_elbo(elbo, **options)
        self.svi = pyro.infer.SVI(self.model, self.guide, pyro.optim.Adam({"lr": LR}),
                                  self.elbo)
        self.svi.step(self.x, subsample_size=BATCH)  # registers the parameters (traces the JIT)
        self.torch_optimizer = None
        if optimizer == "torch":
            params = [p for _, p in pyro.get_param_store().named_parameters()]
            self.torch_optimizer = torch.optim.Adam(params, lr=LR)

    def __call__(self) -> float:
        pyro.enable_validation(self.validation)
        if self.torch_optimizer is None:
            return self.svi.step(self.x, subsample_size=BATCH)
        self.torch_optimizer.zero_grad()
        loss = self.elbo.loss_and_grads(self.model, self.guide, self.x, subsample_size=BATCH)
        self.torch_optimizer.step()
        return loss


class TorchStep:
    """The same ELBO by hand: encoder, reparameterized z, decoder, Bernoulli log-likelihood,
    KL by Monte Carlo (log q − log p at z) or in closed form; scaled by N / B like the plate."""

    def __init__(self, x: torch.Tensor, pyro_step: PyroStep, closed_form_kl: bool):
        self.x, self.closed_form_kl = x, closed_form_kl
        self.encoder = copy.deepcopy(pyro_step.guide.encoder)
        self.decoder = copy.deepcopy(pyro_step.model.decoder)
        self.optimizer = torch.optim.Adam([*self.encoder.parameters(),
                                           *self.decoder.parameters()], lr=LR)
        self.scale = x.shape[0] / BATCH

    def __call__(self) -> float:
        rows = torch.randperm(self.x.shape[0], device=self.x.device)[:BATCH]
        batch = self.x[rows]
        loc, scale = self.encoder(batch)
        z = loc + scale * torch.randn_like(loc)
        logits, _ = self.decoder(z)
        log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, batch, reduction="sum")
        if self.closed_form_kl:
            kl = gaussian_kl(loc, scale).sum()
        else:
            q = torch.distributions.Normal(loc, scale)
            kl = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum()
        loss = -(log_likelihood - kl) * self.scale
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def _timed(step, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def compare(x, elbo: str, validation: bool, optimizer: str, rounds: int, steps: int) -> dict:
    pyro_step = PyroStep(x, elbo, validation, optimizer)
    torch_step = TorchStep(x, pyro_step, closed_form_kl="MeanField" in elbo)
    for step in (pyro_step, torch_step):  # warm up
        _timed(step, 5, x.device)
    pyro_times, torch_times = [], []
    for _ in range(rounds):
        pyro_times.append(_timed(pyro_step, steps, x.device))
        torch_times.append(_timed(torch_step, steps, x.device))
    # per-round ratios pair the two under the same load; the median ratio is the headline
    ratios = [p / t for p, t in zip(pyro_times, torch_times, strict=True)]
    return {"elbo": elbo, "validation": validation, "optimizer": optimizer,
            "pyro_ms": 1e3 * statistics.median(pyro_times),
            "torch_ms": 1e3 * statistics.median(torch_times),
            "ratio": statistics.median(ratios)}


VARIANTS = (  # (ELBO, Pyro validation, optimizer)
    ("Trace_ELBO", True, "pyro"),  # fit_svi as it runs today
    ("Trace_ELBO", False, "pyro"),
    ("JitTrace_ELBO", False, "pyro"),
    ("Trace_ELBO", False, "torch"),
    ("JitTrace_ELBO", False, "torch"),
    ("TraceMeanField_ELBO", False, "torch"),
)


def default_path(x, rounds: int, steps: int) -> dict:
    """What ``lvm-zoo fit dglvm`` runs at its defaults: ``inference.strategies.fit`` (the SVI
    strategy: the model's svi_defaults, its default ELBO with JIT and fallback, one torch
    Adam, the stopping rule off so every step runs), ``steps`` steps a round, setup and JIT
    compilation included, against as many hand-written steps in the same round."""
    from inference.catalog import get_model
    from inference.strategies import fit

    spec = get_model("dglvm")
    config = spec.make_config(dim=784, latent_dim=20, hidden=(400,), likelihood="bernoulli")
    reference = TorchStep(x, PyroStep(x, "Trace_ELBO", False, "torch"), closed_form_kl=False)
    _timed(reference, 5, x.device)
    ours, theirs, estimator = [], [], None
    for round_ in range(rounds):
        start = time.perf_counter()
        # every row trained on, as the hand-written loop does: the default held-out split
        # (--validation 0.1) would add its periodic held-out ELBO, a feature, not the step
        result = fit(spec, config, x, steps=steps, batch_size=BATCH, stop_tol=0.0,
                     seed=round_, validation=0.0)
        ours.append((time.perf_counter() - start) / steps)
        estimator = result.info["elbo_estimator"]
        theirs.append(_timed(reference, steps, x.device))
    ratios = [p / t for p, t in zip(ours, theirs, strict=True)]
    return {"elbo": f"default ({estimator})", "validation": True, "optimizer": "fit",
            "pyro_ms": 1e3 * statistics.median(ours),
            "torch_ms": 1e3 * statistics.median(theirs), "ratio": statistics.median(ratios)}


def seconds_per_epoch(x, elbo: str = "Trace_ELBO", optimizer: str = "pyro") -> float:
    pyro_step = PyroStep(x, elbo, validation=False, optimizer=optimizer)
    steps = math.ceil(x.shape[0] / BATCH)
    return _timed(pyro_step, steps, x.device) * steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed round")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--default-steps", type=int, default=300,
                        help="steps per round of the default-path row (setup included)")
    parser.add_argument("--only-default", action="store_true",
                        help="time only the default path against the hand-written step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    pyro.set_rng_seed(0)
    x = load_mnist(args.data_root, device)
    print(f"784-400-20 Bernoulli VAE, batch {BATCH}, {x.shape[0]} rows on {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, pyro "
          f"{pyro.__version__}")
    print(f"{'estimator':<22}{'validation':>11}{'optimizer':>10}{'pyro ms':>10}{'torch ms':>10}"
          f"{'ratio':>8}")
    rows = [] if args.only_default else VARIANTS
    default = default_path(x, args.rounds, args.default_steps)
    print(f"{default['elbo']:<22}{'first step':>11}{'fit':>10}{default['pyro_ms']:>10.2f}"
          f"{default['torch_ms']:>10.2f}{default['ratio']:>8.3f}", flush=True)
    for elbo, validation, optimizer in rows:
        row = compare(x, elbo, validation, optimizer, args.rounds, args.steps)
        print(f"{row['elbo']:<22}{str(row['validation']):>11}{optimizer:>10}"
              f"{row['pyro_ms']:>10.2f}{row['torch_ms']:>10.2f}{row['ratio']:>8.3f}", flush=True)
    if device.type == "cuda":
        for optimizer in ("pyro", "torch"):
            print(f"seconds per MNIST epoch (Trace_ELBO, {optimizer} Adam, {device}): "
                  f"{seconds_per_epoch(x, optimizer=optimizer):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
