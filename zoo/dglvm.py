"""The deep Gaussian latent-variable model: the generative half of the VAE.

    z_n ~ N(0, I_Q)
    x_n | z_n ~ N(μ_θ(z_n), diag σ²_θ(z_n))        likelihood="gaussian"
    x_n | z_n ~ Bernoulli(sigmoid(f_θ(z_n)))       likelihood="bernoulli"

μ_θ, σ_θ and f_θ are one MLP decoder (``hidden`` widths, ReLU). The Gaussian variance is
learned per pixel as a function of z (``variance="learned"``: the lecture's Σ(z)), one learned
σ² for every pixel (``"isotropic"``: PPCA's noise model, so a linear decoder *is* PPCA), or fixed
(``"fixed"``: log p(x | z) = −‖x − μ(z)‖² / 2σ² + const, the notes' squared-error form).
``prior="vamp"`` replaces N(0, I) by the VampPrior (Tomczak & Welling, 2018), the mixture of
the encoder's posteriors at K learned pseudo-inputs u_k, p(z) = (1/K) Σ_k q_φ(z | u_k). The
model then owns the encoder (``pyro.module("encoder", ...)``, the same Pyro name as the amortized
guide's, so the two share one set of weights) and the parameter ``pseudo_inputs`` (K, D),
started at K rows of the data drawn with the fit's seed.
``beta`` weights the KL term through ``poutine.scale`` on the z site (β-VAE; β → 0 approaches
the plain autoencoder; Pyro's scale must be positive); the guides scale their z site by the same
β, so the ELBO estimators see E[log p(x | z)] − β KL(q ‖ p) and nothing is hand-written.

No exact posterior or log p(x) exists: log p(x) is estimated by importance sampling with the
encoder as proposal (IWAE-K, :mod:`inference.evaluate`).

Density convention. A Gaussian decoder is a density of x *in the units the data come in*
(digits: counts 0..16; MNIST, Fashion-MNIST, Frey Face: [0, 1]), in nats per datapoint, the same
convention PPCA uses, so the two compare like for like. On quantized pixels such a density is
unbounded (σ can shrink onto a pixel that never changes); ``min_scale`` bounds it. The
scale-free figure is bits per dimension on dequantized data: :func:`dequantize` adds uniform
noise over one quantization bin, :func:`bits_per_dim` converts log p of those values into
−log₂ P(bin) / D. The Bernoulli likelihood on grayscale values in [0, 1] is the cross-entropy
objective of Pyro's VAE example; it is a normalized likelihood only for binary x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from zoo.errors import InputError
from zoo.registry import DATA_PLATE, ModelSpec, Params, register
from zoo.resources import check_fits
from zoo.seeding import own_random_stream

LIKELIHOODS = ("gaussian", "bernoulli")
VARIANCES = ("learned", "isotropic", "fixed")
PRIORS = ("standard", "vamp")


def parse_widths(text: str | int | tuple | list | None) -> tuple[int, ...]:
    """Hidden widths from ``"400"``, ``"200,200"``, ``400``, ``(200, 200)``; ``""`` or
    ``"linear"`` for none (a linear decoder)."""
    if text is None:
        return ()
    if isinstance(text, int):
        return (text,)
    if isinstance(text, str):
        stripped = text.strip().lower()
        if stripped in ("", "linear", "none"):
            return ()
        try:
            return tuple(int(part) for part in stripped.split(","))
        except ValueError:
            raise InputError(f"--hidden '{text}' is not a comma-separated list of layer widths; "
                             "write e.g. 400 or 200,200 (or 'linear' for none)") from None
    return tuple(int(width) for width in text)


@dataclass(frozen=True)
class DGLVMConfig:
    """Sizes and likelihood of the deep Gaussian latent-variable model."""

    # D, the observation dimension; filled in from the data
    dim: int = field(default=64, metadata={"cli": False})
    # Q, the dimension of z (2 for the latent-manifold figure)
    latent_dim: int = field(default=10, metadata={"help": "Q, the dimension of z"})
    # decoder widths from z to x; the encoder uses them in reverse; () is a linear decoder
    hidden: tuple[int, ...] = field(default=(400,), metadata={
        "type": parse_widths, "help": "hidden layer widths of the decoder, e.g. 400 or 200,200 "
        "(the encoder mirrors them; 'linear' for none)"})
    # observation model: Gaussian on real values, Bernoulli on (binarized) images in [0, 1]
    likelihood: str = field(default="gaussian", metadata={
        "choices": LIKELIHOODS, "help": "p(x | z): gaussian, or bernoulli for images in [0, 1]"})
    # Gaussian variance: σ²(z) per pixel from the decoder, one learned σ², or fixed_variance
    variance: str = field(default="learned", metadata={
        "choices": VARIANCES,
        "help": "gaussian variance: learned per pixel as σ²(z), isotropic (one learned σ², as "
                "PPCA), or fixed (fixed_variance: the squared-error form)"})
    # σ² when variance="fixed"; 1.0 gives log p(x | z) = −‖x − μ(z)‖²/2 + const
    fixed_variance: float = field(default=1.0, metadata={
        "help": "σ² of the gaussian likelihood when --variance fixed"})
    # the Gaussian mean through a sigmoid, in (0, 1): Kingma & Welling's Frey Face decoder,
    # whose manifold then stays a face everywhere (an unbounded mean drifts off [0, 1])
    bounded_mean: bool = field(default=False, metadata={
        "help": "gaussian mean sigmoid(·) in (0, 1), as Kingma & Welling for Frey Face; for "
                "data in [0, 1]"})
    # floor on a learned σ, in data units: keeps the density finite on constant pixels
    min_scale: float = field(default=0.01, metadata={
        "help": "smallest learned σ, in data units (densities of quantized pixels are "
                "otherwise unbounded)"})
    # p(z): N(0, I), or the VampPrior, a mixture of the encoder's posteriors at pseudo-inputs
    prior: str = field(default="standard", metadata={
        "choices": PRIORS, "help": "p(z): standard N(0, I), or vamp (the VampPrior: the "
                                   "encoder's posteriors at --pseudo-inputs learned inputs)"})
    # K, the VampPrior's pseudo-inputs (Tomczak & Welling use 500 on MNIST)
    pseudo_inputs: int = field(default=500, metadata={
        "help": "K, the number of the VampPrior's learned pseudo-inputs (--prior vamp)"})
    # weight of KL(q ‖ p) in the ELBO (β-VAE); β → 0 approaches the plain autoencoder
    beta: float = field(default=1.0, metadata={
        "help": "weight of the KL term (β-VAE), > 0; β → 0 approaches the plain autoencoder"})
    # guide draws z without reparameterization: Trace_ELBO then uses the log-trick gradient
    score_function: bool = field(default=False, metadata={
        "help": "score-function (log-trick) gradients instead of reparameterized ones"})
    # passes over the training data; steps = epochs × ceil(N / batch_size), see steps_for
    epochs: int = field(default=200, metadata={
        "help": "passes over the training data (SVI steps = epochs x ceil(N / batch size))"})

    def __post_init__(self):
        object.__setattr__(self, "hidden", parse_widths(self.hidden))

    def validate(self, num_data: int) -> None:
        """Raise :class:`InputError` naming the bad field and the fix."""
        if num_data < 1:
            raise InputError(f"the data have {num_data} rows; give at least one")
        if self.dim < 1:
            raise InputError(f"dim={self.dim} must be at least 1")
        if self.latent_dim < 1:
            raise InputError(f"--latent-dim {self.latent_dim} must be at least 1")
        if any(width < 1 for width in self.hidden):
            raise InputError(f"--hidden {','.join(map(str, self.hidden))}: every layer width "
                             "must be at least 1")
        if self.likelihood not in LIKELIHOODS:
            raise InputError(f"--likelihood {self.likelihood} is unknown; choose one of: "
                             + ", ".join(LIKELIHOODS))
        if self.variance not in VARIANCES:
            raise InputError(f"--variance {self.variance} is unknown; choose one of: "
                             + ", ".join(VARIANCES))
        if not self.fixed_variance > 0:
            raise InputError(f"--fixed-variance {self.fixed_variance} must be positive")
        if not self.min_scale > 0:
            raise InputError(f"--min-scale {self.min_scale} must be positive")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise InputError(f"--beta {self.beta} must be a finite number > 0 (Pyro's "
                             "poutine.scale is positive); a small β such as 1e-3 approaches "
                             "the plain autoencoder")
        if self.epochs < 1:
            raise InputError(f"--epochs {self.epochs} must be at least 1")
        if self.prior not in PRIORS:
            raise InputError(f"--prior {self.prior} is unknown; choose one of: "
                             + ", ".join(PRIORS))
        if self.pseudo_inputs < 1:
            raise InputError(f"--pseudo-inputs {self.pseudo_inputs} must be at least 1")
        if self.bounded_mean and self.likelihood != "gaussian":
            raise InputError("--bounded-mean bounds the gaussian mean; the bernoulli "
                             "likelihood's mean is a probability already: leave it out")
        # weights, their gradients and Adam's two moments, in float64 at most
        check_fits(f"the networks of --hidden {','.join(map(str, self.hidden))} and "
                   f"--latent-dim {self.latent_dim} ({self.parameter_count():,} weights)",
                   4 * 8 * self.parameter_count(), "give smaller --hidden widths")

    def parameter_count(self) -> int:
        """Weights and biases of the decoder and the encoder (and the pseudo-inputs)."""
        learned = self.likelihood == "gaussian" and self.variance == "learned"
        out = self.dim * (2 if learned else 1)
        decoder = (self.latent_dim, *self.hidden, out)
        encoder = (self.dim, *reversed(self.hidden), 2 * self.latent_dim)
        count = sum((a + 1) * b for layers in (decoder, encoder)
                    for a, b in zip(layers, layers[1:], strict=False))
        return count + (self.pseudo_inputs * self.dim if self.prior == "vamp" else 0)

    def steps_for(self, num_data: int, batch_size: int | None) -> int:
        """SVI steps for ``epochs`` passes over ``num_data`` rows in minibatches of
        ``batch_size`` (all rows when ``None``): epochs × ceil(N / batch_size)."""
        batch = num_data if batch_size is None else min(batch_size, num_data)
        return self.epochs * math.ceil(num_data / batch)


def check_data(config: DGLVMConfig, x: torch.Tensor) -> None:
    """The likelihood's support against the data: Bernoulli needs values in [0, 1]."""
    if x.shape[-1] != config.dim:
        raise InputError(f"the data have {x.shape[-1]} columns but the model was built for "
                         f"dim={config.dim}; build the config from the data")
    if config.likelihood == "bernoulli" and x.numel():
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise InputError(
                f"--likelihood bernoulli needs pixel values in [0, 1], but the data range over "
                f"[{low:g}, {high:g}]; scale them to [0, 1] and --binarize them, or choose "
                "--likelihood gaussian")


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """z : (..., Q) → the parameters of p(x | z), each (..., D).

    Bernoulli: logits. Gaussian: loc, and for ``variance="learned"`` also
    σ = softplus(·) + min_scale from a second half of the output layer.
    """

    def __init__(self, config: DGLVMConfig):
        super().__init__()
        self.learned_scale = config.likelihood == "gaussian" and config.variance == "learned"
        self.bounded = config.likelihood == "gaussian" and config.bounded_mean
        self.min_scale = config.min_scale
        out = config.dim * (2 if self.learned_scale else 1)
        self.net = mlp((config.latent_dim, *config.hidden, out))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.net(z)
        if not self.learned_scale:
            return (torch.sigmoid(out) if self.bounded else out), None
        loc, raw_scale = out.chunk(2, dim=-1)
        if self.bounded:
            loc = torch.sigmoid(loc)
        return loc, nn.functional.softplus(raw_scale) + self.min_scale


