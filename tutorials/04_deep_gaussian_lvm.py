# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. The deep Gaussian latent-variable model (the VAE)
#
# Make PPCA's decoder a neural network and every closed form of tutorial 3 is gone:
#
# z_n ~ N(0, I_Q),   x_n | z_n ~ N(μ_θ(z_n), diag σ²_θ(z_n)),   μ_θ, σ_θ an MLP.
#
# p(x) = E_p(z)[p(x | z)] is an integral nobody can do, and p(z | x) is unknown. This tutorial
# follows the lecture from that problem to the variational autoencoder:
#
# 1. **Naive Monte Carlo fails** as Q grows: averaging p(x | z) over z from the prior needs
#    ~10³ samples for 0.1 nats at Q = 1, ~10⁴ at Q = 2, more than 10⁶ at Q = 5 (shown on a
#    linear model whose log p(x) we know); a proposal that looks at x needs one.
# 2. **The VAE on digits**: an encoder q_φ(z | x) trained jointly with the decoder on the ELBO;
#    reconstructions, samples and the 2-D latent manifold (digits morphing into each other).
# 3. **Importance sampling with the encoder**: IWAE-K rises with K (never below the ELBO); at
#    K = 10 sampling from the prior instead is more than 10 nats worse.
# 4. **The reparameterization trick vs the log-trick**: the score-function gradient's variance
#    is orders of magnitude larger (measured: more than 100×).
# 5. **The closed-form KL** ½[tr S + ‖m‖² − Q − log det S] agrees with Monte Carlo.
# 6. **The β weight**: β → 0 turns the VAE into a plain autoencoder (encoder variance → 0,
#    KL large, prior samples poor); β large pulls q onto the prior.
# 7. **Frey Face** (and MNIST with a flag) **manifolds**, Kingma & Welling's pictures.
# 8. **Comparison with PPCA**: on held-out digits the deep model's log p(x) beats PPCA's with
#    the same latent dimension by more than 10 nats per image.
#
# Run: `python tutorials/04_deep_gaussian_lvm.py` (about 1½ minutes on a CPU; add `--mnist` or
# set `LVM_ZOO_MNIST=1` for the MNIST manifold, about 2 minutes more). Frey Face and MNIST are read
# from the folder `$LVM_ZOO_DATA` names; without Frey Face that section is skipped.
# Figures and `numbers.json` go to `tutorials/output/04_deep_gaussian_lvm/` (or
# `$LVM_ZOO_TUTORIAL_OUT`); `LVM_ZOO_SMOKE=1` trains for a few epochs only.

# %%
import json
import math
import os
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch

from inference import strategies
from inference.catalog import get_model
from inference.estimators import gradient_variance
from inference.evaluate import fitted, iwae, pointwise_log_weights
from inference.figures import present, save_figure
from inference.figures.dglvm import (
    elbo_curves,
    latent_manifold,
    posterior_means,
    reconstructions,
    samples,
)
from zoo import datasets, ppca
from zoo.dglvm import bits_per_dim, decode, dequantize, gaussian_kl
from zoo.errors import InputError

SMOKE = os.environ.get("LVM_ZOO_SMOKE", "0") not in ("", "0")
MNIST = "--mnist" in sys.argv or os.environ.get("LVM_ZOO_MNIST", "0") not in ("", "0")
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("LVM_ZOO_TUTORIAL_OUT") or HERE / "output" / "04_deep_gaussian_lvm")
OUT.mkdir(parents=True, exist_ok=True)
STARTED = time.perf_counter()
numbers: dict = {"smoke": SMOKE, "mnist": MNIST}  # the promised numbers, saved to numbers.json


def show(fig, name: str) -> Path:
    """Save ``fig`` as OUT/name.png and present it (in a notebook, display it)."""
    return present(save_figure(fig, OUT / f"{name}.png", dpi=110))


# %% [markdown]
# ## 1. Why naive Monte Carlo of p(x) fails as the latent dimension grows
#
# p(x) = E_p(z)[p(x | z)] ≈ (1/S) Σ_s p(x | z_s) with z_s ~ p(z) is unbiased, but p(x | z) is
# large only where z explains x: a region of prior probability that shrinks exponentially
# with Q. We test it where the answer is known: a linear-Gaussian model (PPCA) in D = 40
# dimensions, W = 2 × (Q orthonormal columns), σ² = 0.25, so that every latent dimension is
# pinned down equally well by x. For Q = 1, 2, 5, 10, 20 we estimate log p(x) of 20 points
# with S = 1, 10, …, 10⁶ prior draws and compare with the exact `ppca.log_marginal`.
# (Ten lines of didactic code; log p(x | z) via ‖x − μ − W z‖², one matrix product per chunk.)

