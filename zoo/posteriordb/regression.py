"""Normal linear regressions from posteriordb (Gelman & Hill's kidiq, earnings, mesquite and
National Election Study models; the Kilpisjarvi summer temperatures; simulated regressions).

    beta ~ N(m, s) (per coefficient),  sigma ~ half-Cauchy or half-normal,
    y_n ~ N(beta_1 + sum_j beta_{j+1} x_nj, sigma)      (no beta_1 where there is no intercept)

The rows are (y, x_1, ..., x_P): the response and the predictors after the Stan program's
``transformed data`` block (logs, centring, standardizing, indicators, interactions), computed
here from posteriordb's data with the same formulas. Most of these Stan programs leave beta
(and often sigma) without a prior statement, an improper flat prior; here each such prior is
a stated wide normal (half-normal for sigma), at least ten times the reference posterior's
extent |mean| + sd (``extra["wide_priors"]``, checked by a test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist

from zoo.errors import InputError
from zoo.posteriordb.base import (
    SuiteConfig,
    config_class,
    gather,
    load_data,
    named,
    need_rows,
    posterior,
    scalar,
    vector,
)
from zoo.registry import DATA_PLATE

DENSE_CORRELATION = 0.95  # reference correlations above it: extra["dense_mass"] = True
SIGMA_PRIORS = {"half-cauchy": dist.HalfCauchy, "half-normal": dist.HalfNormal}


@dataclass(frozen=True)
class RegressionConfig(SuiteConfig):
    """Priors of a linear regression; each posterior's subclass sets its own defaults."""

    coef_loc: tuple = ()  # prior means of beta (intercept first where there is one)
    coef_scale: tuple = ()  # prior sds of beta
    sigma_prior: str = "half-normal"  # "half-cauchy" or "half-normal"
    sigma_scale: float = 1.0
    intercept: bool = True
    columns: tuple = ()  # the rows' column names, response first

    def validate(self, num_data: int) -> None:
        super().validate(num_data)
        width = self.dim - 1 + int(self.intercept)
        if len(self.coef_loc) != width or len(self.coef_scale) != width:
            raise InputError(f"coef_loc and coef_scale need {width} entries (one per "
                             f"coefficient), not {len(self.coef_loc)} and {len(self.coef_scale)}")
        if self.sigma_prior not in SIGMA_PRIORS:
            raise InputError(f"sigma_prior={self.sigma_prior!r}; use one of "
                             f"{', '.join(SIGMA_PRIORS)}")


def regression_model(x=None, *, num_data=None, subsample_size=None, config):
    """``x : (N, 1 + P)``, the response then the predictors; beta and sigma global."""
    x = need_rows(x, type(config).__name__, config.columns)
    beta = pyro.sample("beta", dist.Normal(x.new_tensor(config.coef_loc),
                                           x.new_tensor(config.coef_scale)).to_event(1))
    sigma = pyro.sample("sigma", SIGMA_PRIORS[config.sigma_prior](
        x.new_tensor(config.sigma_scale)))
    slopes = beta[..., 1:] if config.intercept else beta
    with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                    device=x.device) as idx:
        rows = x[idx]
        # beta's batch (if any) ends in the plate's place: (..., 1, P) * (n, P) -> (..., n)
        loc = (slopes * rows[:, 1:]).sum(-1)
        if config.intercept:
            loc = loc + beta[..., 0]
        pyro.sample("y", dist.Normal(loc, sigma), obs=rows[:, 0])


def regression(name: str, columns: dict[str, np.ndarray], *, coef_scale: float | tuple,
               coef_loc: float | tuple = 0.0, sigma_prior: str = "half-normal",
               sigma_scale: float, intercept: bool = True, coef_names: tuple | None = None,
               wide: dict[str, float], notes: str, **extra):
    """One regression posterior from its response-first named columns."""
    width = len(columns) - 1 + int(intercept)

    def expand(value):
        return (tuple(float(e) for e in value) if isinstance(value, tuple)
                else (float(value),) * width)

    config = config_class(name.replace("-", "_"), RegressionConfig, coef_loc=expand(coef_loc),
                          coef_scale=expand(coef_scale), sigma_prior=sigma_prior,
                          sigma_scale=float(sigma_scale), intercept=intercept,
                          columns=tuple(columns))

    def reported(sites):
        beta = sites["beta"].reshape(sites["beta"].shape[0], -1)
        coefficients = (named("beta", beta) if coef_names is None
                        else {n: beta[:, k] for k, n in enumerate(coef_names)})
        return {**coefficients, "sigma": scalar(sites["sigma"])}

    def latent_values(reported_columns):
        coefficients = (vector(reported_columns, "beta") if coef_names is None
                        else gather(reported_columns, *coef_names))
        return {"beta": coefficients, "sigma": reported_columns["sigma"]}

    built = posterior(name, model=regression_model, config=config, data=columns,
                      reported=reported, latent_values=latent_values, notes=notes,
                      wide_priors=dict(wide), **extra)
    # uncentred predictors: coefficients correlated beyond 0.95 need long NUTS trajectories
    # under a diagonal mass matrix, a few steps under a dense one
    correlation = np.corrcoef(built.reference.draws, rowvar=False)
    np.fill_diagonal(correlation, 0.0)
    built.extra.setdefault("dense_mass", bool(np.abs(correlation).max() > DENSE_CORRELATION))
    return built


