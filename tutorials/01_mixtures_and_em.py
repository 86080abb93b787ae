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
# # 1. Mixtures and EM
#
# The lecture builds a Gaussian mixture from one Gaussian, samples it, fits it by maximum
# likelihood and finds that the fit needs EM. This tutorial walks the same road with lvm-zoo:
#
# 1. **Gaussians**: the zoo's mixture with one component *is* a Gaussian; its log-density
#    agrees with SciPy's to 1e-12.
# 2. **Mixtures**: p(x) = Σ_k λ_k N(x | μ_k, σ_k²), the weighted bumps and their sum.
# 3. **Sampling a mixture**: draw U ~ Uniform(0, 1), find the interval of [0, 1) it falls in
#    (interval k has length λ_k), then sample component k. With 100 000 draws the component
#    frequencies match λ to within 0.01.
# 4. **Maximum likelihood minimizes KL(p_data ‖ p_θ)**: the average log-likelihood and the KL
#    divergence differ by a constant, so they have the same optimum.
# 5. **EM on Old Faithful**: responsibilities (E-step), weighted means and covariances (M-step),
#    contours after 0, 1, 2, 5 and 20 iterations (Bishop's Figure 9.8). The log-likelihood
#    never decreases and ends at −1.4171 nats per point, where scikit-learn ends too.
# 6. **K-means is the hard limit of EM**: shrink a shared spherical variance σ² to 0 and EM's
#    centres become K-means' centres exactly.
#
# Run it with `python tutorials/01_mixtures_and_em.py` (about 10 s on a CPU) or open
# it as a notebook (`jupytext --to notebook tutorials/01_mixtures_and_em.py`). Figures go to
# `tutorials/output/01_mixtures_and_em/` (or `$LVM_ZOO_TUTORIAL_OUT`), with `numbers.json`
# holding every number the text promises. `LVM_ZOO_SMOKE=1` runs a shrunken version for CI.

# %%
import json
import math
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy import stats
from sklearn.mixture import GaussianMixture

from inference.estimators_sklearn import GaussianMixture as ZooGaussianMixture
from inference.figures import present, save_figure
from inference.figures.gmm import plot_em_contours
from inference.kmeans import kmeans
from zoo import datasets, gmm

SMOKE = os.environ.get("LVM_ZOO_SMOKE", "0") not in ("", "0")
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("LVM_ZOO_TUTORIAL_OUT") or HERE / "output" / "01_mixtures_and_em")
OUT.mkdir(parents=True, exist_ok=True)
STARTED = time.perf_counter()
numbers: dict = {"smoke": SMOKE}  # every number the text promises; saved to numbers.json
torch.set_default_dtype(torch.float64)  # closed forms to 1e-12, so that equalities show


def show(fig, name: str) -> Path:
    """Save ``fig`` as OUT/name.png and present it (in a notebook, display it)."""
    return present(save_figure(fig, OUT / f"{name}.png", dpi=110))


# %% [markdown]
# ## 1. Gaussians
#
# A Gaussian in D dimensions,
# log N(x | μ, Σ) = −½ (x − μ)ᵀ Σ⁻¹ (x − μ) − ½ log |Σ| − (D/2) log 2π,
# is a mixture with one component, so the zoo's exact `gmm.log_marginal` computes it. Its
# parameters are a dict keyed by the model's `pyro.param` names: `weights` (K,), `means`
# (K, D) and `scale_tril` (K, D, D), the Cholesky factor L of Σ = L Lᵀ.

# %%
covariance = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
gaussian = {"weights": torch.ones(1), "means": torch.tensor([[1.0, -0.5]]),
            "scale_tril": torch.linalg.cholesky(covariance)[None]}
one = gmm.GMMConfig(dim=2, components=1)
points = torch.randn(500, 2, generator=torch.Generator().manual_seed(0)) * 2
ours = gmm.log_marginal(one, gaussian, points)
scipy_reference = stats.multivariate_normal(gaussian["means"][0].numpy(),
                                            covariance.numpy()).logpdf(points.numpy())