# %%
def naive_log_marginal(params, x, num_samples, generator, chunk=50_000):
    """log (1/S) Σ_s p(x_n | z_s), z_s ~ N(0, I): plain Monte Carlo with the prior."""
    weight, noise = params["weight"], params["noise"]
    residual = x - params["loc"]  # (N, D)
    constant = -0.5 * x.shape[1] * math.log(2 * math.pi * noise)
    pieces = []
    for start in range(0, num_samples, chunk):
        z = torch.randn(min(chunk, num_samples - start), weight.shape[1], generator=generator,
                        dtype=weight.dtype)
        squared = (residual.square().sum(1) - 2 * z @ (weight.T @ residual.T)
                   + ((z @ (weight.T @ weight)) * z).sum(1, keepdim=True))  # (S, N)
        pieces.append(torch.logsumexp(constant - squared / (2 * noise), 0))
    return torch.logsumexp(torch.stack(pieces), 0) - math.log(num_samples)


ppca_spec = get_model("ppca")
sample_counts = [10**k for k in range(6 if SMOKE else 7)]
latent_dims = (1, 2, 5, 10, 20)
naive_error, importance_error = {}, {}
for q in latent_dims:
    generator = torch.Generator().manual_seed(q)
    linear = ppca_spec.make_config(dim=40, latent_dim=q)
    basis = torch.linalg.qr(torch.randn(40, q, generator=generator, dtype=torch.float64)).Q
    truth = {"loc": torch.zeros(40, dtype=torch.float64), "weight": 2.0 * basis,
             "noise": torch.tensor(0.25, dtype=torch.float64)}
    points, _ = ppca.sample(linear, truth, 20, generator)
    exact = ppca.log_marginal(linear, truth, points)
    naive_error[q] = [float((exact - naive_log_marginal(truth, points, s, generator)).abs().mean())
                      for s in sample_counts]
    # one draw from the exact posterior: log p(x, z) − log p(z | x) = log p(x) for any z
    posterior = ppca.posterior(linear, truth, points)
    z = posterior.sample()
    joint = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
             + dist.Normal(z @ truth["weight"].T, 0.5).log_prob(points).sum(-1))
    importance_error[q] = float((joint - posterior.log_prob(z) - exact).abs().max())


def samples_needed(errors, tolerance=0.1):
    reached = [s for s, e in zip(sample_counts, errors, strict=True) if e < tolerance]
    return reached[0] if reached else None


needed = {q: samples_needed(naive_error[q]) for q in latent_dims}
print("mean |error| of log p(x) in nats, S draws from the prior:")  # lines < 80 characters
print(f"{'Q':>3} " + "".join(f"{'S=1e' + str(k):>8}" for k in range(len(sample_counts)))
      + "  S for < 0.1")
for q in latent_dims:
    reached = f"{needed[q]:.0e}" if needed[q] else f"> {sample_counts[-1]:.0e}"
    print(f"{q:>3} " + "".join(f"{e:>8.3f}" for e in naive_error[q]) + f"  {reached}")
print("the exact posterior as proposal, ONE sample: largest error "
      f"{max(importance_error.values()):.1e} nats")
numbers["naive_monte_carlo"] = {"sample_counts": sample_counts,
                                "mean_abs_error": {str(q): v for q, v in naive_error.items()},
                                "samples_needed": {str(q): v for q, v in needed.items()},
                                "exact_posterior_one_sample_error": max(importance_error.values())}

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
for q in latent_dims:
    ax.loglog(sample_counts, naive_error[q], "o-", label=f"Q = {q}")
ax.axhline(0.1, color="k", ls="--", lw=1, label="0.1 nats")
ax.set(xlabel="S, samples from the prior", ylabel="mean |error| of log p(x), nats",
       title="naive Monte Carlo of p(x) = E_p(z)[p(x | z)]")