FLAT_BOTH = ("Stan's flat priors on beta and sigma made proper: beta ~ N(0, {0:g}), "
             "sigma ~ half-N(0, {0:g}).")
FLAT_BETA = "Stan's flat prior on beta made proper: beta ~ N(0, {0:g}); sigma as in Stan."


def _std(v: np.ndarray) -> np.ndarray:
    return np.std(v, ddof=1)  # Stan's sd(): the n - 1 divisor


# --- kidiq (Gelman & Hill ch. 3): child's test score on the mother's high school and IQ ---

def _kidiq(name, **predictors):
    wide = 1000.0
    data = load_data("kidiq")
    return regression(
        name, {"kid_score": data["kid_score"], **predictors}, coef_scale=wide,
        sigma_prior="half-cauchy", sigma_scale=2.5, wide={"beta": wide},
        notes=FLAT_BETA.format(wide))


def kidscore_momhs():
    return _kidiq("kidiq-kidscore_momhs", mom_hs=load_data("kidiq")["mom_hs"])


def kidscore_momiq():
    return _kidiq("kidiq-kidscore_momiq", mom_iq=load_data("kidiq")["mom_iq"])


def kidscore_interaction():
    data = load_data("kidiq")
    return _kidiq("kidiq-kidscore_interaction", mom_hs=data["mom_hs"], mom_iq=data["mom_iq"],
                  inter=data["mom_hs"] * data["mom_iq"])


def kidscore_mom_work():
    data = load_data("kidiq_with_mom_work")
    wide = 1000.0
    work = data["mom_work"]
    return regression(
        "kidiq_with_mom_work-kidscore_mom_work",
        {"kid_score": data["kid_score"], "work2": (work == 2) * 1.0, "work3": (work == 3) * 1.0,
         "work4": (work == 4) * 1.0},
        coef_scale=wide, sigma_scale=wide, wide={"beta": wide, "sigma": wide},
        notes=FLAT_BOTH.format(wide))


def kidscore_interaction_z():
    data = load_data("kidiq_with_mom_work")
    wide = 1000.0
    z_hs = (data["mom_hs"] - data["mom_hs"].mean()) / (2 * _std(data["mom_hs"]))
    z_iq = (data["mom_iq"] - data["mom_iq"].mean()) / (2 * _std(data["mom_iq"]))
    return regression(
        "kidiq_with_mom_work-kidscore_interaction_z",
        {"kid_score": data["kid_score"], "z_mom_hs": z_hs, "z_mom_iq": z_iq,
         "inter": z_hs * z_iq},
        coef_scale=wide, sigma_scale=wide, wide={"beta": wide, "sigma": wide},
        notes=FLAT_BOTH.format(wide))


# --- earnings (Gelman & Hill ch. 4): yearly earnings on height and sex ---

def earn_height():
    data = load_data("earnings")
    wide = 1e6  # dollars: the intercept is about -61000
    return regression(
        "earnings-earn_height", {"earn": data["earn"], "height": data["height"]},
        coef_scale=wide, sigma_scale=wide, wide={"beta": wide, "sigma": wide},
        notes=FLAT_BOTH.format(wide))


def _logearn(name, **predictors):
    wide = 100.0
    return regression(
        name, {"log_earn": np.log(load_data("earnings")["earn"]), **predictors},
        coef_scale=wide, sigma_scale=wide, wide={"beta": wide, "sigma": wide},
        notes=FLAT_BOTH.format(wide))


def logearn_height_male():
    data = load_data("earnings")
    return _logearn("earnings-logearn_height_male", height=data["height"], male=data["male"])


def logearn_interaction_z():
    data = load_data("earnings")
    z_height = (data["height"] - data["height"].mean()) / _std(data["height"])
    return _logearn("earnings-logearn_interaction_z", z_height=z_height, male=data["male"],
                    inter=z_height * data["male"])


def logearn_logheight_male():
    data = load_data("earnings")
    return _logearn("earnings-logearn_logheight_male", log_height=np.log(data["height"]),
                    male=data["male"])


# --- mesquite (Gelman & Hill ch. 4): bush weight on its dimensions ---

def mesquite():
    data = load_data("mesquite")
    wide = 1e4  # grams: the intercept is about -730
    names = ("diam1", "diam2", "canopy_height", "total_height", "density", "group")
    return regression(
        "mesquite-mesquite", {"weight": data["weight"], **{n: data[n] for n in names}},
        coef_scale=wide, sigma_scale=wide, wide={"beta": wide, "sigma": wide},
        notes=FLAT_BOTH.format(wide) + " NUTS uses a dense mass matrix: the coefficients' "
        "posterior sds span two orders of magnitude and correlate up to 0.77, and the "
        "diagonal one adapted to a step with acceptance 0.999 that left beta[2] 3.8 Monte "
        "Carlo errors off at 2 x 500 draws.", dense_mass=True)


