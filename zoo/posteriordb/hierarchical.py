"""Eight schools (Rubin 1981; Gelman et al., BDA3 5.5): a normal hierarchical model.

    mu ~ N(0, 5),  tau ~ half-Cauchy(0, 5),  theta_j ~ N(mu, tau),  y_j ~ N(theta_j, sigma_j)

for J = 8 schools, y_j the estimated effect and sigma_j its known standard error. The rows are
the schools, so theta (or theta_trans) is a local latent inside ``pyro.plate("data")``.
The non-centred program draws theta_trans ~ N(0, 1) and sets theta = mu + tau theta_trans: the
same posterior over (mu, tau, theta) without the funnel that makes the centred one hard for
NUTS. posteriordb gives both programs the non-centred program's reference draws.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist

from zoo.posteriordb.base import (
    SuiteConfig,
    load_data,
    named,
    need_rows,
    posterior,
    scalar,
    vector,
)
from zoo.registry import DATA_PLATE

COLUMNS = ("y", "sigma")
REFERENCE = "eight_schools-eight_schools_noncentered"


def _hyperpriors(x):
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(x.new_tensor(5.0)))
    return mu, tau


def centered_model(x=None, *, num_data=None, subsample_size=None, config):
    """theta_j ~ N(mu, tau) drawn directly; ``x : (J, 2)`` columns (y, sigma)."""
    x = need_rows(x, "eight_schools-eight_schools_centered", COLUMNS)
    mu, tau = _hyperpriors(x)
    with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                    device=x.device) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, x[idx, 1]), obs=x[idx, 0])


def noncentered_model(x=None, *, num_data=None, subsample_size=None, config):
    """theta_j = mu + tau theta_trans_j, theta_trans_j ~ N(0, 1); ``x : (J, 2)``."""
    x = need_rows(x, "eight_schools-eight_schools_noncentered", COLUMNS)
    mu, tau = _hyperpriors(x)
    with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                    device=x.device) as idx:
        theta_trans = pyro.sample("theta_trans", dist.Normal(x.new_tensor(0.0), 1.0))
        pyro.sample("y", dist.Normal(mu + tau * theta_trans, x[idx, 1]), obs=x[idx, 0])


def _centered_reported(sites):
    return {**named("theta", sites["theta"]), "mu": scalar(sites["mu"]),
            "tau": scalar(sites["tau"])}


def _noncentered_reported(sites):
    mu, tau = scalar(sites["mu"]), scalar(sites["tau"])
    theta = mu[:, None] + tau[:, None] * sites["theta_trans"].reshape(mu.shape[0], -1)
    return {**named("theta", theta), "mu": mu, "tau": tau}


def _centered_latent(columns):
    return {"mu": columns["mu"], "tau": columns["tau"], "theta": vector(columns, "theta")}


def _noncentered_latent(columns):
    mu, tau = columns["mu"], columns["tau"]
    return {"mu": mu, "tau": tau,
            "theta_trans": (vector(columns, "theta") - mu[:, None]) / tau[:, None]}


def _data():
    data = load_data("eight_schools")
    return {"y": data["y"], "sigma": data["sigma"]}


def centered():
    return posterior(
        "eight_schools-eight_schools_centered", model=centered_model, config=SuiteConfig,
        data=_data(), reported=_centered_reported, latent_values=_centered_latent,
        local_sites=("theta",), reference=REFERENCE,
        notes="As the Stan program. The reference is the non-centred program's (posteriordb "
              "shares it: the same posterior over mu, tau, theta). The funnel between tau and "
              "theta keeps NUTS in these coordinates away from small tau (tau's mean 0.25-0.32 "
              "reference sds high with 400 + 600 or 1000 + 1000 iterations at target "
              "acceptance 0.8 or 0.95): NUTS samples theta non-centred (extra['nuts']), the "
              "same posterior and the same model, in coordinates without the funnel.",
        nuts={"noncentered": ("theta",)})


def noncentered():
    return posterior(
        "eight_schools-eight_schools_noncentered", model=noncentered_model, config=SuiteConfig,
        data=_data(), reported=_noncentered_reported,
        latent_values=_noncentered_latent, local_sites=("theta_trans",),
        notes="As the Stan program; theta = mu + tau theta_trans is reported, as in the "
              "reference.")


POSTERIORS = {
    "eight_schools-eight_schools_noncentered": noncentered,
    "eight_schools-eight_schools_centered": centered,
}