ax.legend(fontsize=8)
show(fig, "naive_monte_carlo")

# %% [markdown]
# The fix is to sample z where p(x | z) is large: from a proposal q(z | x) that looks at x,
# reweighting by p(z) / q(z | x). With the exact posterior as proposal one sample is exact
# (error ~1e-13 above). In the deep model the posterior is unknown, so we *learn* a proposal:
# the encoder. That is the VAE.
#
# ## 2. The VAE on digits
#
# Data: the digits of tutorial 3, dequantized (each count c becomes c + u, u ~ U[0, 1)), so
# that a density over them is bounded and comparable between models (bits per dimension:
# −log₂ P(bin) / 64). The model is `dglvm` with Q = 2, one hidden layer of 200 ReLU units, a
# learned variance per pixel; the guide is the amortized encoder N(μ_φ(x), diag σ²_φ(x)) with
# the mirrored network; SVI maximizes the ELBO with Adam over θ and φ together
# (minibatches of 128). This is the density model we measure in sections 3 to 5 and 8.

# %%
digits = datasets.load_dataset("digits")
generator = torch.Generator().manual_seed(0)
x_train = dequantize(digits.train, 1.0, generator)
x_test = dequantize(digits.test, 1.0, generator)
spec = get_model("dglvm")
epochs = 30 if SMOKE else 200
config = spec.make_config(dim=64, latent_dim=2, hidden=(200,), epochs=epochs)
vae = strategies.fit(spec, config, x_train, inference="svi", guide="amortized",
                     steps=config.steps_for(x_train.shape[0], 128), lr=1e-3, batch_size=128,
                     seed=0)
print(f"{vae.steps} SVI steps ({epochs} epochs) in {vae.seconds:.1f} s; last ELBO "
      f"{np.mean(vae.history['elbo'][-12:]):.2f} nats per image")
present(elbo_curves(vae.history, OUT / "vae_elbo.png", title="VAE on digits: training ELBO"))

# %% [markdown]
# To *look* at what the decoder learned, a per-pixel variance is the wrong choice: σ(z) can
# explain a pixel instead of μ(z), and the means come out dim and blurred. With one shared noise
# level (`variance="isotropic"`, PPCA's noise model) the mean must carry the digit. We fit that
# variant for the pictures: reconstructions of held-out digits, decoded prior samples, and the
# manifold, the decoder's mean over a grid of z = Φ⁻¹(u) (equal prior mass per cell).
#
# One more thing matters for pictures: the scale. The pixels are counts up to 17 (mean 5.4),
# while the decoder's output starts near 0, and Adam moves each weight by about `lr` per step.
# At lr = 10⁻³ the output layer's bias can travel at most 0.36 in the 360 steps of a short run,
# so the decoded means stay far below the data: nearly black images, the same dim blur at every
# z. We therefore fit the picture model with lr = 10⁻²; its mean image then matches the data's
# (5.4) and the manifold shows distinct digits.

# %%
picture_config = spec.make_config(dim=64, latent_dim=2, hidden=(200,), variance="isotropic",
                                  epochs=epochs)
pictures = strategies.fit(spec, picture_config, x_train, inference="svi", guide="amortized",
                          steps=picture_config.steps_for(x_train.shape[0], 128), lr=1e-2,
                          batch_size=128, seed=0)
value_range = (0.0, 17.0)  # dequantized counts
latent = posterior_means(picture_config, pictures.guide_params, x_test[:16])
decoded = decode(picture_config, pictures.params, torch.randn(1000, 2, generator=generator))
numbers["picture_mean_pixel"] = {"data": float(x_train.mean()), "decoded": float(decoded.mean())}
print(f"mean pixel: data {x_train.mean():.2f}, decoded prior samples {decoded.mean():.2f}")
present(reconstructions(picture_config, pictures.params, x_test[:16], latent, (8, 8),
                        OUT / "vae_reconstructions.png", value_range=value_range))
present(samples(picture_config, pictures.params, (8, 8), OUT / "vae_samples.png",
                value_range=value_range))
present(latent_manifold(picture_config, pictures.params, (8, 8), OUT / "digits_manifold.png",
                        size=15, value_range=value_range))