numbers["gaussian_logpdf_max_error"] = float(np.abs(ours.numpy() - scipy_reference).max())
print(f"largest difference from scipy: {numbers['gaussian_logpdf_max_error']:.1e} nats "
      "(expected below 1e-12)")

# %% [markdown]
# The contours of a 2-D Gaussian are ellipses whose axes are the eigenvectors of Σ, with
# half-lengths √(eigenvalue); one standard deviation along each is drawn in red.

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
grid_1d = torch.linspace(-5, 5, 400)
for mean, scale in ((0.0, 1.0), (0.0, 0.5), (1.5, 2.0)):
    params = {"weights": torch.ones(1), "means": torch.tensor([[mean]]),
              "scale_tril": torch.tensor([[[scale]]])}
    density = gmm.log_marginal(gmm.GMMConfig(dim=1, components=1), params, grid_1d[:, None])
    left.plot(grid_1d, density.exp(), label=f"μ = {mean}, σ = {scale}")
left.set(title="1-D Gaussians N(x | μ, σ²)", xlabel="x", ylabel="density")
left.legend()
axis = torch.linspace(-3, 4, 200)
mesh_x, mesh_y = torch.meshgrid(axis, axis, indexing="xy")
grid_2d = torch.stack([mesh_x.reshape(-1), mesh_y.reshape(-1)], 1)
density = gmm.log_marginal(one, gaussian, grid_2d).exp().reshape(mesh_x.shape)
right.contour(mesh_x, mesh_y, density, levels=8, cmap="viridis")
values, vectors = torch.linalg.eigh(covariance)
for value, vector in zip(values, vectors.T, strict=True):
    end = gaussian["means"][0] + value.sqrt() * vector
    right.annotate("", xy=end.tolist(), xytext=gaussian["means"][0].tolist(),
                   arrowprops={"arrowstyle": "->", "color": "red", "lw": 2})
right.set(title="2-D Gaussian, Σ = [[1, 0.8], [0.8, 1]]", xlabel="x₁", ylabel="x₂",
          aspect="equal")
show(fig, "gaussians")

# %% [markdown]
# ## 2. A mixture of Gaussians
#
# p(x) = Σ_k λ_k N(x | μ_k, σ_k²) with weights λ on the simplex. Each bump is a component
# weighted by λ_k; the mixture density is their sum. The latent variable z ∈ {1, …, K} says
# which component made x: p(z = k) = λ_k and p(x | z = k) = N(x | μ_k, σ_k²).

# %%
mixture_1d = {"weights": torch.tensor([0.3, 0.5, 0.2]),
              "means": torch.tensor([[-2.0], [0.5], [3.0]]),
              "scale_tril": torch.tensor([0.5, 1.0, 0.7]).reshape(3, 1, 1)}
three = gmm.GMMConfig(dim=1, components=3)
grid_1d = torch.linspace(-5, 6, 500)
weighted = gmm.log_joint(three, mixture_1d, grid_1d[:, None]).exp()  # λ_k N(x | μ_k, σ_k²)
mixture_density = gmm.log_marginal(three, mixture_1d, grid_1d[:, None]).exp()
fig, ax = plt.subplots(figsize=(7, 3.5))
for k in range(3):
    ax.plot(grid_1d, weighted[:, k], "--",
            label=rf"$\lambda_{k + 1}\,\mathcal{{N}}(x \mid \mu_{k + 1}, \sigma_{k + 1}^2)$")
ax.plot(grid_1d, mixture_density, "k", lw=2,
        label=r"$p(x) = \sum_k \lambda_k\,\mathcal{N}(x \mid \mu_k, \sigma_k^2)$")
ax.set(xlabel="x", ylabel="density", title="a mixture of three Gaussians")
ax.legend(fontsize=8)
show(fig, "mixture_density")

# %% [markdown]
# ## 3. Sampling a mixture
#
# Ancestral sampling follows the story: first z, then x given z. To draw z ~ Categorical(λ),
# cut [0, 1) into consecutive intervals of lengths λ_1, …, λ_K, draw U ~ Uniform(0, 1) and take
# the interval U falls in (the inverse of the cumulative distribution of z). Then draw x from
# component z. Ten lines of code:

