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
# # 6. Scaling up
#
# The models so far fitted in seconds. This tutorial shows what changes with a lot of data:
#
# 1. **Devices**: the same code runs on a CPU or a GPU. `device="auto"` picks CUDA when PyTorch
#    sees one; the data move to it once and every tensor follows them. We time one EM iteration
#    of a K = 8, D = 16 mixture as N grows from 10⁴ to 10⁶: the time grows linearly in N.
# 2. **Subsampling with plates**: `pyro.plate("data", N, subsample_size=B)` scales a minibatch's
#    log-likelihood by N / B, so the minibatch ELBO is an unbiased estimate of the full one;
#    its spread shrinks like 1/√B (100× more rows: 10× less spread).
# 3. **Minibatch SVI**: on 100 000 points one minibatch step (B = 1000) costs a small fraction
#    of a full-data step (about 1/20 here), and from the same poor start a few hundred of them
#    end within 0.01 nats of EM's optimum.
# 4. **What the benchmarks say**: the tables of `benchmarks/RESULTS.md`.
#
# Run: `python tutorials/06_scaling_up.py` (about a minute on a CPU; on a GPU the device
# section also times CUDA). Figures and `numbers.json` go to `tutorials/output/06_scaling_up/`
# (or `$LVM_ZOO_TUTORIAL_OUT`); `LVM_ZOO_SMOKE=1` uses smaller N and fewer steps.

# %%
import json
import math
import os
import re
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.infer
import torch
from sklearn.exceptions import ConvergenceWarning

from inference.api import choose_device
from inference.catalog import get_model
from inference.em import fit_em
from inference.estimators_sklearn import GaussianMixture
from inference.evaluate import fitted
from inference.figures import present, save_figure
from inference.strategies.svi import build_guide
from inference.svi import fit_svi
from zoo import gmm

SMOKE = os.environ.get("LVM_ZOO_SMOKE", "0") not in ("", "0")
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("LVM_ZOO_TUTORIAL_OUT") or HERE / "output" / "06_scaling_up")
OUT.mkdir(parents=True, exist_ok=True)
STARTED = time.perf_counter()
numbers: dict = {"smoke": SMOKE}  # every number the text promises; saved to numbers.json
warnings.filterwarnings("ignore", category=ConvergenceWarning)  # we run EM for fixed iterations


def show(fig, name: str) -> Path:
    """Save ``fig`` as OUT/name.png and present it (in a notebook, display it)."""
    return present(save_figure(fig, OUT / f"{name}.png", dpi=110))


# %% [markdown]
# ## 1. Devices
#
# Every fit in lvm-zoo takes the device from its data: models make their tensors with the
# data's `device` and `dtype` (never `.cuda()`), so moving the data moves the fit. On the
# command line that is `--device auto|cpu|cuda`; in Python, `choose_device` and `.to(device)`.
# (`lvm-zoo check`, tutorial 5, flags a model that makes a tensor without `device=`.)

# %%
device = choose_device("auto")
devices = [torch.device("cpu")] + ([device] if device.type == "cuda" else [])
print(f"choose_device('auto') -> {device}; CUDA available: {torch.cuda.is_available()}; "
      f"CPU threads: {torch.get_num_threads()}")
numbers["devices"] = [str(d) for d in devices]

# %% [markdown]
# One EM iteration of a full-covariance mixture (K = 8, D = 16) is one pass over the data: a
# matrix product whitens all rows against all components, a log-sum-exp normalizes, another
# product accumulates the statistics. Its time grows linearly in N, on every device. We time
# the zoo's EM loop itself (`inference.em.fit_em`, what the estimators and `lvm-zoo fit` run),
# for ten iterations after two of warm-up, so that no initialization enters the time.

# %%
spec = get_model("gmm")
k, d = 8, 16
generator = torch.Generator().manual_seed(0)
truth = {"weights": torch.full((k,), 1 / k), "means": 3 * torch.randn(k, d, generator=generator),
         "scale_tril": torch.eye(d).expand(k, d, d).clone()}