# %% [markdown]
# ## 3. Importance sampling with the encoder
#
# IWAE-K: log p(x) ≈ log (1/K) Σ_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x). K = 1 is the ELBO;
# for every K it is a lower bound in expectation, and it rises with K towards log p(x). We draw
# 1000 log-weights per held-out image with `pointwise_log_weights` and average IWAE over
# disjoint groups of K, so that each K reuses the same draws: by Jensen's inequality the
# numbers can then only rise with K. The same with the prior as proposal is section 1's naive
# Monte Carlo, now on the trained deep model. Expect the encoder's estimate to move by about
# 3 nats from K = 1 to 1000, and the prior's by hundreds of nats: with Q = 2 the prior
# catches up by K ≈ 1000 (section 1: Q = 2 needs ~10⁴ draws for 0.1 nats), but each further
# latent dimension multiplies the draws it needs.

# %%
def prior_proposal(x=None, *, num_data=None, subsample_size=None):
    """A guide that ignores x: z ~ p(z) = N(0, I). Importance sampling with it is naive MC."""
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size, device=x.device):
        pyro.sample("z", dist.Normal(x.new_zeros(config.latent_dim), 1.0).to_event(1))


pool = 1000
group_sizes = (1, 10, 100, 1000)
torch.manual_seed(1)
with fitted(spec, config, vae.params, x_test, guide="amortized",
            guide_params=vae.guide_params) as (model, encoder):
    encoder_weights = pointwise_log_weights(model, encoder, x_test, pool)  # (1000, N)
    prior_weights = pointwise_log_weights(model, prior_proposal, x_test, pool)


def grouped_iwae(weights, k):
    groups = weights.reshape(pool // k, k, -1).transpose(0, 1)  # (k, groups, N)
    return float(iwae(groups).mean())


encoder_iwae = [grouped_iwae(encoder_weights, k) for k in group_sizes]
prior_iwae = [grouped_iwae(prior_weights, k) for k in group_sizes]
print("IWAE-K, nats per held-out image:")
for k, encoded, naive in zip(group_sizes, encoder_iwae, prior_iwae, strict=True):
    print(f"K = {k:>4}: encoder proposal {encoded:9.3f}   prior proposal {naive:9.3f}")
numbers["iwae"] = {"K": list(group_sizes), "encoder": encoder_iwae, "prior": prior_iwae,
                   "elbo": float(encoder_weights.mean())}

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
ax.semilogx(group_sizes, encoder_iwae, "o-", label="proposal q_φ(z | x): the encoder")
ax.semilogx(group_sizes, prior_iwae, "s-", label="proposal p(z): naive Monte Carlo")
ax.set(xlabel="K, importance samples", ylabel="IWAE-K estimate of log p(x), nats per image",
       title="held-out digits: the encoder is the proposal to use")
ax.legend(fontsize=8)
show(fig, "importance_sampling")

# %% [markdown]
# ### Going further: a tighter objective, a richer prior
#
# Two options of the same model take the next steps of the literature, and
# `benchmarks/vae_quality.py` measures both on dynamically binarized MNIST
# (`benchmarks/RESULTS.md` has the figures and their schedules):
#
# - **IWAE-K training** (Burda et al., 2016): maximize the IWAE-K bound itself, not the ELBO:
#   `--elbo RenyiELBO --num-particles K` (Pyro's Rényi bound at α = 0 with K vectorized
#   particles). The encoder no longer has to cover the posterior alone: the K samples are
#   reweighted, so the decoder can be fitted to a tighter bound.
# - **The VampPrior** (Tomczak & Welling, 2018): `--prior vamp` replaces N(0, I) by the mixture
#   of the encoder's own posteriors at K learned pseudo-inputs u_k,
#   p(z) = (1/K) Σ_k q_φ(z | u_k). The prior moves towards the aggregate posterior, which is
#   what the KL term pulls every q(z | x) towards; the model and the amortized guide share one
#   encoder.

# %% [markdown]
# ## 4. The reparameterization trick against the log-trick
#
# The ELBO's gradient in φ needs ∇_φ E_q_φ(z)[f(z)]. Two unbiased estimators:
#
# - **score function** (log-trick): E_q[f(z) ∇_φ log q_φ(z)], any q, but it multiplies a
#   noisy f by the score;
# - **reparameterization**: z = μ_φ(x) + σ_φ(x) ε, ε ~ N(0, I), so the gradient is
#   E_ε[∇_φ f(μ_φ + σ_φ ε)], following f's own slope.
#
# `inference.estimators.gradient_variance` draws 100 one-sample gradients of the encoder from
# each estimator on one batch of 128 images, at the trained weights, and sums their variances
# over the encoder's parameters. (The third estimator, `TraceMeanField_ELBO`, also uses the
# closed-form KL of section 5.)

# %%
variances = gradient_variance(config, x_train[:128], params=vae.params,
                              guide_params=vae.guide_params, num_estimates=100, seed=0)
for name, result in variances.items():
    print(f"{name:<16} total variance {result.total_variance:10.4g}   |mean gradient| "
          f"{result.mean_gradient_norm:8.4g}")
ratio = (variances["score function"].total_variance
         / variances["reparameterized"].total_variance)
numbers["gradient_variance"] = {name: result.total_variance for name, result in variances.items()}
numbers["score_over_reparameterized"] = ratio
print(f"the log-trick's variance is {ratio:.3g} times the reparameterized one's")

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.5))
names = list(variances)
ax.bar(names, [variances[n].total_variance for n in names], color=["C0", "C2", "C3"])
ax.set(yscale="log", ylabel="total variance of one gradient estimate",
       title="encoder gradients, 100 one-sample estimates each")