class Encoder(nn.Module):
    """x : (..., D) → (loc, scale) of q(z | x), each (..., Q); widths mirror the decoder's.

    The amortized guide's network, defined here because the VampPrior is built from it."""

    def __init__(self, config: DGLVMConfig):
        super().__init__()
        self.net = mlp((config.dim, *reversed(config.hidden), 2 * config.latent_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(x).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-6


class VampPrior(dist.TorchDistribution):
    """p(z) = (1/K) Σ_k N(z; m_k, diag s_k²) for ``locs, scales : (K, Q)``; event shape (Q,).

    ``log_prob`` expands the quadratic form into matrix products, so M draws cost an (M, K)
    matrix, never the (M, K, Q) tensor of ``MixtureSameFamily``; it is done in float64,
    because z²/s² and 2 z m/s² are large and nearly cancel when the posteriors are narrow.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, locs: torch.Tensor, scales: torch.Tensor,
                 batch_shape: tuple = (), validate_args=None):
        self.locs, self.scales = locs, scales
        super().__init__(torch.Size(batch_shape), locs.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return VampPrior(self.locs, self.scales, torch.Size(batch_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # −2 log N(z; m_k, s_k) = [z², z, 1] · [1/s², −2 m/s², Σ m²/s² + 2 Σ log s + Q log 2π]_k:
        # one (M, 2Q + 1) × (2Q + 1, K) product, then a log-mean-exp over k done in place
        latent_dim = self.locs.shape[-1]
        precision = self.scales.double().pow(-2)                               # (K, Q)
        locs = self.locs.double()
        constant = ((locs.square() * precision).sum(-1) + 2 * self.scales.double().log().sum(-1)
                    + latent_dim * math.log(2 * math.pi))                       # (K,)
        weights = torch.cat([precision, -2.0 * locs * precision, constant[:, None]], -1)
        flat = value.double().reshape(-1, latent_dim)                          # (M, Q)
        features = torch.cat([flat.square(), flat, torch.ones_like(flat[:, :1])], -1)
        components = (features @ weights.T).mul_(-0.5)                          # (M, K)
        # log of the mean over k (logsumexp − log K, with K kept inside the graph for the JIT)
        top = components.amax(-1, keepdim=True).detach()
        log_mixture = components.sub_(top).exp_().mean(-1).log() + top.squeeze(-1)
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        return log_mixture.to(value.dtype).reshape(value.shape[:-1]).expand(shape)

    def sample(self, sample_shape: tuple = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            component = torch.randint(self.locs.shape[0], shape, device=self.locs.device)
            noise = torch.randn(shape + self.event_shape, dtype=self.locs.dtype,
                                device=self.locs.device)
            return self.locs[component] + self.scales[component] * noise


def _reset(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()


def load_module(module: nn.Module, prefix: str, params: Params) -> Params:
    """Copy ``prefix$$$name`` entries of ``params`` into ``module``; return the other entries."""
    own = {k.split("$$$", 1)[1]: v for k, v in params.items() if k.startswith(prefix + "$$$")}
    if own:
        first = next(iter(own.values()))
        module.to(device=first.device, dtype=first.dtype)  # keep the given precision
        state = module.state_dict()
        missing = sorted(set(state) - set(own))
        if missing:
            raise InputError(f"the given {prefix} parameters lack {', '.join(missing)}; they do "
                             "not fit this config (check --hidden and --latent-dim)")
        module.load_state_dict({k: v.detach().to(state[k]) for k, v in own.items()})
    return {k: v for k, v in params.items() if not k.startswith(prefix + "$$$")}


class DGLVM(nn.Module):
    """The Pyro model ``model(x=None, *, num_data=None, subsample_size=None)``.

    ``x : (N, D)``. The decoder is registered as ``pyro.module("decoder", ...)``; z lives in
    ``pyro.plate("data", N, subsample_size=...)`` and may carry extra batch dimensions to the
    left (particles at dim −2), which the decoder broadcasts over. Without ``params`` the
    weights are drawn on the first call, so ``pyro.set_rng_seed`` just before fitting fixes
    them; the module then moves to the data's device and dtype.
    """

    def __init__(self, config: DGLVMConfig, params: Params | None = None):
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)
        rest = load_module(self.decoder, "decoder", params or {})
        self.noise_scale_init = rest.get("noise_scale")
        self.encoder = Encoder(config) if config.prior == "vamp" else None
        if self.encoder is not None:
            rest = load_module(self.encoder, "encoder", rest)
        self.pseudo_inputs_init = rest.get("pseudo_inputs")
        self._draw_weights = params is None
        self._checked: torch.Tensor | None = None

    def _prepare(self, x: torch.Tensor | None) -> None:
        if self._draw_weights:
            _reset(self.decoder)
            if self.encoder is not None:
                _reset(self.encoder)
            self._draw_weights = False
        if x is None:
            return
        if x is not self._checked:
            check_data(self.config, x)
            self._checked = x
        weight = self.decoder.net[0].weight
        if weight.device != x.device or weight.dtype != x.dtype:
            self.decoder.to(device=x.device, dtype=x.dtype)
            if self.encoder is not None:
                self.encoder.to(device=x.device, dtype=x.dtype)

    def prior(self, x: torch.Tensor | None, weight: torch.Tensor) -> dist.TorchDistribution:
        """p(z) with event shape (Q,): N(0, I), or the VampPrior of the pseudo-inputs."""
        if self.encoder is None:
            zeros = torch.zeros(self.config.latent_dim, dtype=weight.dtype,
                                device=weight.device)
            return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)
        # one set of weights with the amortized guide's "encoder", whichever registers first
        pyro.module("encoder", self.encoder, update_module_params=True)
        pseudo_inputs = pyro.param("pseudo_inputs", lambda: self._first_pseudo_inputs(x, weight))
        return VampPrior(*self.encoder(pseudo_inputs))

    def _first_pseudo_inputs(self, x: torch.Tensor | None, weight: torch.Tensor):
        count = self.config.pseudo_inputs
        if self.pseudo_inputs_init is not None:
            return self.pseudo_inputs_init.detach().to(weight).clone()
        if x is None:  # no data to start from: small values around the middle of [0, 1]
            return 0.5 + 0.01 * torch.randn(count, self.config.dim, dtype=weight.dtype,
                                            device=weight.device)
        rows = torch.randint(x.shape[0], (count,), device=x.device)
        return x[rows].to(weight).clone()

    def likelihood(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z) for z : (..., Q), with event shape (D,)."""
        config = self.config
        loc, scale = self.decoder(z)
        if config.likelihood == "bernoulli":
            # validate_args=False: grayscale values in [0, 1] give the cross-entropy objective
            return dist.Bernoulli(logits=loc, validate_args=False).to_event(1)
        if config.variance == "isotropic":
            init = self.noise_scale_init
            scale = pyro.param(
                "noise_scale",
                lambda: (torch.ones((), dtype=loc.dtype, device=loc.device) if init is None
                         else init.detach().to(loc)),
                constraint=constraints.positive).expand(loc.shape)
        elif config.variance == "fixed":
            scale = torch.full_like(loc, math.sqrt(config.fixed_variance))
        return dist.Normal(loc, scale).to_event(1)

    def forward(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                subsample_size: int | None = None) -> torch.Tensor:
        self._prepare(x)
        if x is None and num_data is None:
            raise InputError("give the data x or num_data, the number of rows to draw")
        num_data = x.shape[0] if x is not None else num_data
        weight = self.decoder.net[0].weight
        pyro.module("decoder", self.decoder)
        prior = self.prior(x, weight)
        with pyro.plate(DATA_PLATE, num_data, subsample_size=subsample_size,
                        device=weight.device) as idx:
            with poutine.scale(scale=self.config.beta):
                z = pyro.sample("z", prior)
            return pyro.sample("x", self.likelihood(z), obs=None if x is None else x[idx])


def make_model(config: DGLVMConfig, params: Params | None = None) -> DGLVM:
    """The Pyro model for ``config``; ``params`` (keyed ``decoder$$$net.0.weight``, ...,
    ``noise_scale``) are its initial values."""
    return DGLVM(config, params)


# --- closed forms that do exist: the KL term, sampling, densities on dequantized pixels ---------


def gaussian_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(m, diag s²) ‖ N(0, I)) = ½[tr S + ‖m‖² − Q − log det S] with S = diag s².

    ``loc, scale : (..., Q)`` → (...,) nats. TraceMeanField_ELBO uses this closed form in
    place of a Monte Carlo estimate of E_q[log q(z) − log p(z)].
    """
    variance = scale.square()
    return 0.5 * (variance + loc.square() - 1.0 - variance.log()).sum(-1)


def decode(config: DGLVMConfig, params: Params, z: torch.Tensor) -> torch.Tensor:
    """The decoder's mean E[x | z] for ``z : (..., Q)`` → (..., D): the Gaussian mean or the
    Bernoulli probabilities."""
    decoder = Decoder(config)
    load_module(decoder, "decoder", params)
    decoder.to(z)
    with torch.no_grad():
        loc, _ = decoder(z)
    return torch.sigmoid(loc) if config.likelihood == "bernoulli" else loc


def sample(config: DGLVMConfig, params: Params, num_data: int,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral samples ``(x (N, D), z (N, Q))`` from the prior and the decoder."""
    weight = params["decoder$$$net.0.weight"]
    z = torch.randn(num_data, config.latent_dim, generator=generator, dtype=weight.dtype,
                    device=weight.device)
    if config.prior == "vamp":  # z = m_k + s_k ε for a uniformly drawn pseudo-input k
        encoder = Encoder(config)
        load_module(encoder, "encoder", params)
        encoder.to(weight)
        with torch.no_grad():
            locs, scales = encoder(params["pseudo_inputs"].to(weight))
        component = torch.randint(locs.shape[0], (num_data,), generator=generator,
                                  device=weight.device)
        z = locs[component] + scales[component] * z
    decoder = Decoder(config)
    load_module(decoder, "decoder", params)
    decoder.to(weight)
    with torch.no_grad():
        loc, scale = decoder(z)
        if config.likelihood == "bernoulli":
            return torch.bernoulli(torch.sigmoid(loc), generator=generator), z
        if config.variance == "isotropic":
            scale = params["noise_scale"].to(loc).expand_as(loc)
        elif config.variance == "fixed":
            scale = torch.full_like(loc, math.sqrt(config.fixed_variance))
        noise = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        return loc + scale * noise, z


SYNTHETIC_CONFIG = DGLVMConfig(dim=16, latent_dim=2, hidden=(32,), variance="isotropic")


def synthetic(num_data: int, generator: torch.Generator, dtype: torch.dtype = torch.float32):
    """``(x (N, 16), None, true params)`` from a random 2-32-16 decoder with σ = 0.1."""
    seed = int(torch.randint(2**31 - 1, (), generator=generator))
    with own_random_stream(seed):
        decoder = Decoder(SYNTHETIC_CONFIG).to(dtype)
    params = {f"decoder$$$net.{k}": v.detach() for k, v in
              ((k.removeprefix("net."), v) for k, v in decoder.state_dict().items())}
    params["noise_scale"] = torch.tensor(0.1, dtype=dtype)
    x, _ = sample(SYNTHETIC_CONFIG, params, num_data, generator)
    return x, None, params


def dequantize(x: torch.Tensor, bin_width: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """x + bin_width · u with u ~ U[0, 1): quantized values spread over their bins.

    ``bin_width`` is the quantization step in data units: 1 for digits (counts 0..16), 1/255
    for 8-bit images scaled to [0, 1]. A density on these values is bounded, and
    E_u log p(x + u·bin) ≤ log P(x's bin) − D log bin_width (Theis et al., 2016).
    """
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + bin_width * noise


def bits_per_dim(log_density: torch.Tensor | float, dim: int, bin_width: float = 1.0):
    """−log₂ P(x) / D from a log-density (nats) of dequantized values: the bin probability is
    at least density × bin_width^D, so bits/dim = −(log p + D log bin_width) / (D log 2).
    Independent of the data's scale; lower is better."""
    return -(log_density + dim * math.log(bin_width)) / (dim * math.log(2.0))


SPEC = register(ModelSpec(
    name="dglvm",
    summary="deep Gaussian latent-variable model (VAE): z ~ N(0, I), x | z ~ MLP decoder",
    config_class=DGLVMConfig,
    make_model=make_model,
    default_data="digits",
    log_marginal=None,
    posterior=None,
    sample=sample,
    synthetic=synthetic,
    local_sites=("z",),
    # validation: 10% of the training rows held out choose the kept parameters and stop early
    svi_defaults={"lr": 1e-3, "batch_size": 128, "steps": 2400, "jit": True,
                  "validation": 0.1},
    baselines={"ppca": lambda config: {"latent_dim": config.latent_dim}},  # the linear model
    notes="no exact posterior: log p(x) by importance sampling (IWAE-K) with the encoder as "
          "proposal; gaussian densities are in the data's units (bits/dim on dequantized data "
          "in zoo.dglvm.bits_per_dim)",
))