big = gmm.GMMConfig(dim=d, components=k)
sizes = [10_000, 100_000] if SMOKE else [10_000, 100_000, 1_000_000]
seconds_per_iteration: dict[str, list[float]] = {}
for target in devices:
    seconds_per_iteration[str(target)] = []
    for n in sizes:
        x_big, _ = gmm.sample(big, truth, n, generator)
        x_big = x_big.to(target)  # the one move; everything else follows
        fit_em(spec, big, x_big, tol=0, max_iter=2)  # warm-up (first CUDA calls are slow)
        result = fit_em(spec, big, x_big, tol=0, max_iter=10)
        seconds_per_iteration[str(target)].append(result.seconds / 10)
        print(f"{target}: N = {n:>9,}  {1000 * result.seconds / 10:8.1f} ms per EM iteration")
numbers["em_seconds_per_iteration"] = {"sizes": sizes, **seconds_per_iteration}

# %%
fig, ax = plt.subplots(figsize=(6, 3.8))
for target, values in seconds_per_iteration.items():
    ax.loglog(sizes, values, "o-", label=target)
reference = seconds_per_iteration["cpu"][0] * np.array(sizes) / sizes[0]
ax.loglog(sizes, reference, "k:", label="∝ N")
ax.set(xlabel="N, datapoints", ylabel="seconds per EM iteration",
       title=f"EM for a mixture, K = {k}, D = {d}")
ax.legend(fontsize=8)
show(fig, "em_time_by_n")

# %% [markdown]
# ## 2. Subsampling with plates
#
# Inside `pyro.plate("data", N, subsample_size=B)` Pyro draws B row indices and multiplies the
# log-probability of every site in the plate by N / B. So a minibatch ELBO is an unbiased
# estimate of the full-data ELBO, whatever B; B only sets its variance, which falls like 1/B
# (its spread like 1/√B). We check it on 100 000 points from a three-component mixture, at
# EM's optimum, with z summed out (`TraceEnum_ELBO`): there the full-data ELBO is log p(x)
# exactly and all the noise comes from choosing rows.

# %%
three = gmm.GMMConfig(dim=2, components=3)
x, _, _ = gmm.synthetic(100_000, torch.Generator().manual_seed(1))
em = GaussianMixture(3, tol=1e-6, random_state=0).fit(x.numpy())  # the zoo's EM (tutorial 1)
theta = {name: value.to(x.dtype) for name, value in em.params_.items()}  # scikit-learn: float64
full = float(gmm.log_marginal(three, theta, x).mean())
repeats = 200
batch_sizes = (100, 1000, 10_000)
estimates = {}
pyro.set_rng_seed(0)
# The estimate itself is Pyro's loss on the fitted model, so this cell uses the zoo's internals:
# `fitted` builds the model at EM's parameters, `build_guide` its guide for enumeration.
with fitted(spec, three, theta, x, guide="enumerate") as (model, _):
    # the guide is told that the ELBO enumerates, as SVI tells it: it leaves z to the model
    guide = build_guide(spec, "enumerate", model, three, x, elbo="TraceEnum_ELBO")
    enumerated = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    for b in batch_sizes:
        estimates[b] = np.array([-enumerated.loss(model, guide, x, subsample_size=b) / x.shape[0]
                                 for _ in range(repeats)])
numbers["subsampling"] = {"full": full, "batch_sizes": list(batch_sizes),
                          "mean": [float(estimates[b].mean()) for b in batch_sizes],
                          "std": [float(estimates[b].std()) for b in batch_sizes]}
for b in batch_sizes:
    error = (estimates[b].mean() - full) / (estimates[b].std() / math.sqrt(repeats))
    print(f"B = {b:>6}: mean of {repeats} estimates {estimates[b].mean():.5f} (full data "
          f"{full:.5f}; {error:+.1f} standard errors), spread {estimates[b].std():.4f}")

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.8))
ax.boxplot([estimates[b] for b in batch_sizes], showfliers=False)
ax.set_xticks(range(1, len(batch_sizes) + 1), [f"B = {b}" for b in batch_sizes])
ax.axhline(full, color="C3", ls="--", label="full-data ELBO = log p(x)")
ax.set(ylabel="minibatch ELBO estimate, nats per point",
       title=f"{repeats} minibatch estimates each: unbiased, spread ∝ 1/√B")
ax.legend(fontsize=8)
show(fig, "subsampling")