show(fig, "gradient_variance")

# %% [markdown]
# ## 5. The KL term in closed form
#
# For q = N(m, diag s²) and p(z) = N(0, I), KL(q ‖ p) = ½ Σ_i [s_i² + m_i² − 1 − log s_i²].
# `zoo.dglvm.gaussian_kl` computes it; we compare with PyTorch's `kl_divergence` and with a
# Monte Carlo average of log q(z) − log p(z) over 100 000 draws, on the encoder's q for five
# held-out images.

# %%
with fitted(spec, config, vae.params, x_test, guide="amortized",
            guide_params=vae.guide_params) as (_, encoder), torch.no_grad():
    loc, scale = encoder.encode(x_test[:5])  # the trained encoder's q(z | x)
    closed = gaussian_kl(loc, scale)
    q_z = dist.Normal(loc, scale).to_event(1)
    p_z = dist.Normal(torch.zeros_like(loc), 1.0).to_event(1)
    by_torch = torch.distributions.kl_divergence(q_z, p_z)
    draws = q_z.sample((100_000,))
    monte_carlo = (q_z.log_prob(draws) - p_z.log_prob(draws)).mean(0)
numbers["kl_closed_form"] = closed.tolist()
numbers["kl_torch_error"] = float((closed - by_torch).abs().max())
numbers["kl_monte_carlo_error"] = float((closed - monte_carlo).abs().max())
print(f"closed form {closed.numpy().round(4)} nats")
print(f"torch differs by {numbers['kl_torch_error']:.1e}; Monte Carlo (1e5 draws) by "
      f"{numbers['kl_monte_carlo_error']:.3f} nats")

# %% [markdown]
# ## 6. The β weight: from the VAE to the plain autoencoder
#
# The β-VAE maximizes E_q[log p(x | z)] − β KL(q(z | x) ‖ p(z)) (`beta` in the config; the model
# scales the z site by β). Here the decoder variance is fixed at 1, so the first term is the
# notes' squared error −‖x − μ(z)‖²/2 + const (and lr = 10⁻², as for the pictures of section 2,
# so that the decoded images reach the data's scale). As β → 0 nothing keeps q near the prior: the
# encoder's σ shrinks towards 0, it becomes a deterministic code (a plain autoencoder), the
# codes wander far from N(0, I), and decoding prior samples gives poor images. Large β pulls
# every q onto the prior.

