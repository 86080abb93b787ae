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
# # 3. PPCA and linear autoencoders
#
# Probabilistic PCA is the latent-variable model in which everything is Gaussian and therefore
# everything is known exactly:
#
# z_n ~ N(0, I_q),   x_n | z_n ~ N(W z_n + μ, σ² I_D),   so   x_n ~ N(μ, W Wᵀ + σ² I).
#
# On the scikit-learn digits (1437 training and 360 held-out images of 8 × 8 = 64 pixels,
# counts 0..16) this tutorial shows:
#
# 1. **The closed form** (Tipping & Bishop): W from the top q eigenvectors of the sample
#    covariance, σ² the mean of the other eigenvalues; held-out log p(x) rising with q.
# 2. **EM** reaches the same log-likelihood (to 1e-6 nats), never going down.
# 3. **The posterior** p(z | x) = N(σ⁻² Σ Wᵀ(x − μ), Σ) with Σ = σ² (Wᵀ W + σ² I)⁻¹, a q × q
#    matrix; checked against conditioning the joint Gaussian of (z, x) to 1e-10.
# 4. **The exact-posterior guide**: its ELBO estimate is log p(x) for every draw of z, so its
#    variance is 0 (to 1e-9).
# 5. **The mean-field gap**: W and W R (R a rotation) give the same likelihood; at the principal
#    axes the posterior is diagonal and a factorized q loses nothing, at a 45° rotation it loses
#    KL = ½ [Σ_i log Λ_ii − log det Λ] (Λ = Σ⁻¹), about 0.27 nats per image here.
# 6. **The linear autoencoder** x ↦ B A x trained by gradient descent on squared error finds
#    the PCA subspace (largest principal angle below 0.05 rad, in fact ~1e-5), but not its axes.
#
# Run: `python tutorials/03_ppca_and_linear_autoencoders.py` (about 20 s on a CPU) or as a
# notebook via jupytext; figures and `numbers.json` go to
# `tutorials/output/03_ppca_and_linear_autoencoders/` (or `$LVM_ZOO_TUTORIAL_OUT`);
# `LVM_ZOO_SMOKE=1` trains the autoencoder for fewer steps.

# %%
import json
import math
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyro.distributions as dist
import torch
from scipy.linalg import subspace_angles

from inference.catalog import get_model
from inference.decomposition import elbo_decomposition
from inference.estimators_sklearn import PPCA
from inference.evaluate import fitted, pointwise_log_weights
from inference.figures import present, save_figure
from inference.figures.ppca import (
    canonical,
    latent_means_figure,
    posterior_ellipses_figure,
    spectrum_figure,
)
from zoo import datasets, ppca

SMOKE = os.environ.get("LVM_ZOO_SMOKE", "0") not in ("", "0")
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("LVM_ZOO_TUTORIAL_OUT")
           or HERE / "output" / "03_ppca_and_linear_autoencoders")
OUT.mkdir(parents=True, exist_ok=True)
STARTED = time.perf_counter()
numbers: dict = {"smoke": SMOKE}  # every number the text promises; saved to numbers.json
torch.set_default_dtype(torch.float64)  # closed forms to 1e-10, so that equalities show


def show(fig, name: str) -> Path:
    """Save ``fig`` as OUT/name.png and present it (in a notebook, display it)."""
    return present(save_figure(fig, OUT / f"{name}.png", dpi=110))


# %% [markdown]
# ## 1. The closed form
#
# `ppca.closed_form(config, x)` eigendecomposes the sample covariance S once. The parameters
# come back in the zoo's one representation, `{"loc": μ, "weight": W, "noise": σ²}`, and
# `ppca.log_marginal` gives the exact log p(x) per image (by Woodbury, never forming the
# 64 × 64 covariance). More latent dimensions fit the training images better, and here the
# held-out ones too.

# %%
digits = datasets.load_dataset("digits", dtype=torch.float64)
x, x_test = digits.train, digits.test
spec = get_model("ppca")
print(digits.describe())

held_out = {}
for q in (1, 2, 5, 10, 20, 40):
    config_q = spec.make_config(dim=64, latent_dim=q)
    params_q = ppca.closed_form(config_q, x)
    held_out[q] = (float(ppca.log_marginal(config_q, params_q, x).mean()),
                   float(ppca.log_marginal(config_q, params_q, x_test).mean()))
    print(f"q = {q:>2}: σ² = {float(params_q['noise']):6.3f}   log p(x) train "
          f"{held_out[q][0]:8.2f}   held out {held_out[q][1]:8.2f} nats per image")
