"""Figures of a fitted deep Gaussian latent-variable model.

- ``reconstructions.png``: images (top row) and the decoder's mean at the guide's mean z;
- ``samples.png``: decoder means at z drawn from the prior (torchvision's ``make_grid``);
- ``manifold.png`` (Q = 2 only): decoder means over a grid of z = Φ⁻¹(u), u evenly spaced in
  (0, 1), as in Kingma & Welling's Frey Face and MNIST figures;
- ``elbo_iwae.png``: the training ELBO per step (and per epoch), with held-out ELBO and IWAE
  curves where the history has them (``test_elbo``, ``test_iwae``: one value per epoch).

Image figures need an image dataset (``dataset.is_image``); pixels are shown on the data's own
range (digits 0..16, others [0, 1]; read off at most :data:`inference.figures.MAX_ROWS` seeded
rows) mapped to black..white.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from inference.figures import figures_for, sample_rows, save_figure
from zoo.dglvm import DGLVMConfig, Encoder, decode, load_module, sample
from zoo.registry import Params


@figures_for("dglvm", curves=True)
def dglvm_figures(dataset, config: DGLVMConfig, result, out_dir: str | Path) -> list[Path]:
    """Every figure that applies to this fit, written to ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    params = {k: v.detach().cpu() for k, v in result.params.items()}
    guide_params = {k: v.detach().cpu() for k, v in result.guide_params.items()}
    paths = []
    if result.history.get("elbo"):
        paths.append(elbo_curves(result.history, out_dir / "elbo_iwae.png",
                                 title=f"dglvm on {dataset.label}"))
    if not dataset.is_image:
        return paths
    x = dataset.train[:16].detach().cpu()
    drawn = sample_rows(dataset.train, seed=result.seed)  # the pixels' range, from a sample
    value_range = (float(drawn.min()), float(drawn.max()))
    shape = dataset.obs_shape
    latent = posterior_means(config, {**params, **guide_params}, x)
    if latent is not None:
        paths.append(reconstructions(config, params, x, latent, shape,
                                     out_dir / "reconstructions.png", value_range=value_range))
    paths.append(samples(config, params, shape, out_dir / "samples.png",
                         value_range=value_range, seed=result.seed))
    if config.latent_dim == 2:
        paths.append(latent_manifold(config, params, shape, out_dir / "manifold.png",
                                     value_range=value_range))
    return paths


def posterior_means(config: DGLVMConfig, guide_params: Params,
                    x: torch.Tensor) -> torch.Tensor | None:
    """The guide's mean of z for the first rows ``x : (n, D)`` of the training data: the
    mean-field locations, or the encoder's μ_φ(x); ``None`` when the fit has no guide.
    ``guide_params`` may hold the model's too: a VampPrior model owns the encoder it shares with
    the amortized guide (and a mean-field fit's own ``z_loc`` comes first)."""
    if "z_loc" in guide_params:
        return guide_params["z_loc"][: x.shape[0]].to(x)
    if any(k.startswith("encoder$$$") for k in guide_params):
        encoder = Encoder(config)
        load_module(encoder, "encoder", guide_params)
        encoder.to(x)
        with torch.no_grad():
            return encoder(x)[0]
    return None


def _grid(images: torch.Tensor, shape, nrow: int, value_range) -> torch.Tensor:
    from torchvision.utils import make_grid  # seconds to import: only when images are drawn

    low, high = value_range
    scaled = ((images - low) / max(high - low, 1e-12)).clamp(0, 1)
    grid = make_grid(scaled.reshape(-1, 1, *shape), nrow=nrow, padding=1, pad_value=1.0)
    return grid[0]  # make_grid repeats the one channel three times


def _show(grid: torch.Tensor, path: Path, title: str, size: float = 6.0) -> Path:
    height, width = grid.shape
    fig, ax = plt.subplots(figsize=(size, size * height / width + 0.5))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    return save_figure(fig, path)