# %%
betas = (0.001, 1.0, 10.0, 100.0)
beta_epochs = 25 if SMOKE else 100
beta_fits = {}
for beta in betas:
    beta_config = spec.make_config(dim=64, latent_dim=2, hidden=(200,), variance="fixed",
                                   beta=beta, epochs=beta_epochs)
    fit = strategies.fit(spec, beta_config, x_train, inference="svi", guide="amortized",
                         steps=beta_config.steps_for(x_train.shape[0], 128), lr=1e-2,
                         batch_size=128, seed=0)
    with fitted(spec, beta_config, fit.params, x_test, guide="amortized",
                guide_params=fit.guide_params) as (_, encoder), torch.no_grad():
        loc, scale = encoder.encode(x_test)
        error = (decode(beta_config, fit.params, loc) - x_test).square().sum(1).mean()
    beta_fits[beta] = {"config": beta_config, "fit": fit, "codes": loc,
                       "kl": float(gaussian_kl(loc, scale).mean()),
                       "encoder_scale": float(scale.mean()), "squared_error": float(error)}
    print(f"β = {beta:<6} KL {beta_fits[beta]['kl']:7.2f} nats   mean encoder σ "
          f"{beta_fits[beta]['encoder_scale']:<7.2g}  squared error "
          f"{beta_fits[beta]['squared_error']:7.1f}")
numbers["beta"] = {str(b): {k: v for k, v in row.items() if k in ("kl", "encoder_scale",
                                                                    "squared_error")}
                   for b, row in beta_fits.items()}

# %%
# one row per β (readable at the width of a page): the codes, then decoded prior samples
fig, axes = plt.subplots(len(betas), 2, figsize=(7.5, 3.4 * len(betas)), layout="constrained")
circle = np.linspace(0, 2 * np.pi, 100)
labels = digits.test_labels.numpy()
for index, beta in enumerate(betas):
    row = beta_fits[beta]
    codes = row["codes"].numpy()
    left, right = axes[index]
    points = left.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=5,
                          vmin=-0.5, vmax=9.5)
    left.plot(2 * np.cos(circle), 2 * np.sin(circle), "k--", lw=1)
    left.set_title(f"β = {beta}: KL {row['kl']:.1f} nats, encoder σ {row['encoder_scale']:.2g}",
                   fontsize=9)
    left.set(xlabel="z₁", ylabel="z₂")
    left.set_aspect("equal", adjustable="datalim")
    z = torch.randn(36, 2, generator=torch.Generator().manual_seed(0))
    images = decode(row["config"], row["fit"].params, z).clamp(0, 17).reshape(6, 6, 8, 8)
    framed = torch.nn.functional.pad(images, (0, 1, 0, 1), value=17.0)  # white lines between
    right.imshow(framed.permute(0, 2, 1, 3).reshape(54, 54), cmap="gray", vmin=0, vmax=17)
    right.set_title(f"β = {beta}: decoded prior samples", fontsize=9)
    right.axis("off")
fig.colorbar(points, ax=axes[:, 0].tolist(), ticks=range(10), label="digit", shrink=0.3,
             location="left")
fig.suptitle("encoder means of held-out digits (dashed: 2 sd of the prior), and what the "
             "decoder makes of z ~ N(0, I)", fontsize=10)
show(fig, "beta")

# %% [markdown]
# ## 7. Frey Face and MNIST manifolds
#
# With Q = 2 the decoder's mean over a grid of z = Φ⁻¹(u) (equal prior mass per cell) shows
# the whole learned manifold at once, as in Kingma & Welling (2014). On Frey Face (1965 frames of
# one face, 28 × 20 pixels in [0, 1]) the two latent axes turn out to be pose and expression.
# We use one learned noise level for all pixels (`variance="isotropic"`, PPCA's noise model):
# with a variance per pixel, σ(z) can explain a pixel instead of μ(z), and the means blur.

# %%
frey_epochs = 15 if SMOKE else 100
try:
    frey = datasets.load_dataset("frey-face")
except InputError as error:
    frey = None
    print(f"Frey Face skipped: {error}")
if frey is not None:
    frey_config = spec.make_config(dim=frey.dim, latent_dim=2, hidden=(200,),
                                   variance="isotropic", epochs=frey_epochs)
    frey_fit = strategies.fit(spec, frey_config, frey.train, inference="svi",
                              guide="amortized", lr=1e-3, batch_size=100, seed=0,
                              steps=frey_config.steps_for(frey.train.shape[0], 100))
    numbers["frey_face_final_elbo"] = float(np.mean(frey_fit.history["elbo"][-16:]))
    print(f"Frey Face: {frey_epochs} epochs in {frey_fit.seconds:.1f} s, ELBO "
          f"{numbers['frey_face_final_elbo']:.1f} nats per image")
    present(latent_manifold(frey_config, frey_fit.params, frey.obs_shape,
                            OUT / "frey_face_manifold.png", size=12))

