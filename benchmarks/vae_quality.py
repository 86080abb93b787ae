"""Quality anchors for the deep Gaussian latent-variable model (the VAE) on MNIST.

Two published reference points, each a preset:

- ``pyro``: Pyro's own VAE example (examples/vae/vae.py): 784-400-50, Bernoulli likelihood on
  grayscale MNIST (the cross-entropy objective), Adam 1e-3; test ELBO ≈ −101 nats per image
  after about 95 epochs.
- ``burda``: Burda, Grosse & Salakhutdinov (2016), one-layer VAE 784-200-200-50 on dynamically
  binarized MNIST; test NLL 86.76 nats (IWAE, K = 5000) after 3280 passes with a decaying
  learning rate.

``--likelihood gaussian`` instead fits a Gaussian decoder (learned σ²(z)) to dequantized
MNIST, x̃ = (k + u) / 256 with u ~ U[0, 1), and reports bits per dimension; ``--data
fashion-mnist`` runs the same on Fashion-MNIST. ``--elbo RenyiELBO --num-particles K`` trains on
the IWAE-K bound (Burda et al.: 84.78 nats at K = 50 after 3280 passes); ``--prior vamp`` uses
the VampPrior (Tomczak & Welling 2018: about 85.6 nats after warm-up and many hundreds of
epochs, in reproductions).

Training is ``inference.svi.fit_svi`` one epoch at a time, resumed from its own checkpoint
(so every epoch also exercises checkpoint and resume); after each epoch the held-out ELBO
(all test rows) and IWAE-100 (``--curve-rows`` test rows) are recorded. At the end: the test
ELBO and IWAE-K (K = ``--iwae-samples``, on ``--iwae-rows`` test rows; batched and vectorized,
on the GPU when present). Writes ``results.json`` and figures to ``--out``.

    python benchmarks/vae_quality.py --preset pyro --epochs 10
    python benchmarks/vae_quality.py --preset burda --epochs 10 --iwae-samples 5000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.catalog import get_model  # noqa: E402
from inference.evaluate import fitted, iwae, pointwise_log_weights  # noqa: E402
from inference.figures.dglvm import dglvm_figures  # noqa: E402
from inference.results import FitResult  # noqa: E402
from inference.runs import load_checkpoint  # noqa: E402
from inference.svi import fit_svi  # noqa: E402
from zoo.datasets import load_dataset  # noqa: E402
from zoo.dglvm import bits_per_dim  # noqa: E402

PRESETS = {
    "pyro": {"hidden": (400,), "latent_dim": 50, "binarize": None, "batch_size": 256,
             "reference": "Pyro examples/vae/vae.py: test ELBO ≈ −101 nats (≈ 95 epochs)"},
    "burda": {"hidden": (200, 200), "latent_dim": 50, "binarize": "dynamic", "batch_size": 100,
              "reference": "Burda et al. 2016, VAE k=1 one layer: test NLL 86.76 nats "
                           "(IWAE-5000, 3280 passes)"},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), default="pyro")
    parser.add_argument("--data", choices=("mnist", "fashion-mnist"), default="mnist",
                        help="the 28x28 image set (the presets' anchors are MNIST's)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--elbo", default="Trace_ELBO",
                        help="the training objective: Trace_ELBO, or RenyiELBO (alpha 0) with "
                             "--num-particles K for IWAE-K training (Burda et al.)")
    parser.add_argument("--num-particles", type=int, default=1)
    parser.add_argument("--prior", choices=("standard", "vamp"), default="standard",
                        help="p(z): N(0, I) or the VampPrior (Tomczak & Welling)")
    parser.add_argument("--pseudo-inputs", type=int, default=500,
                        help="K, the VampPrior's pseudo-inputs")
    parser.add_argument("--min-scale", type=float, default=None,
                        help="floor on the gaussian σ (default: 1/(256·√12) ≈ 0.0011, the "
                             "spread of one bin of the dequantized 8-bit pixels)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--iwae-samples", type=int, default=5000)
    parser.add_argument("--iwae-rows", type=int, default=500,
                        help="test rows for the final IWAE-K (all 10000 where a GPU is lent)")
    parser.add_argument("--curve-rows", type=int, default=1000,
                        help="test rows for the per-epoch IWAE-100 curve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-tol", type=float, default=0.0,
                        help="SVI's stopping rule (default 0: a schedule runs every epoch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2]
                                                    / "shared" / "data"))
    parser.add_argument("--resume", action="store_true",
                        help="continue from --out's checkpoint (the epochs before it keep no "
                             "curve); with --epochs at the checkpoint's, only the final figures")
    parser.add_argument("--out", default=None, help="default: runs/vae-quality-<preset>")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[args.preset]
    out = Path(args.out or f"runs/vae-quality-{args.data}-{args.preset}-{args.likelihood}")
    out.mkdir(parents=True, exist_ok=True)
    gaussian = args.likelihood == "gaussian"
    binarize = None if gaussian else preset["binarize"]
    # gaussian: the 8-bit values k / 255 spread over their bins, (k + u) / 256 (the data option)
    dataset = load_dataset(args.data, root=args.data_root, seed=args.seed, dequantize=gaussian)
    x_train, x_test = dataset.train.to(device), dataset.test.to(device)
    if binarize == "dynamic":  # held-out images: one fixed binarization, as Burda et al.
        generator = torch.Generator(device=device).manual_seed(args.seed)
        x_test = torch.bernoulli(x_test, generator=generator)

    spec = get_model("dglvm")
    min_scale = args.min_scale or (dataset.bin_width / math.sqrt(12) if gaussian else None)
    config = spec.make_config(dim=784, latent_dim=preset["latent_dim"],
                              hidden=preset["hidden"], likelihood=args.likelihood,
                              epochs=args.epochs, min_scale=min_scale,
                              prior=args.prior, pseudo_inputs=args.pseudo_inputs)
    config.validate(x_train.shape[0])
    batch_size = args.batch_size or preset["batch_size"]
    steps_per_epoch = math.ceil(x_train.shape[0] / batch_size)
    model = spec.make_model(config)
    guide = spec.guides["amortized"](model, config)
    checkpoint = out / "checkpoint.pt"
    done = 0
    if args.resume and checkpoint.is_file():
        done = int(load_checkpoint(checkpoint)["step"]) // steps_per_epoch
    else:
        checkpoint.unlink(missing_ok=True)
    curves = {"test_elbo": [], "test_iwae": []}
    seconds = 0.0
    reference = (
        "Tomczak & Welling 2018, VampPrior: test NLL about 85.6 in reproductions"
        if args.prior == "vamp" else
        f"Burda et al. 2016, IWAE k={args.num_particles}: test NLL 84.78 at k=50 (3280 passes)"
        if args.elbo == "RenyiELBO" else preset["reference"])
    pixels = "dequantized" if gaussian else binarize or "grayscale"
    print(f"dglvm {config.dim}-{'-'.join(map(str, config.hidden))}-{config.latent_dim} "
          f"{args.likelihood} on {args.data} ({pixels}), {args.prior} prior, {args.elbo}"
          f" with {args.num_particles} particle(s)"
          f", batch {batch_size}, lr {args.lr}, {args.epochs} epochs on {device}; "
          f"reference: {reference}", flush=True)
    result = None
    for epoch in range(1, args.epochs + 1):
        if epoch < min(done, args.epochs):  # trained before the resume: no curve
            curves["test_elbo"].append(None)
            curves["test_iwae"].append(None)
            continue
        start = time.perf_counter()
        result = fit_svi(model, guide, x_train, steps=epoch * steps_per_epoch, lr=args.lr,
                         batch_size=batch_size, seed=args.seed, binarize=binarize,
                         elbo=args.elbo, num_particles=args.num_particles,
                         checkpoint=checkpoint, resume=True, stop_tol=args.stop_tol,
                         model_name="dglvm",
                         guide_name="amortized")
        seconds += time.perf_counter() - start
        result.guide = "amortized"
        test_elbo, test_iwae = evaluate(spec, config, result, x_test, rows=args.curve_rows)
        test_iwae = float(test_iwae.mean())
        curves["test_elbo"].append(test_elbo)
        curves["test_iwae"].append(test_iwae)
        train_elbo = sum(result.history["elbo"][-steps_per_epoch:]) / steps_per_epoch
        print(f"epoch {epoch:3d}  train ELBO {train_elbo:9.3f}  test ELBO {test_elbo:9.3f}  "
              f"test IWAE-100 ({args.curve_rows} rows) {test_iwae:9.3f}  "
              f"{seconds / epoch:6.1f} s/epoch", flush=True)

    start = time.perf_counter()
    final_elbo, per_row = evaluate(spec, config, result, x_test, rows=args.iwae_rows,
                                   num_samples=args.iwae_samples, elbo_rows=None)
    iwae_seconds = time.perf_counter() - start
    final_iwae = float(per_row.mean())
    # every row's IWAE-K, so that runs on different numbers of rows compare on the same ones
    torch.save(per_row.cpu(), out / "test_iwae_per_row.pt")
    record = {
        "preset": args.preset, "data": args.data, "likelihood": args.likelihood,
        "binarize": binarize,
        "architecture": f"784-{'-'.join(map(str, config.hidden))}-{config.latent_dim}",
        "elbo": args.elbo, "num_particles": args.num_particles, "prior": args.prior,
        "pseudo_inputs": args.pseudo_inputs if args.prior == "vamp" else None,
        "epochs": args.epochs, "steps": result.steps, "batch_size": batch_size, "lr": args.lr,
        "min_scale": config.min_scale if gaussian else None,
        "device": str(device), "threads": torch.get_num_threads(),
        "seconds_per_epoch": result.seconds / args.epochs,
        "test_elbo": final_elbo, "test_iwae": final_iwae, "iwae_samples": args.iwae_samples,
        "iwae_rows": min(args.iwae_rows, x_test.shape[0]), "iwae_seconds": iwae_seconds,
        "reference": reference, "curves": curves,
    }
    if gaussian:
        record["test_elbo_bits_per_dim"] = bits_per_dim(final_elbo, 784, dataset.bin_width)
        record["test_iwae_bits_per_dim"] = bits_per_dim(final_iwae, 784, dataset.bin_width)
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    result.history.update({k: [v for v in values if v is not None]  # resumed: no curve
                           for k, values in curves.items()})
    figure_data = SimpleNamespace(name=args.data, is_image=True, obs_shape=(28, 28),
                                  train=x_train[:64].cpu())
    dglvm_figures(figure_data, config, result, out)
    units = " (" + ", ".join(f"{record[k]:.3f}" for k in ("test_elbo_bits_per_dim",
                                                           "test_iwae_bits_per_dim")) \
        + " bits/dim)" if gaussian else ""
    print(f"final: test ELBO {final_elbo:.3f} (all {x_test.shape[0]} rows), test IWAE-"
          f"{args.iwae_samples} {final_iwae:.3f} ({record['iwae_rows']} rows, "
          f"{iwae_seconds:.0f} s){units} nats per image; written to {out}", flush=True)
    return 0


def evaluate(spec, config, result: FitResult, x_test: torch.Tensor, *, rows: int,
             num_samples: int = 100, elbo_rows: int | None = None) -> tuple[float, float]:
    """Held-out ELBO (mean log-weight of one sample, over ``elbo_rows`` rows: all by default)
    and IWAE-``num_samples`` over the first ``rows`` rows, nats per image."""
    with fitted(spec, config, result.params, x_test, guide="amortized",
                guide_params=result.guide_params) as (model, guide):
        pyro.set_rng_seed(result.seed)
        every = torch.arange(x_test.shape[0] if elbo_rows is None else elbo_rows,
                             device=x_test.device)
        elbo = float(pointwise_log_weights(model, guide, x_test, 1, indices=every).mean())
        first = torch.arange(min(rows, x_test.shape[0]), device=x_test.device)
        bound = iwae(pointwise_log_weights(model, guide, x_test, num_samples, indices=first))
    return elbo, bound


if __name__ == "__main__":
    raise SystemExit(main())