# %%
def sample_mixture(weights, means, scales, n, generator):
    """Draw n points of a 1-D mixture: U ~ Uniform(0, 1) picks the interval, then x | z."""
    u = torch.rand(n, generator=generator)  # U ~ Uniform(0, 1)
    right_ends = torch.cumsum(weights, 0)  # interval k is [λ_1 + … + λ_{k-1}, λ_1 + … + λ_k)
    z = torch.searchsorted(right_ends, u, right=True).clamp(max=len(weights) - 1)
    x = means[z] + scales[z] * torch.randn(n, generator=generator)  # x | z ~ N(μ_z, σ_z²)
    return x, z, u


generator = torch.Generator().manual_seed(1)
draws = 100_000
x_drawn, z_drawn, u_drawn = sample_mixture(
    mixture_1d["weights"], mixture_1d["means"][:, 0], mixture_1d["scale_tril"][:, 0, 0],
    draws, generator)
frequencies = torch.bincount(z_drawn, minlength=3) / draws
numbers["sampling_weight_max_error"] = float((frequencies - mixture_1d["weights"]).abs().max())


def mixture_cdf(x):
    scales = mixture_1d["scale_tril"][:, 0, 0]
    return (mixture_1d["weights"] * torch.distributions.Normal(
        mixture_1d["means"][:, 0], scales).cdf(x[:, None])).sum(1)


ordered = x_drawn.sort().values
empirical = torch.arange(1, draws + 1) / draws
numbers["sampling_ks_distance"] = float((empirical - mixture_cdf(ordered)).abs().max())
print(f"component frequencies {frequencies.numpy().round(4)} against λ = "
      f"{mixture_1d['weights'].numpy()}: largest error "
      f"{numbers['sampling_weight_max_error']:.4f} (expected below 0.01)")
print(f"Kolmogorov-Smirnov distance of the draws from p(x): "
      f"{numbers['sampling_ks_distance']:.4f} (expected below 0.01)")

# %%
fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), gridspec_kw={"height_ratios": [1, 3]})
colors = ["C0", "C1", "C2"]
left_end = 0.0
for k, weight in enumerate(mixture_1d["weights"].tolist()):
    top.axvspan(left_end, left_end + weight, color=colors[k], alpha=0.3)
    top.text(left_end + weight / 2, 0.75, f"z = {k + 1}\nλ = {weight}", ha="center", fontsize=8)
    left_end += weight
for u, z in zip(u_drawn[:25].tolist(), z_drawn[:25].tolist(), strict=True):
    top.plot([u, u], [0, 0.45], color=colors[z], lw=1.5)
top.set(xlim=(0, 1), ylim=(0, 1), yticks=[], xlabel="U ~ Uniform(0, 1): 25 draws and the "
        "interval each falls in")
bottom.hist(x_drawn.numpy(), bins=150, density=True, color="0.75",
            label=f"{draws} draws")
bottom.plot(grid_1d, mixture_density, "k", lw=2, label="p(x)")
bottom.set(xlabel="x", ylabel="density")
bottom.legend(fontsize=8)
fig.tight_layout()
show(fig, "mixture_sampling")

# %% [markdown]
# The zoo's own ancestral sampler, `gmm.sample(config, params, n)`, does the same with
# `Categorical(λ)`; its draws have the same moments.

# %%
x_zoo, _ = gmm.sample(three, mixture_1d, draws, torch.Generator().manual_seed(2))
print(f"mean {x_drawn.mean():.3f} vs {x_zoo.mean():.3f}; std {x_drawn.std():.3f} vs "
      f"{x_zoo.std():.3f}")