# %% [markdown]
# MNIST (60 000 images of 28 × 28, binarized afresh every epoch, a Bernoulli decoder with 400
# hidden units) runs with `--mnist` or `LVM_ZOO_MNIST=1`: 10 epochs take a few minutes on a CPU
# (seconds on a GPU, see tutorial 6).

# %%
if MNIST:
    mnist = datasets.load_dataset("mnist", binarize="dynamic")
    mnist_config = spec.make_config(dim=784, latent_dim=2, hidden=(400,),
                                    likelihood="bernoulli", epochs=10)
    mnist_fit = strategies.fit(spec, mnist_config, mnist.train, inference="svi",
                               guide="amortized", lr=1e-3, batch_size=128, seed=0,
                               binarize="dynamic",
                               steps=mnist_config.steps_for(mnist.train.shape[0], 128))
    numbers["mnist_final_elbo"] = float(np.mean(mnist_fit.history["elbo"][-469:]))
    print(f"MNIST: 10 epochs in {mnist_fit.seconds:.1f} s, ELBO "
          f"{numbers['mnist_final_elbo']:.1f} nats per image")
    present(latent_manifold(mnist_config, mnist_fit.params, (28, 28),
                            OUT / "mnist_manifold.png", size=20))

# %% [markdown]
# ## 8. Comparison with PPCA
#
# PPCA is this model with a linear decoder and one noise level. On the same dequantized
# digits, with the same Q = 2, we compare held-out log p(x): exact for PPCA, IWAE-1000 with the
# encoder for the deep model (a lower bound, so the comparison is, if anything, unfair to the
# VAE). Both are densities of the same numbers, so bits per dimension compare too.

# %%
ppca_config = ppca_spec.make_config(dim=64, latent_dim=2)
ppca_params = ppca.closed_form(ppca_config, x_train.double())
ppca_test = float(ppca.log_marginal(ppca_config, ppca_params, x_test.double()).mean())
vae_test = encoder_iwae[-1]
numbers["held_out"] = {"ppca": ppca_test, "dglvm": vae_test,
                       "ppca_bits_per_dim": float(bits_per_dim(ppca_test, 64)),
                       "dglvm_bits_per_dim": float(bits_per_dim(vae_test, 64))}
print(f"held-out log p(x), Q = 2: PPCA {ppca_test:.2f}, deep model {vae_test:.2f} nats per "
      "image")
print(f"that is {numbers['held_out']['ppca_bits_per_dim']:.3f} vs "
      f"{numbers['held_out']['dglvm_bits_per_dim']:.3f} bits per dimension")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.5))
bits = [numbers["held_out"]["ppca_bits_per_dim"], numbers["held_out"]["dglvm_bits_per_dim"]]
ax.bar(["PPCA\n(closed form)", "deep LVM\n(IWAE-1000)"], bits, color=["C7", "C0"])
for i, (value, nats) in enumerate(zip(bits, (ppca_test, vae_test), strict=True)):
    ax.text(i, value + 0.05, f"{value:.2f} bits/dim\n({nats:.1f} nats per image)", ha="center",
            va="bottom", fontsize=9)
ax.set(ylabel="held-out bits per dimension (lower is better)", ylim=(0, max(bits) * 1.25),
       title="dequantized digits, Q = 2")
show(fig, "vae_vs_ppca")

# %% [markdown]
# ## What we saw
#
# - Prior sampling needs exponentially many draws as Q grows; a proposal that looks at x
#   needs few, and the exact posterior needs one.
# - The VAE learns that proposal (the encoder) and the decoder together on the ELBO.
# - IWAE-K with the encoder rises with K; with the prior it starts hundreds of nats lower and
#   catches up only with about a thousand draws, and only because Q = 2.
# - Reparameterized gradients have far less variance than the log-trick's.
# - β trades reconstruction against staying near the prior; β → 0 is an autoencoder.
# - A nonlinear decoder beats PPCA's held-out likelihood by a wide margin.
#
# Tutorial 5 declares a model of your own and runs the same comparisons on it.

# %%
numbers["seconds"] = time.perf_counter() - STARTED
(OUT / "numbers.json").write_text(json.dumps(numbers, indent=2))
print(f"numbers: {OUT / 'numbers.json'}; {numbers['seconds']:.1f} s")