def logmesquite():
    data = load_data("mesquite")
    wide = 100.0
    logs = ("diam1", "diam2", "canopy_height", "total_height", "density")
    return regression(
        "mesquite-logmesquite",
        {"log_weight": np.log(data["weight"]), **{f"log_{n}": np.log(data[n]) for n in logs},
         "group": data["group"]},
        coef_scale=wide, sigma_scale=wide, wide={"beta": wide, "sigma": wide},
        notes=FLAT_BOTH.format(wide))


def logmesquite_logvas():
    data = load_data("mesquite")
    wide = 100.0
    d1, d2 = data["diam1"], data["diam2"]
    return regression(
        "mesquite-logmesquite_logvas",
        {"log_weight": np.log(data["weight"]),
         "log_canopy_volume": np.log(d1 * d2 * data["canopy_height"]),
         "log_canopy_area": np.log(d1 * d2), "log_canopy_shape": np.log(d1 / d2),
         "log_total_height": np.log(data["total_height"]),
         "log_density": np.log(data["density"]), "group": data["group"]},
        coef_scale=wide, sigma_scale=wide, wide={"beta": wide, "sigma": wide},
        notes=FLAT_BOTH.format(wide))


# --- National Election Study 1972 (Gelman & Hill ch. 4): party identification ---

def nes1972():
    data = load_data("nes1972")
    wide = 100.0
    age = data["age_discrete"]
    return regression(
        "nes1972-nes",
        {"partyid7": data["partyid7"], "real_ideo": data["real_ideo"],
         "race_adj": data["race_adj"], "age30_44": (age == 2) * 1.0,
         "age45_64": (age == 3) * 1.0, "age65up": (age == 4) * 1.0, "educ1": data["educ1"],
         "gender": data["gender"], "income": data["income"]},
        coef_scale=wide, sigma_scale=wide, wide={"beta": wide, "sigma": wide},
        notes=FLAT_BOTH.format(wide))


# --- Kilpisjarvi summer temperatures (BDA course): a trend with an informative prior ---

def kilpisjarvi():
    data = load_data("kilpisjarvi_mod")
    wide = 100.0
    return regression(
        "kilpisjarvi_mod-kilpisjarvi", {"y": data["y"], "x": data["x"]},
        coef_loc=(float(data["pmualpha"]), float(data["pmubeta"])),
        coef_scale=(float(data["psalpha"]), float(data["psbeta"])), sigma_scale=wide,
        coef_names=("alpha", "beta"), wide={"sigma": wide},
        nuts={"centred": {"beta": (0.0, float(data["x"].mean()))}},
        notes=f"Priors on alpha and beta from the data file, as in Stan; Stan's flat prior on "
              f"sigma made proper: sigma ~ half-N(0, {wide:g}). The years are not centred, so "
              f"alpha and beta correlate at about -0.9999; NUTS with a dense mass matrix did "
              f"not finish 400 + 600 iterations in 15 minutes (about 500 gradients an "
              f"iteration through warm-up: the mass matrix's regularization, 1e-3 on the "
              f"diagonal, exceeds beta's posterior variance, 5e-5), so NUTS samples the "
              f"intercept at the mean year (extra['nuts'], CentredIntercept): the same "
              f"posterior in coordinates where alpha and beta are uncorrelated.")


# --- simulated Bayesian linear regressions, five predictors, no intercept ---

def _blr(name):
    data = load_data(name.split("-")[0])
    columns = {"y": data["y"], **{f"X{j + 1}": data["X"][:, j] for j in range(5)}}
    return regression(name, columns, coef_scale=10.0, sigma_scale=10.0, intercept=False,
                      wide={}, notes="As the Stan program: beta ~ N(0, 10), "
                      "sigma ~ half-N(0, 10), no intercept.")


def sblrc():
    return _blr("sblrc-blr")


def sblri():
    return _blr("sblri-blr")


POSTERIORS = {
    "kidiq-kidscore_momhs": kidscore_momhs,
    "kidiq-kidscore_momiq": kidscore_momiq,
    "kidiq-kidscore_interaction": kidscore_interaction,
    "kidiq_with_mom_work-kidscore_mom_work": kidscore_mom_work,
    "kidiq_with_mom_work-kidscore_interaction_z": kidscore_interaction_z,
    "earnings-earn_height": earn_height,
    "earnings-logearn_height_male": logearn_height_male,
    "earnings-logearn_interaction_z": logearn_interaction_z,
    "earnings-logearn_logheight_male": logearn_logheight_male,
    "mesquite-mesquite": mesquite,
    "mesquite-logmesquite": logmesquite,
    "mesquite-logmesquite_logvas": logmesquite_logvas,
    "nes1972-nes": nes1972,
    "kilpisjarvi_mod-kilpisjarvi": kilpisjarvi,
    "sblrc-blr": sblrc,
    "sblri-blr": sblri,
}