# %% [markdown]
# ## 4. Maximum likelihood is minimum KL divergence
#
# For data drawn from p*, KL(p* ‖ p_θ) = E_p*[log p*(x)] − E_p*[log p_θ(x)]. The first term
# does not depend on θ; the second is estimated by the average log-likelihood
# (1/N) Σ_n log p_θ(x_n). So maximizing the likelihood minimizes (an estimate of) the KL
# divergence from the data's distribution to the model.
#
# Take p* = the mixture above and the model family θ = (m, s) of single Gaussians. We compute
# KL(p* ‖ N(m, s²)) by quadrature on a fine grid and the average log-likelihood from N draws;
# the curves differ only by the entropy H(p*) (and sampling noise), and the maximum-likelihood
# Gaussian (the sample mean and variance) sits where the KL is smallest: at the moments of p*.
# This KL is "mass-covering": one Gaussian stretches over all three bumps.

# %%
sample_size = 10_000
data = x_drawn[:sample_size]
fine = torch.linspace(-12, 14, 20_001)
step = float(fine[1] - fine[0])
log_p_star = gmm.log_marginal(three, mixture_1d, fine[:, None])
entropy = float(-(log_p_star.exp() * log_p_star).sum() * step)
true_mean = float((fine * log_p_star.exp()).sum() * step)
true_std = math.sqrt(float(((fine - true_mean) ** 2 * log_p_star.exp()).sum() * step))


def kl_from_p_star(m, s):
    """KL(p* ‖ N(m, s²)) by quadrature, nats."""
    log_q = torch.distributions.Normal(m, s).log_prob(fine)
    return float((log_p_star.exp() * (log_p_star - log_q)).sum() * step)


candidates = torch.linspace(-1.5, 2.5, 161)
kl_curve = [kl_from_p_star(float(m), true_std) for m in candidates]
log_likelihood_curve = [float(torch.distributions.Normal(m, true_std).log_prob(data).mean())
                        for m in candidates]
ml_mean, ml_std = float(data.mean()), float(data.std(correction=0))
kl_minimizer = float(candidates[int(np.argmin(kl_curve))])
numbers["kl_minimizer_mean"] = kl_minimizer
numbers["maximum_likelihood_mean"] = ml_mean
numbers["kl_at_maximum_likelihood"] = kl_from_p_star(ml_mean, ml_std)
print(f"the KL is smallest at m = {kl_minimizer:.3f} (the mean of p*, {true_mean:.3f}); "
      f"the maximum-likelihood mean is {ml_mean:.3f}; they agree to within 0.1")
print(f"KL(p* ‖ best Gaussian) = {numbers['kl_at_maximum_likelihood']:.3f} nats > 0: no "
      "single Gaussian is a mixture")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
left.plot(candidates, kl_curve, lw=2, label="KL(p* ‖ N(m, s²)) (quadrature)")
left.plot(candidates, -np.array(log_likelihood_curve) - entropy, "--", lw=2,
          label=f"−(1/N) Σ log N(x_n | m, s²) − H(p*), N = {sample_size}")
left.axvline(ml_mean, color="k", lw=0.8, ls=":", label="maximum-likelihood m")
left.set(xlabel="m (s fixed at the std of p*)", ylabel="nats", title="ML = min KL")
left.legend(fontsize=7)
right.plot(grid_1d, mixture_density, "k", lw=2, label="p* (the mixture)")
right.plot(grid_1d, torch.distributions.Normal(ml_mean, ml_std).log_prob(grid_1d).exp(), "C3",
           lw=2, label="maximum-likelihood Gaussian")
right.set(xlabel="x", ylabel="density", title="forward KL covers the mass")
right.legend(fontsize=8)
show(fig, "ml_is_min_kl")

# %% [markdown]
# ## 5. EM on Old Faithful
#
# Old Faithful: 272 eruptions, (duration, waiting time), standardized as in Bishop's figure.
# The gradient of log p(x) has no closed-form zero, but given the responsibilities
# r_nk = p(z_n = k | x_n) (the **E-step**) the weighted maximum-likelihood estimates are closed
# forms (the **M-step**): N_k = Σ_n r_nk, λ_k = N_k / N, μ_k = Σ_n r_nk x_n / N_k,
# Σ_k = Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ / N_k. We start from Bishop's deliberately poor
# start: unit covariances, means on the wrong diagonal.

# %%
faithful = datasets.load_dataset("old-faithful", test_fraction=0, standardize=True,
                                 dtype=torch.float64)