numbers["held_out_log_likelihood_by_q"] = {str(q): v[1] for q, v in held_out.items()}

# %% [markdown]
# From here on q = 10. The spectrum: the fitted covariance W Wᵀ + σ² I keeps the top ten
# eigenvalues of S and replaces the other 54 by their mean σ².

# %%
config = spec.make_config(dim=64, latent_dim=10)
params = ppca.closed_form(config, x)
present(spectrum_figure(x, config, params, OUT / "spectrum.png", title="digits, q = 10"))

# %% [markdown]
# The columns of W (in their canonical rotation, see section 5) are images: the directions in
# pixel space that the latent coordinates move along, the mean image μ first.

# %%
principal = canonical(params)["weight"]
fig, axes = plt.subplots(1, 7, figsize=(10, 1.9))
axes[0].imshow(params["loc"].reshape(8, 8), cmap="gray")
axes[0].set_title("mean μ", fontsize=9)
for i, ax in enumerate(axes[1:]):
    column = principal[:, i]
    limit = float(column.abs().max())
    ax.imshow(column.reshape(8, 8), cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_title(f"w_{i + 1}", fontsize=9)
for ax in axes:
    ax.axis("off")
show(fig, "loadings")

# %% [markdown]
# ## 2. EM reaches the closed form
#
# EM treats z as missing. The E-step computes the posterior moments E[z_n] and E[z_n z_nᵀ],
# the M-step solves a linear regression of x on z for W, then σ². The zoo's `PPCA` estimator
# (scikit-learn's `PCA` parameters, as a density) runs it with `inference="em"`: lvm-zoo's one
# EM loop, the same as for the mixture, from a random W; `history_` holds log p(x) per
# iteration.

# %%
em = PPCA(10, inference="em", tol=1e-10, max_iter=5000, random_state=0).fit(x.numpy())
closed = float(ppca.log_marginal(config, params, x).mean())
history = np.array(em.history_["log_likelihood"])
numbers["em_log_likelihood"] = history.tolist()
numbers["em_smallest_step"] = float(np.diff(history).min())
numbers["em_minus_closed_form"] = float(history[-1] - closed)
print(f"EM: {em.n_iter_} iterations, log p(x) = {history[-1]:.6f}; closed form {closed:.6f} "
      f"(difference {numbers['em_minus_closed_form']:.1e}); smallest change per iteration "
      f"{numbers['em_smallest_step']:.1e}, never negative")

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.plot(history, lw=2, label="EM")
ax.axhline(closed, color="k", ls="--", lw=1, label="closed form (Tipping & Bishop)")
ax.set(xlabel="EM iteration", ylabel="log p(x), nats per image", xscale="symlog",
       xlim=(0, len(history)), ylim=(closed - 40, closed + 3),
       title="EM climbs to the closed-form optimum")
ax.legend()
show(fig, "em_vs_closed_form")

# %% [markdown]
# ## 3. The posterior, and its covariance
#
# Since (z, x) is jointly Gaussian, p(z | x) is Gaussian with
#
# Σ = σ² (Wᵀ W + σ² I_q)⁻¹,   E[z | x] = σ⁻² Σ Wᵀ (x − μ).
#
# Note the q × q matrix Wᵀ W: σ² (W Wᵀ + σ² I)⁻¹ is D × D and is *not* the posterior
# covariance (it does not even have the shape of one). Three ways to the same matrix: the
# zoo's `ppca.posterior`, the formula, and conditioning the joint Gaussian,
# Cov(z | x) = I − Wᵀ (W Wᵀ + σ² I)⁻¹ W.

# %%
W, noise = params["weight"], params["noise"]
from_zoo = ppca.posterior(config, params, x[:1]).covariance_matrix[0]
formula = noise * torch.linalg.inv(W.T @ W + noise * torch.eye(10))
conditioning = torch.eye(10) - W.T @ torch.linalg.solve(W @ W.T + noise * torch.eye(64), W)
numbers["posterior_covariance_error"] = max(float((from_zoo - formula).abs().max()),
                                            float((from_zoo - conditioning).abs().max()))
print(f"largest difference among the three: {numbers['posterior_covariance_error']:.1e} "
      "(expected below 1e-10)")
print(f"σ² (W Wᵀ + σ² I)⁻¹ has shape {tuple((W @ W.T).shape)}: not a covariance of z")
present(latent_means_figure(x, digits.train_labels, spec.make_config(dim=64, latent_dim=2),
                            ppca.closed_form(spec.make_config(dim=64, latent_dim=2), x),
                            OUT / "latent_means.png", title="digits, q = 2"))

# %% [markdown]
# ## 4. The exact-posterior guide has a zero-variance ELBO
#
# In Pyro the guide q(z | x) is a program. lvm-zoo's `exact` guide for PPCA is the posterior
# above. The ELBO's Monte Carlo estimate uses log-weights log p(x, z) − log q(z | x) with
# z ~ q; for q = p(z | x) that is log p(x) *for every z*. We draw 100 z per image with
# `pointwise_log_weights` (the zoo's evaluation routine): all 100 × 1437 log-weights equal the
# closed-form log p(x_n), and their variance over draws is 0.

# %%
with fitted(spec, config, params, x, guide="exact") as (model, exact_guide):
    log_weights = pointwise_log_weights(model, exact_guide, x, 100)  # (100, N)
exact_log_px = ppca.log_marginal(config, params, x)
numbers["exact_guide_elbo_std"] = float(log_weights.std(0).max())
numbers["exact_guide_elbo_error"] = float((log_weights - exact_log_px).abs().max())
print(f"largest std over draws: {numbers['exact_guide_elbo_std']:.1e}; largest |log-weight − "
      f"log p(x)|: {numbers['exact_guide_elbo_error']:.1e} (both expected below 1e-9)")

# %% [markdown]
# ## 5. The mean-field gap
#
# Replace W by W R for a rotation R: W R Rᵀ Wᵀ = W Wᵀ, so the likelihood does not change. The
# posterior does: its precision Λ = Σ⁻¹ = I + Wᵀ W / σ² becomes Rᵀ Λ R. At the principal axes
# (`canonical`) Λ is diagonal; rotated, it is not.
#
# The best factorized q(z) = Π_i q(z_i) for a Gaussian posterior N(m, Λ⁻¹) is known in closed
# form (Bishop §10.1.2): q_i = N(m_i, 1/Λ_ii), the right means but the variances of the
# *conditionals*, too small. Its gap is
#
# KL(q ‖ p(z | x)) = ½ [Σ_i log Λ_ii − log det Λ] ≥ 0,  zero exactly when Λ is diagonal.
#
# We rotate by 45° in the plane of the best- and worst-determined coordinates (z_1, z_10) and
# measure the gap of that q with the zoo's exact decomposition log p(x) = ELBO + KL.

# %%
def rotation(q, angle, plane=(0, 9)):
    r = torch.eye(q)
    i, j = plane
    r[i, i] = r[j, j] = math.cos(angle)
    r[i, j], r[j, i] = -math.sin(angle), math.sin(angle)
    return r


def best_mean_field(at):
    """q*(z_n) = Π_i N(m_ni, 1/Λ_ii) and the closed-form gap ½[Σ log Λ_ii − log det Λ]."""
    exact = ppca.posterior(config, at, x)
    precision = torch.linalg.inv(exact.covariance_matrix[0])
    q_star = dist.Normal(exact.mean, precision.diagonal().rsqrt().expand_as(exact.mean))
    gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    return q_star.to_event(1), float(gap)


axes_params = canonical(params)
rotated = dict(axes_params, weight=axes_params["weight"] @ rotation(10, math.pi / 4))
mean_field_gap = {}
for name, at in (("principal axes", axes_params), ("rotated 45°", rotated)):
    q_star, closed_gap = best_mean_field(at)
    parts = elbo_decomposition(spec, config, at, x, q_star).means()
    mean_field_gap[name] = {"closed_form": closed_gap, "measured": parts["kl"],
                            "log_likelihood": parts["log_likelihood"], "elbo": parts["elbo"]}
    print(f"{name:<15} log p(x) {parts['log_likelihood']:.6f}  ELBO {parts['elbo']:.6f}  gap "
          f"{parts['kl']:.6f}  closed form {closed_gap:.6f} nats per image")
numbers["mean_field_gap"] = mean_field_gap

# %% [markdown]
# The likelihood is the same at both (to 1e-10), the gap is 0 at the principal axes and
# about 0.27 nats at 45°, equal to its closed form. Turning the angle shows that the gap only
# vanishes where Λ is diagonal: a mean-field ELBO therefore *prefers* the principal axes,
# which is how variational PCA picks a rotation that the likelihood cannot.

# %%
angles = torch.linspace(0, math.pi, 73)
gap_curve = [best_mean_field(dict(axes_params, weight=axes_params["weight"]
                                  @ rotation(10, float(a))))[1] for a in angles]
fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.plot(np.degrees(angles.numpy()), gap_curve, lw=2)
ax.set(xlabel="rotation angle in the (z_1, z_10) plane, degrees",
       ylabel="best mean-field gap, nats per image", xticks=range(0, 181, 45),
       title="the mean-field ELBO prefers the principal axes")
show(fig, "mean_field_gap_by_angle")
present(posterior_ellipses_figure(x, config, params, OUT / "posterior_ellipses.png",
                                  title="digits, q = 10"))

# %% [markdown]
# ## 6. The linear autoencoder finds the PCA subspace
#
# Drop the noise model and the posterior: encode z = A x, decode x̂ = B z, and minimize the
# squared reconstruction error Σ_n ‖x_n − B A x_n‖² by gradient descent (we centre the data, so
# no biases are needed, and divide the counts by 16 so that Adam's step size suits them). The
# optimum spans the same subspace as the top q principal directions (Baldi & Hornik 1989):
# the largest principal angle between B's columns and PPCA's W falls below 0.05 rad. The
# autoencoder does not find the *axes*: B is any basis of that subspace.

# %%
steps = 500 if SMOKE else 2000
centred = (x - x.mean(0)) / 16
torch.manual_seed(0)
encoder = torch.nn.Parameter(0.1 * torch.randn(10, 64))  # A : (q, D)
decoder = torch.nn.Parameter(0.1 * torch.randn(64, 10))  # B : (D, q)
optimizer = torch.optim.Adam([encoder, decoder], lr=1e-2)
losses, angles_during = [], []
for step in range(steps):
    optimizer.zero_grad()
    loss = (centred @ encoder.T @ decoder.T - centred).square().sum(1).mean()
    loss.backward()
    optimizer.step()
    losses.append(float(loss.detach()))
    if step % 25 == 0 or step == steps - 1:
        angles_during.append((step, float(subspace_angles(decoder.detach().numpy(),
                                                          W.numpy()).max())))
largest_angle = float(subspace_angles(decoder.detach().numpy(), W.numpy()).max())
pca_basis = torch.linalg.qr(W).Q
pca_error = float((centred @ pca_basis @ pca_basis.T - centred).square().sum(1).mean())
learned = decoder.detach()
column_angles = [math.degrees(math.acos(min(1.0, float(
    (learned[:, i] @ principal[:, i]).abs() / (learned[:, i].norm() * principal[:, i].norm())))))
    for i in range(10)]
numbers["autoencoder_largest_principal_angle"] = largest_angle
numbers["autoencoder_minus_pca_error"] = losses[-1] - pca_error
print(f"after {steps} Adam steps: reconstruction error {losses[-1]:.6f}, PCA's {pca_error:.6f}; "
      f"largest principal angle to PPCA's W: {largest_angle:.1e} rad (expected below 0.05)")
print(f"angle between each decoder column and the matching principal direction: "
      f"{np.round(column_angles).astype(int).tolist()} degrees: the subspace, not the axes")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
left.semilogy(np.array(losses) - pca_error + 1e-12)
left.set(xlabel="Adam step", ylabel="error − PCA's error",
         title="reconstruction error reaches PCA's")
steps_recorded, recorded = zip(*angles_during, strict=True)
right.semilogy(steps_recorded, recorded)
right.axhline(0.05, color="k", ls="--", lw=1, label="0.05 rad")
right.set(xlabel="Adam step", ylabel="largest principal angle, rad",
          title="the decoder's span → the PCA subspace")
right.legend()
show(fig, "linear_autoencoder")

# %% [markdown]
# ## What we saw
#
# - PPCA's maximum-likelihood fit is an eigendecomposition; EM reaches it from a random start.
# - The posterior covariance is σ² (Wᵀ W + σ² I)⁻¹, q × q, the same for every datapoint.
# - With the exact posterior as guide, every ELBO draw equals log p(x): zero variance.
# - A factorized guide pays ½[Σ log Λ_ii − log det Λ] unless the posterior is diagonal, so the
#   mean-field ELBO picks the principal axes among the equally likely rotations.
# - A linear autoencoder trained on squared error spans the PCA subspace: PPCA without noise.
#
# Tutorial 4 makes the decoder nonlinear: the deep Gaussian latent-variable model, where
# none of these closed forms exist and the encoder must be learned.

# %%
numbers["seconds"] = time.perf_counter() - STARTED
(OUT / "numbers.json").write_text(json.dumps(numbers, indent=2))
print(f"numbers: {OUT / 'numbers.json'}; {numbers['seconds']:.1f} s")
