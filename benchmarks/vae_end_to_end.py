"""One whole `lvm-zoo fit` of the deep model against a hand-written PyTorch VAE, in one run.

Both: 784-400-Q (Q = 20 by default), Bernoulli likelihood on grayscale MNIST (the
cross-entropy objective of Pyro's VAE example), batch 128, Adam 1e-3, a single-sample
reparameterized ELBO with the Monte Carlo KL (what Pyro's Trace_ELBO estimates), ``--epochs``
passes, the same number of CPU threads. The hand-written one is trained, then judged by
IWAE-100 on the 10,000 test images; lvm-zoo's is the command a user types,

    lvm-zoo fit dglvm --data mnist --likelihood bernoulli --latent-dim Q --hidden 400
        --epochs E --batch-size 128 --lr 1e-3 --iwae-samples 100 --out DIR --json

run as a subprocess (start-up, data loading, the JIT trace, training, the yardstick on a
5,000-row training subsample and the whole test set, the run folder and its figures
included). Reported: training seconds, end-to-end seconds, test IWAE-100 of each, and the
ratios. Run the two back to back, alternating, ``--repeats`` times; each one's fastest counts.

    python benchmarks/vae_end_to_end.py --epochs 1 --threads 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from zoo.datasets import load_dataset  # noqa: E402


class VAE(nn.Module):
    def __init__(self, latent: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 400), nn.ReLU(), nn.Linear(400, 784))

    def log_weights(self, x: torch.Tensor, particles: int = 1) -> torch.Tensor:
        """log p(x, z) - log q(z | x) for ``particles`` draws per row: ``(particles, n)``."""
        loc, raw = self.encoder(x).chunk(2, dim=-1)
        scale = nn.functional.softplus(raw) + 1e-6
        eps = torch.randn(particles, *loc.shape, device=loc.device)
        z = loc + scale * eps
        logits = self.decoder(z)
        log_px = -nn.functional.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * (eps.square() + math.log(2 * math.pi)) - scale.log()).sum(-1)
        return log_px + log_pz - log_qz


def hand_written(train: torch.Tensor, test: torch.Tensor, epochs: int, latent: int):
    """Train on ``train``'s device (its rows there already); returns (training seconds, total
    seconds with the test IWAE-100, test IWAE-100)."""
    torch.manual_seed(0)
    device = train.device
    synchronize(device)
    began = time.perf_counter()
    model = VAE(latent).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for rows in torch.randperm(train.shape[0], device=device).split(128):
            optimizer.zero_grad(set_to_none=True)
            loss = -model.log_weights(train[rows]).mean() * train.shape[0]
            loss.backward()
            optimizer.step()
    synchronize(device)
    trained = time.perf_counter() - began
    with torch.no_grad():
        total = 0.0
        for rows in torch.arange(test.shape[0], device=device).split(200):
            weights = model.log_weights(test[rows], particles=100)
            total += float((torch.logsumexp(weights, 0) - math.log(100)).sum())
    return trained, time.perf_counter() - began, total / test.shape[0]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lvm_zoo(epochs: int, latent: int, data_root: str):
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "inference", "fit", "dglvm", "--data", "mnist",
                   "--data-root", data_root, "--likelihood", "bernoulli", "--latent-dim",
                   str(latent), "--hidden", "400", "--epochs", str(epochs), "--batch-size",
                   "128", "--lr", "1e-3", "--validation", "0", "--iwae-samples", "100",
                   "--iwae-rows", "all",  # every test image, as the hand-written loop
                   "--out", str(Path(folder) / "run"), "--json"]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - began
    record = json.loads(done.stdout)
    return record["seconds"], wall, record["test_log_likelihood"], record


def main(args) -> None:
    torch.set_num_threads(args.threads)
    dataset = load_dataset("mnist", root=args.data_root)
    runs = {"hand-written": [], "lvm-zoo fit": []}
    for _ in range(args.repeats):
        runs["hand-written"].append(hand_written(dataset.train, dataset.test, args.epochs,
                                                 args.latent_dim))
        runs["lvm-zoo fit"].append(lvm_zoo(args.epochs, args.latent_dim, args.data_root)[:3])
    best = {name: (min(r[0] for r in rs), min(r[1] for r in rs), rs[-1][2])
            for name, rs in runs.items()}
    print(f"784-400-{args.latent_dim} Bernoulli on grayscale MNIST, batch 128, Adam 1e-3, "
          f"{args.epochs} epoch(s), {args.threads} thread(s), best of {args.repeats}")
    for name, (train, wall, iwae) in best.items():
        print(f"  {name:<14} training {train:7.2f} s   end to end {wall:7.2f} s   "
              f"test IWAE-100 {iwae:9.3f}")
    hand, ours = best["hand-written"], best["lvm-zoo fit"]
    print(f"  ratios: training {ours[0] / hand[0]:.2f}x, end to end {ours[1] / hand[1]:.2f}x")


if __name__ == "__main__":
    main(ARGS)