x = faithful.train
config = gmm.GMMConfig(dim=2, components=2)
start = {"weights": torch.tensor([0.5, 0.5]), "means": torch.tensor([[-1.5, 1.0], [1.5, -1.0]]),
         "scale_tril": torch.eye(2).expand(2, 2, 2).clone()}
print(faithful.describe())

# %% [markdown]
# The loop, written with the zoo's closed forms (`responsibilities` is the E-step, `m_step` the
# M-step), keeping the parameters after 0, 1, 2, 5 and 20 iterations:

# %%
params = start
snapshots = {0: start}
by_hand = [float(gmm.log_marginal(config, start, x).mean())]
for iteration in range(1, 21):
    resp = gmm.responsibilities(config, params, x)  # E-step: r_nk = p(z_n = k | x_n)
    params = gmm.m_step(config, x, resp)  # M-step: weighted means, covariances, weights
    by_hand.append(float(gmm.log_marginal(config, params, x).mean()))
    if iteration in (1, 2, 5, 20):
        snapshots[iteration] = params
present(plot_em_contours(x, snapshots, OUT / "em_old_faithful.png", feature_names=[
    f"{name} (standardized)" for name in faithful.feature_names]))

# %% [markdown]
# The zoo's EM, through its scikit-learn face (`inference.estimators_sklearn.GaussianMixture`:
# scikit-learn's parameter names, the zoo's one EM loop for every model with closed-form E and
# M steps underneath), runs the same iterations from the same start to convergence; its
# `history_` holds log p(x) after every iteration. scikit-learn's own `GaussianMixture` is an
# independent reference. The log-likelihood never decreases (EM's guarantee; lecture 2 shows
# why) and both end at −1.4171 nats per point.

# %%
zoo_em = ZooGaussianMixture(2, tol=1e-10, max_iter=1000,
                            weights_init=start["weights"].numpy(),
                            means_init=start["means"].numpy(),
                            precisions_init=np.stack([np.eye(2)] * 2)).fit(x.numpy())
history = np.array(zoo_em.history_["log_likelihood"])
reference = GaussianMixture(2, tol=1e-10, max_iter=1000, random_state=0).fit(x.numpy())
numbers["em_log_likelihood"] = history.tolist()
numbers["em_smallest_step"] = float(np.diff(history).min())
numbers["em_final_log_likelihood"] = float(history[-1])
numbers["sklearn_log_likelihood"] = float(reference.score(x.numpy()))
shared = min(len(by_hand), len(history))  # the iterations both ran
numbers["em_loop_matches_fit_em"] = float(np.abs(np.array(by_hand[:shared])
                                                 - history[:shared]).max())
print(f"EM converged after {zoo_em.n_iter_} iterations at log p(x) = {history[-1]:.5f} nats per "
      f"point; scikit-learn: {numbers['sklearn_log_likelihood']:.5f}")
