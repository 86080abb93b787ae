"""The two worked examples declared through zoo.declare: each is fitted and shows the property
it exists for, against an independent reference (scikit-learn, scipy)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_t
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from guides.generic import generic_guides
from inference import strategies
from inference.catalog import get_model
from inference.em import fit_em
from zoo.datasets import load_dataset
from zoo.registry import (
    CLOSED_FORM,
    COMBINABLE_STATISTICS,
    EM_STEPS,
    EXACT_MARGINAL,
    GLOBAL_LATENTS,
    GUIDES,
    LOCAL_LATENTS,
)

# --- mixture of PPCAs ---------------------------------------------------------------------------


def _principal_angle(basis: torch.Tensor, other: torch.Tensor) -> float:
    """The largest principal angle (radians) between the column spaces of two (D, q) bases."""
    first, _ = torch.linalg.qr(basis.double())
    second, _ = torch.linalg.qr(other.double())
    cosines = torch.linalg.svdvals(first.T @ second).clamp(max=1.0)
    return float(torch.arccos(cosines.min()))


def test_mppca_beats_one_ppca_with_as_many_latent_dimensions_and_finds_the_subspaces():
    """Rows near three 2-D subspaces of R^8: three PPCAs with q = 2 describe held-out rows far
    better than one PPCA with q = 6, and each component's W spans one true subspace."""
    spec = get_model("mppca")
    data = load_dataset("synthetic-mppca", seed=0)
    truth = data.true_params
    mixture = spec.make_config(data.dim, components=3, latent_dim=2)
    fit = fit_em(spec, mixture, data.train, n_init=3, seed=0)
    history = fit.history["log_likelihood"]
    assert all(b >= a - 1e-4 for a, b in zip(history, history[1:], strict=False))  # EM ascends
    single = spec.make_config(data.dim, components=1, latent_dim=6)
    one_ppca = fit_em(spec, single, data.train, seed=0)
    # one component is PPCA, whose maximum likelihood scikit-learn's PCA knows in closed form
    reference = PCA(n_components=6).fit(data.train.numpy()).score(data.train.numpy())
    assert math.isclose(one_ppca.history["log_likelihood"][-1], reference, abs_tol=1e-3)
    test_mixture = float(spec.log_marginal(mixture, fit.params, data.test).mean())
    test_single = float(spec.log_marginal(single, one_ppca.params, data.test).mean())
    assert test_mixture > test_single + 3.0, (test_mixture, test_single)
    for k in range(3):  # every true subspace is some component's, within 0.15 rad
        angles = [_principal_angle(truth["factors"][k], fit.params["factors"][j])
                  for j in range(3)]
        assert min(angles) < 0.15, (k, angles)
        nearest = int(np.argmin(angles))
        assert torch.allclose(fit.params["locs"][nearest], truth["locs"][k], atol=0.3)


def test_mppca_log_marginal_matches_the_dense_mixture_density():
    spec = get_model("mppca")
    generator = torch.Generator().manual_seed(3)
    x, _, params = spec.synthetic(50, generator, torch.float64)
    config = spec.make_config(8, components=3, latent_dim=2)
    dense = torch.stack([
        torch.distributions.MultivariateNormal(
            params["locs"][k], params["factors"][k] @ params["factors"][k].T
            + params["noise"][k] * torch.eye(8, dtype=torch.float64)).log_prob(x)
        + params["weights"][k].log() for k in range(3)]).logsumexp(0)
    assert torch.allclose(spec.log_marginal(config, params, x), dense, atol=1e-9)


# --- Student-t mixture --------------------------------------------------------------------------

CLUSTER_MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])


def _contaminated(seed: int = 0) -> torch.Tensor:
    """Two unit Gaussian clusters of 300 rows, and 60 outliers spread over a 50 x 50 square."""
    generator = torch.Generator().manual_seed(seed)
    clusters = [torch.randn(300, 2, generator=generator) + mean for mean in CLUSTER_MEANS]
    outliers = (torch.rand(60, 2, generator=generator) - 0.5) * 50
    return torch.cat([*clusters, outliers])


def _mean_errors(means: torch.Tensor) -> torch.Tensor:
    ordered = means[means[:, 0].argsort()]
    return (ordered - CLUSTER_MEANS).norm(dim=-1)


def test_student_t_mixture_keeps_its_means_where_the_gaussian_mixture_is_dragged():
    spec = get_model("student-t-mixture")
    x = _contaminated()
    robust = fit_em(spec, spec.make_config(2, components=2, df=4.0), x, n_init=2, seed=0)
    assert _mean_errors(robust.params["locs"]).max() < 0.3
    # the same model with nu -> infinity is the Gaussian mixture; scikit-learn's is the reference
    gaussian = fit_em(spec, spec.make_config(2, components=2, df=1e6), x, n_init=2, seed=0)
    reference = GaussianMixture(2, n_init=2, random_state=0).fit(x.numpy())
    for means in (gaussian.params["locs"], torch.as_tensor(reference.means_).float()):
        assert _mean_errors(means).max() > 1.0, means


def test_student_t_log_marginal_matches_scipy():
    spec = get_model("student-t-mixture")
    config = spec.make_config(2, components=2, df=3.0)
    generator = torch.Generator().manual_seed(5)
    x, _, params = spec.synthetic(40, generator, torch.float64)
    ours = spec.log_marginal(config, params, x).numpy()
    densities = sum(
        float(params["weights"][k]) * multivariate_t(
            params["locs"][k].numpy(),
            (params["scale_trils"][k] @ params["scale_trils"][k].T).numpy(), df=3.0).pdf(
            x.numpy()) for k in range(2))
    np.testing.assert_allclose(ours, np.log(densities), atol=1e-9)


@pytest.mark.parametrize("name", ["mppca", "student-t-mixture"])
def test_examples_are_declared_with_the_generic_guides_and_their_closed_forms(name):
    """Declared the way a user declares a model: the generic guides for its latent sites, and
    the capabilities its closed forms give (exact log p(x), EM steps that combine, so EM and
    online EM apply beside SVI; no closed-form maximum likelihood)."""
    spec = get_model(name)
    assert list(spec.guides) == list(generic_guides(spec.declared_sites)[0])
    for capability in (EXACT_MARGINAL, EM_STEPS, COMBINABLE_STATISTICS, GUIDES, LOCAL_LATENTS):
        assert spec.has(capability), capability
    assert not spec.has(CLOSED_FORM) and not spec.has(GLOBAL_LATENTS)
    assert strategies.get(None, spec).requires == (EM_STEPS,)  # EM is the default fit
    assert spec.local_sites[0] == "component"
    assert spec.__class__.__name__ == "ModelSpec" and spec.summary