def reconstructions(config: DGLVMConfig, params: Params, x: torch.Tensor, z: torch.Tensor,
                    shape, path: str | Path, *, value_range=(0.0, 1.0)) -> Path:
    """Images ``x : (n, D)`` above the decoder's mean at their guide means ``z : (n, Q)``."""
    recon = decode(config, params, z)
    grid = _grid(torch.cat([x, recon]), shape, x.shape[0], value_range)
    return _show(grid, Path(path), "data (top) and reconstructions E[x | z = guide mean]")


def samples(config: DGLVMConfig, params: Params, shape, path: str | Path, *, num: int = 64,
            value_range=(0.0, 1.0), seed: int = 0) -> Path:
    """Decoder means E[x | z] at ``num`` draws z ~ p(z): N(0, I), or the VampPrior's mixture."""
    generator = torch.Generator().manual_seed(seed)
    params = {k: v.cpu() for k, v in params.items()}
    _, z = sample(config, params, num, generator)  # z from the model's own prior
    grid = _grid(decode(config, params, z), shape, int(num**0.5), value_range)
    prior = "the VampPrior" if config.prior == "vamp" else "N(0, I)"
    return _show(grid, Path(path), f"samples: E[x | z], z ~ {prior}")


def latent_manifold(config: DGLVMConfig, params: Params, shape, path: str | Path, *,
                    size: int = 20, value_range=(0.0, 1.0)) -> Path:
    """Decoder means over a ``size`` × ``size`` grid z = Φ⁻¹(u) of the 2-D latent space, so
    equal areas of the grid hold equal prior mass."""
    if config.latent_dim != 2:
        raise ValueError("the latent manifold needs latent_dim=2")
    weight = params["decoder$$$net.0.weight"]
    u = torch.linspace(0.5 / size, 1 - 0.5 / size, size, dtype=weight.dtype)
    axis = torch.distributions.Normal(0.0, 1.0).icdf(u)
    z1, z2 = torch.meshgrid(axis, axis.flip(0), indexing="xy")  # z2 grows upwards
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)
    grid = _grid(decode(config, params, z), shape, size, value_range)
    return _show(grid, Path(path), "learned manifold: E[x | z] over z = Φ⁻¹(u), u on a grid",
                 size=8.0)


def elbo_curves(history: dict, path: str | Path, *, title: str = "") -> Path:
    """Training ELBO per step and per epoch, with the held-out ELBO and IWAE per epoch when
    ``history`` has ``test_elbo`` / ``test_iwae`` (one value per epoch, all nats/datapoint)."""
    elbo = torch.tensor(history["elbo"], dtype=torch.float64)
    per_epoch = {k: history[k] for k in ("test_elbo", "test_iwae") if history.get(k)}
    epochs = max((len(v) for v in per_epoch.values()), default=0)
    steps_per_epoch = max(1, len(elbo) // epochs) if epochs else max(1, len(elbo) // 50)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    steps = torch.arange(1, len(elbo) + 1)
    ax.plot(steps, elbo, lw=0.5, alpha=0.35, color="C0", label="train ELBO (one minibatch)")
    usable = len(elbo) // steps_per_epoch * steps_per_epoch
    if usable:
        means = elbo[:usable].reshape(-1, steps_per_epoch).mean(1)
        ax.plot(torch.arange(1, len(means) + 1) * steps_per_epoch, means, color="C0", lw=1.6,
                label=f"train ELBO (mean of {steps_per_epoch} steps)")
    labels = {"test_elbo": "held-out ELBO", "test_iwae": "held-out IWAE bound on log p(x)"}
    for i, (key, values) in enumerate(per_epoch.items()):
        ax.plot([(e + 1) * steps_per_epoch for e in range(len(values))], values, marker="o",
                ms=3, lw=1.4, color=f"C{i + 1}", label=labels[key])
    tail = torch.cat([elbo[len(elbo) // 10:]] + [torch.tensor(v, dtype=torch.float64)
                                                 for v in per_epoch.values()])
    low, high = float(tail.quantile(0.01)), float(tail.max())
    pad = 0.08 * (high - low + 1e-9)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("SVI step")
    ax.set_ylabel("nats per datapoint")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, Path(path))