# %% [markdown]
# ## 3. Minibatch SVI
#
# The unbiased estimate gives unbiased gradients, so SVI can take many cheap steps instead of
# few expensive ones. `batch_size` in `inference.svi.fit_svi` and `inference.strategies.fit`
# (`--batch-size` on the command line) is all it takes. Same data, the exact guide, Adam with
# lr = 0.05, and the same poor start for both (all three means near the centre of the data, as
# in tutorial 1), so that there is a way to go:

# %%
full_steps = 20 if SMOKE else 200
minibatch_steps = 300 if SMOKE else 1000
start = {"weights": torch.full((3,), 1 / 3), "means": x.mean(0) + torch.tensor(
    [[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), "scale_tril": torch.eye(2).expand(3, 2, 2).clone()}


def svi_from_start(steps, batch_size):
    model = spec.make_model(three, start)
    return fit_svi(model, spec.guides["exact"](model, three), x, steps=steps, lr=0.05,
                   batch_size=batch_size, seed=0)


full_batch = svi_from_start(full_steps, None)
minibatch = svi_from_start(minibatch_steps, 1000)
svi = {}
for name, fit in (("full data", full_batch), ("B = 1000", minibatch)):
    svi[name] = {"seconds_per_step": fit.seconds / fit.steps, "steps": fit.steps,
                 "log_likelihood": float(gmm.log_marginal(three, fit.params, x).mean())}
    print(f"{name:<10} {1000 * svi[name]['seconds_per_step']:7.1f} ms per step, {fit.steps} "
          f"steps: log p(x) = {svi[name]['log_likelihood']:.4f} (EM: {full:.4f})")
numbers["svi"] = svi
numbers["em_log_likelihood"] = full
speed_up = svi["full data"]["seconds_per_step"] / svi["B = 1000"]["seconds_per_step"]
print(f"a minibatch step is {speed_up:.0f}× cheaper")

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for name, fit in (("full data", full_batch), ("B = 1000", minibatch)):
    wall = np.arange(1, fit.steps + 1) * fit.seconds / fit.steps
    ax.plot(wall, fit.history["elbo"], label=f"SVI, {name}", lw=1)
ax.axhline(full, color="k", ls="--", lw=1, label="EM optimum")
ax.set(xscale="log", xlabel="seconds (steps × mean seconds per step)",
       ylabel="ELBO estimate, nats per point", ylim=(full - 2.0, full + 0.3),
       title="100 000 points: minibatches reach the optimum sooner")
ax.legend(fontsize=8)
show(fig, "minibatch_svi")

# %% [markdown]
# ## 4. What the benchmarks say
#
# `benchmarks/` holds the scripts that measure speed and quality, and `benchmarks/RESULTS.md`
# what they measured, how, and on which machine (a shared CPU unless it says GPU): EM against
# scikit-learn, PPCA's closed form, one Pyro SVI step against a hand-written PyTorch step, and
# the VAE's held-out likelihood against published numbers. Here are its tables; read the
# file for the commands and the caveats.

# %%
results = HERE.parent / "benchmarks" / "RESULTS.md"
tables = []
if results.exists():
    heading = ""
    current: list[str] = []
    for line in results.read_text().splitlines() + [""]:
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append((heading, current))
            current = []
    for heading, lines in tables:
        print(f"\n== {heading}")
        for line in lines:
            print(re.sub(r"\*\*", "", line))
else:
    print(f"{results} is not here (install from a checkout to read it)")
numbers["benchmark_tables"] = len(tables)

# %% [markdown]
# ## What we saw
#
# - One code path for every device: move the data, and the fit follows it.
# - EM's cost is linear in N; a GPU divides the constant.
# - Plates make minibatch ELBOs unbiased, with a spread ∝ 1/√B; minibatch SVI reaches the
#   optimum in a fraction of the time of full-data steps.
#
# That is the end of the road from mixtures to VAEs. `lvm-zoo list` shows everything the zoo
# holds; `lvm-zoo compare MODEL` puts every strategy side by side on your data.

# %%
numbers["seconds"] = time.perf_counter() - STARTED
(OUT / "numbers.json").write_text(json.dumps(numbers, indent=2))
print(f"numbers: {OUT / 'numbers.json'}; {numbers['seconds']:.1f} s")