print(f"smallest change between iterations: {numbers['em_smallest_step']:.2e} (never negative)")
print(f"hand-written loop vs the zoo's EM: {numbers['em_loop_matches_fit_em']:.1e}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(range(len(history)), history, "o-", ms=3)
ax.axhline(numbers["sklearn_log_likelihood"], color="k", ls="--", lw=1,
           label="scikit-learn's optimum")
ax.set(xlabel="EM iteration", ylabel="log p(x), nats per point",
       title="EM's log-likelihood never decreases")
ax.legend()
show(fig, "em_log_likelihood")

# %% [markdown]
# ## 6. K-means is the hard limit of EM
#
# Fix every covariance at σ² I and every weight at 1/K. The responsibilities are then a
# softmax of −‖x_n − μ_k‖² / 2σ²; as σ → 0 each becomes one-hot on the nearest centre, and
# the M-step moves every centre to the mean of its points: Lloyd's algorithm, K-means.
# Below, "soft K-means" is EM with σ held fixed (only the means are updated).

# %%
def em_with_fixed_variance(x, centers, sigma, iterations=30):
    """EM for equal weights and covariances σ² I, updating the means only."""
    k = centers.shape[0]
    fixed = gmm.GMMConfig(dim=x.shape[1], components=k, covariance_type="spherical")
    for _ in range(iterations):
        params = {"weights": torch.full((k,), 1.0 / k), "means": centers,
                  "scale": torch.full((k,), sigma)}
        resp = gmm.responsibilities(fixed, params, x)  # E-step
        centers = (resp.T @ x) / resp.sum(0)[:, None]  # M-step for the means
    return centers, gmm.responsibilities(fixed, {**params, "means": centers}, x)


initial_centers = start["means"]
hard = kmeans(x, 2, init=initial_centers, n_init=1)
sigmas = (1.0, 0.5, 0.2, 0.01)
soft = {sigma: em_with_fixed_variance(x, initial_centers, sigma) for sigma in sigmas}
entropy_by_sigma = {}
for sigma, (_, resp) in soft.items():
    entropy_by_sigma[sigma] = float(-(resp * resp.clamp_min(1e-300).log()).sum(1).mean())
numbers["responsibility_entropy_by_sigma"] = [entropy_by_sigma[s] for s in sigmas]
numbers["kmeans_center_error_at_small_sigma"] = float((soft[0.01][0] - hard.centers).abs().max())
for sigma in sigmas:
    print(f"σ = {sigma:<5} mean entropy of the responsibilities {entropy_by_sigma[sigma]:.4f} "
          f"nats; centres {soft[sigma][0].numpy().round(3).tolist()}")
print(f"K-means centres {hard.centers.numpy().round(3).tolist()}; at σ = 0.01 EM's centres "
      f"differ by {numbers['kmeans_center_error_at_small_sigma']:.1e} (expected below 1e-9)")

# %%
fig, axes = plt.subplots(1, len(sigmas) + 1, figsize=(3.2 * (len(sigmas) + 1), 3.2),
                         sharex=True, sharey=True)
red_blue = torch.tensor([[0.84, 0.15, 0.16], [0.12, 0.47, 0.71]])
for ax, sigma in zip(axes, sigmas, strict=False):
    centers, resp = soft[sigma]
    ax.scatter(x[:, 0], x[:, 1], s=6, c=(resp @ red_blue).numpy())
    ax.plot(centers[:, 0], centers[:, 1], "kx", ms=10, mew=2)
    ax.set_title(f"EM, fixed σ = {sigma}\nentropy {entropy_by_sigma[sigma]:.3f} nats", fontsize=9)
one_hot = torch.nn.functional.one_hot(hard.labels, 2).double()
axes[-1].scatter(x[:, 0], x[:, 1], s=6, c=(one_hot @ red_blue).numpy())
axes[-1].plot(hard.centers[:, 0], hard.centers[:, 1], "kx", ms=10, mew=2)
axes[-1].set_title(f"K-means (Lloyd)\ninertia {hard.inertia:.1f}", fontsize=9)
for ax in axes:
    ax.set_xlabel(f"{faithful.feature_names[0]} (standardized)", fontsize=8)
axes[0].set_ylabel(f"{faithful.feature_names[1]} (standardized)", fontsize=8)
fig.tight_layout()
show(fig, "kmeans_limit")

# %% [markdown]
# ## What we saw
#
# - A Gaussian is a one-component mixture; the zoo's log-density matches SciPy to 1e-12.
# - Sampling a mixture = pick the interval of U ~ Uniform(0, 1), then sample that component.
# - Maximizing the likelihood minimizes KL(p_data ‖ p_θ); the best single Gaussian for a
#   mixture matches its mean and variance and leaves a KL above 0.
# - EM climbs the likelihood monotonically: −1.4171 nats per point on standardized Old
#   Faithful, the same optimum as scikit-learn.
# - As σ → 0, EM with fixed spherical covariances is K-means.
#
# Next, tutorial 2 shows *why* EM climbs: it is coordinate ascent on the ELBO.

# %%
numbers["seconds"] = time.perf_counter() - STARTED
(OUT / "numbers.json").write_text(json.dumps(numbers, indent=2))
print(f"numbers: {OUT / 'numbers.json'}; {numbers['seconds']:.1f} s")
