"""The deep Gaussian latent-variable model: config, shapes, β, training mechanics, and the
held-out log-likelihood against PPCA with the same q on digits."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from guides.dglvm import AmortizedGuide
from inference.catalog import get_model
from inference.evaluate import evaluate_fit
from inference.runs import load_checkpoint
from inference.strategies import fit
from inference.svi import TrainingDiverged, fit_svi, make_elbo
from zoo.dglvm import (
    DGLVMConfig,
    bits_per_dim,
    dequantize,
    gaussian_kl,
    make_model,
    sample,
    synthetic,
)
from zoo.errors import InputError


def small_config(**options) -> DGLVMConfig:
    return DGLVMConfig(**{"dim": 6, "latent_dim": 2, "hidden": (8,), **options})


@pytest.mark.parametrize(("options", "message"), [
    ({"latent_dim": 0}, "--latent-dim 0 must be at least 1"),
    ({"hidden": (8, 0)}, "every layer width"),
    ({"likelihood": "poisson"}, "choose one of: gaussian, bernoulli"),
    ({"variance": "full"}, "choose one of: learned, isotropic, fixed"),
    ({"fixed_variance": 0.0}, "--fixed-variance 0.0 must be positive"),
    ({"min_scale": -1.0}, "--min-scale -1.0 must be positive"),
    ({"beta": -0.5}, "--beta -0.5"),
    ({"beta": 0.0}, "--beta 0.0 must be .* > 0.*autoencoder"),
    ({"epochs": 0}, "--epochs 0"),
    ({"prior": "flow"}, "--prior flow is unknown; choose one of: standard, vamp"),
    ({"pseudo_inputs": 0}, "--pseudo-inputs 0 must be at least 1"),
])
def test_config_validation_names_the_input_and_the_fix(options, message):
    with pytest.raises(InputError, match=message):
        small_config(**options).validate(10)


@pytest.mark.parametrize(("text", "widths"), [
    ("400", (400,)), ("200,200", (200, 200)), ("linear", ()), ("", ()), (400, (400,)),
    ((200, 100), (200, 100)), ([50], (50,)),
])
def test_hidden_widths_parse_from_cli_strings_and_python_values(text, widths):
    assert DGLVMConfig(hidden=text).hidden == widths
    spec = get_model("dglvm")
    assert spec.make_config(dim=6, hidden=text).hidden == widths


def test_bad_hidden_widths_raise_input_error():
    with pytest.raises(InputError, match="--hidden '2x3'.*200,200"):
        DGLVMConfig(hidden="2x3")


def test_bernoulli_likelihood_rejects_pixels_outside_unit_interval():
    config = small_config(likelihood="bernoulli")
    x = torch.full((4, 6), 16.0)
    with pytest.raises(InputError, match=r"\[0, 1\].*--binarize.*--likelihood gaussian"):
        make_model(config)(x)


def test_epochs_map_to_steps():
    config = small_config(epochs=3)
    assert config.steps_for(1437, 128) == 3 * 12
    assert config.steps_for(100, None) == 3
    assert config.steps_for(100, 500) == 3  # a batch larger than the data is all of it


@pytest.mark.parametrize("likelihood,variance", [
    ("gaussian", "learned"), ("gaussian", "isotropic"), ("gaussian", "fixed"),
    ("bernoulli", "learned")])
def test_model_broadcasts_particles_and_subsamples_rows(likelihood, variance):
    config = small_config(likelihood=likelihood, variance=variance)
    model = make_model(config)
    x = torch.rand(10, 6)
    guide = AmortizedGuide(model, config)

    def particles(fn):
        def wrapped(*args, **kwargs):
            with pyro.plate("particles", 7, dim=-2):
                return fn(*args, **kwargs)
        return wrapped

    guide_trace = poutine.trace(particles(guide)).get_trace(x, subsample_size=4)
    model_trace = poutine.trace(poutine.replay(particles(model), trace=guide_trace)).get_trace(
        x, subsample_size=4)
    model_trace.compute_log_prob()
    assert model_trace.nodes["z"]["value"].shape == (7, 4, 2)
    assert model_trace.nodes["x"]["log_prob"].shape == (7, 4)
    assert model_trace.nodes["x"]["fn"].event_shape == (6,)
    assert model_trace.nodes["data"]["value"].shape == (4,)
    names = {n for n, s in model_trace.nodes.items() if s["type"] == "param"}
    assert "decoder$$$net.0.weight" in names
    assert ("noise_scale" in names) == (likelihood == "gaussian" and variance == "isotropic")


def test_prior_samples_have_the_data_shape_and_follow_the_dtype():
    config = small_config()
    model = make_model(config)
    assert model(num_data=5).shape == (5, 6)
    x64 = torch.rand(3, 6, dtype=torch.float64)
    trace = poutine.trace(make_model(config)).get_trace(x64)
    assert trace.nodes["z"]["value"].dtype == torch.float64
    with pytest.raises(InputError, match="num_data"):
        model()


def test_sample_and_synthetic_data_come_from_the_decoder():
    x, labels, params = synthetic(50, torch.Generator().manual_seed(1), torch.float64)
    assert x.shape == (50, 16) and x.dtype == torch.float64 and labels is None
    again, _, _ = synthetic(50, torch.Generator().manual_seed(1), torch.float64)
    torch.testing.assert_close(x, again)
    config = DGLVMConfig(dim=16, latent_dim=2, hidden=(32,), variance="isotropic")
    more, z = sample(config, params, 20, torch.Generator().manual_seed(2))
    assert more.shape == (20, 16) and z.shape == (20, 2)
    # the given params are the model's starting values, at their own precision
    model = make_model(config, params)
    trace = poutine.trace(model).get_trace(x)
    store = pyro.get_param_store()
    assert torch.equal(store["decoder$$$net.0.weight"], params["decoder$$$net.0.weight"])
    torch.testing.assert_close(store["noise_scale"], params["noise_scale"])
    assert trace.nodes["x"]["fn"].base_dist.scale.unique().item() == pytest.approx(0.1)


@pytest.mark.parametrize("elbo_name", ["Trace_ELBO", "TraceMeanField_ELBO"])
def test_beta_scales_the_kl_term_exactly(elbo_name):
    """loss(β) = −log p(x | z) + β (log q(z | x) − log p(z)) with the same ε for every β:
    linear in β, and with TraceMeanField_ELBO the slope is the closed-form KL."""
    x = torch.rand(9, 6, dtype=torch.float64)
    losses, kl = {}, None
    for beta in (0.5, 1.0, 2.5):
        config = small_config(beta=beta)
        model, guide = make_model(config), AmortizedGuide(make_model(config), config)
        pyro.set_rng_seed(0)  # the same weights (first call) and the same ε for every β
        losses[beta] = make_elbo(elbo_name).loss(model, guide, x)
        loc, scale = guide.encode(x)
        kl = float(gaussian_kl(loc, scale).sum().detach())
        pyro.clear_param_store()
    assert losses[2.5] - losses[0.5] == pytest.approx(4 * (losses[1.0] - losses[0.5]),
                                                      rel=1e-9)
    if elbo_name == "TraceMeanField_ELBO":
        assert losses[1.0] - losses[0.5] == pytest.approx(0.5 * kl, rel=1e-9)
    assert losses[1.0] != losses[0.5]


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    x = torch.rand(40, 6)
    config = small_config()
    options = {"steps": 20, "batch_size": 16, "seed": 3, "lr": 1e-2}

    def run(**extra):
        model = make_model(config)
        return fit_svi(model, AmortizedGuide(model, config), x, **options, **extra)

    straight = run()

    checkpoint = tmp_path / "checkpoint.pt"
    model = make_model(config)
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 13:
            raise KeyboardInterrupt
        return model(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        fit_svi(interrupted, AmortizedGuide(model, config), x, **options,
                checkpoint=checkpoint, checkpoint_every=5)
    assert int(load_checkpoint(checkpoint)["step"]) == 10
    resumed = run(checkpoint=checkpoint, checkpoint_every=5, resume=True)

    assert resumed.history["elbo"] == straight.history["elbo"]
    for name, value in {**straight.params, **straight.guide_params}.items():
        other = {**resumed.params, **resumed.guide_params}[name]
        assert torch.equal(value, other), name


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    x = torch.rand(40, 6)
    config = small_config()
    model = make_model(config)
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            with torch.no_grad():
                model.decoder.net[0].weight.fill_(float("nan"))
        return model(*args, **kwargs)

    checkpoint = tmp_path / "checkpoint.pt"
    pyro.enable_validation(False)  # validation would warn on the NaN first
    with pytest.raises(TrainingDiverged, match=r"step \d+ .*last good checkpoint is"):
        fit_svi(poisoned, AmortizedGuide(model, config), x, steps=20, checkpoint=checkpoint,
                checkpoint_every=5, lr=1e-2)
    state = load_checkpoint(checkpoint)
    assert int(state["step"]) == 5
    assert all(torch.isfinite(v).all() for v in state["params"].values())


def test_jit_trace_elbo_gives_the_same_loss():
    x = torch.rand(12, 6)
    config = small_config()
    values = []
    for name in ("Trace_ELBO", "JitTrace_ELBO"):
        model = make_model(config)
        guide = AmortizedGuide(model, config)
        pyro.set_rng_seed(0)
        elbo = make_elbo(name, ignore_jit_warnings=True) if "Jit" in name else make_elbo(name)
        values.append(elbo.loss(model, guide, x))
        pyro.clear_param_store()
    assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_bits_per_dim_and_dequantization():
    x = torch.randint(0, 256, (5, 4)).float() / 255
    noisy = dequantize(x, 1 / 255, torch.Generator().manual_seed(0))
    assert ((noisy - x) >= 0).all() and ((noisy - x) < 1 / 255).all()
    # the uniform density on [0, 256/255)^D is (255/256)^D: exactly 8 bits per dimension
    assert bits_per_dim(4 * math.log(255 / 256), 4, 1 / 255) == pytest.approx(8.0)
    # scale-free: the same model on data scaled by 16 (density / 16^D, bin × 16)
    assert bits_per_dim(-3.0 - 4 * math.log(16), 4, 16.0) == pytest.approx(
        bits_per_dim(-3.0, 4, 1.0))


def test_gaussian_kl_is_zero_at_the_prior():
    assert float(gaussian_kl(torch.zeros(3), torch.ones(3))) == 0.0


def test_deep_model_beats_ppca_with_the_same_q_on_held_out_digits():
    """Dequantized digits (counts + U[0, 1)): both densities are in the same units and bounded.
    PPCA's held-out log-likelihood is scikit-learn's (probabilistic PCA, Tipping & Bishop)."""
    q = 5
    data = torch.tensor(load_digits().data, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    data = dequantize(data[torch.randperm(len(data), generator=generator)], 1.0, generator)
    x_train, x_test = data[:1437], data[1437:]
    ppca = PCA(n_components=q).fit(x_train.numpy())
    ppca_test = float(ppca.score(x_test.numpy()))

    spec = get_model("dglvm")
    config = spec.make_config(dim=64, latent_dim=q, hidden=(200,))
    config.validate(x_train.shape[0])
    result = fit(spec, config, x_train, inference="svi", steps=config.steps_for(1437, 128) // 2,
                 lr=1e-3, batch_size=128)
    metrics = evaluate_fit(spec, config, result, x_train, x_test, num_samples=200)
    assert metrics["test_log_likelihood"] > ppca_test + 20.0, (metrics, ppca_test)
    assert metrics["gap"] > 0  # IWAE ≥ ELBO on the training rows
    assert bits_per_dim(metrics["test_log_likelihood"], 64, 1.0) < bits_per_dim(
        ppca_test, 64, 1.0)


def test_a_bounded_mean_stays_in_the_unit_interval_everywhere():
    """Kingma & Welling's Frey Face decoder: sigmoid means, so the manifold is an image even
    far from the prior's mass (z = ±30); the unbounded mean of the same weights leaves [0, 1]."""
    from zoo.dglvm import decode
    torch.manual_seed(0)
    z = 30 * torch.randn(500, 2)
    bounded = small_config(bounded_mean=True)
    model = make_model(bounded)
    model(torch.rand(4, 6))  # draws the weights
    params = {f"decoder$$$net.{k}": v for k, v in model.decoder.net.state_dict().items()}
    means = decode(bounded, params, z)
    assert bool(((means >= 0) & (means <= 1)).all())  # (float32 sigmoid saturates at 1)
    plain = decode(small_config(), params, z)
    assert bool(((plain < 0) | (plain > 1)).any())
    assert torch.allclose(torch.sigmoid(plain), means)
    with pytest.raises(InputError, match="--bounded-mean"):
        small_config(bounded_mean=True, likelihood="bernoulli").validate(10)


@pytest.mark.slow
def test_iwae_training_gives_a_tighter_held_out_bound_than_elbo_training(shared_data):
    """Burda et al.'s claim at a budget this machine runs: the same model, steps, batches and
    seed, trained on the ELBO (Trace_ELBO) or on the IWAE-5 bound (RenyiELBO, alpha = 0, 5
    vectorized particles); the IWAE-trained model has the higher held-out IWAE-1000
    log-likelihood (statically binarized MNIST, 10,000 training images, 784-200-20, 15 epochs,
    1,000 test images)."""
    from zoo.datasets import load_dataset
    data = load_dataset("mnist", root=shared_data, binarize="static")
    x_train, x_test = data.train[:10_000], data.test[:1_000]
    spec = get_model("dglvm")
    config = spec.make_config(dim=784, latent_dim=20, hidden=(200,), likelihood="bernoulli")
    steps = 15 * math.ceil(x_train.shape[0] / 100)
    held_out = {}
    for name, options in (("elbo", {"elbo": "Trace_ELBO"}),
                          ("iwae-5", {"elbo": "RenyiELBO", "num_particles": 5})):
        result = fit(spec, config, x_train, inference="svi", steps=steps, lr=1e-3,
                     batch_size=100, stop_tol=0.0, seed=0, **options)
        held_out[name] = evaluate_fit(spec, config, result, x_train[:1_000], x_test,
                                      num_samples=1000)["test_log_likelihood"]
    print("held-out IWAE-1000 after ELBO / IWAE-5 training:", held_out)
    assert held_out["iwae-5"] > held_out["elbo"] + 0.5, held_out


# --- the VampPrior -------------------------------------------------------------------------


def test_vamp_prior_density_equals_torchs_mixture_of_gaussians():
    """The matrix-product log density against torch's MixtureSameFamily (the (M, K, Q)
    tensor form), in float32 with narrow components, where the expanded quadratic form would
    lose digits without float64."""
    from zoo.dglvm import VampPrior
    generator = torch.Generator().manual_seed(0)
    locs = 3 * torch.randn(40, 5, generator=generator)
    scales = 0.02 + torch.rand(40, 5, generator=generator)
    z = locs[torch.randint(40, (7, 3), generator=generator)] + 0.05 * torch.randn(
        7, 3, 5, generator=generator)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(40, dtype=torch.float64)),
        torch.distributions.Independent(
            torch.distributions.Normal(locs.double(), scales.double()), 1))
    prior = VampPrior(locs, scales).expand((3,))
    assert prior.batch_shape == (3,) and prior.event_shape == (5,)
    value = prior.log_prob(z)
    assert value.shape == (7, 3) and value.dtype == torch.float32
    torch.testing.assert_close(value.double(), reference.log_prob(z.double()),
                               rtol=1e-6, atol=1e-5)
    draws = VampPrior(locs, scales).sample((200_000,))
    torch.testing.assert_close(draws.mean(0), locs.mean(0), atol=0.03, rtol=0)


def vamp_fit(x, **options):
    spec = get_model("dglvm")
    config = spec.make_config(dim=x.shape[1], latent_dim=2, hidden=(8,), prior="vamp",
                              pseudo_inputs=4, likelihood="bernoulli")
    return spec, config, fit(spec, config, x, inference="svi", guide="amortized",
                             steps=30, lr=1e-2, batch_size=16, stop_tol=0.0, seed=0, **options)


def test_vamp_prior_shares_the_guides_encoder_and_the_yardstick_uses_it():
    """The model's prior is built from the amortized guide's own encoder (one set of weights,
    trained once) and K pseudo-inputs; the evaluated ELBO equals log p(x | z) + log p(z) −
    log q(z | x) written out with plain torch from the fitted parameters."""
    from inference.evaluate import fitted, pointwise_log_weights
    from zoo.dglvm import Decoder, Encoder, load_module
    x = torch.bernoulli(torch.rand(48, 6, generator=torch.Generator().manual_seed(1)))
    spec, config, result = vamp_fit(x)
    assert result.guide_params == {}  # the guide reads the model's encoder
    assert result.params["pseudo_inputs"].shape == (4, 6)
    assert any(k.startswith("encoder$$$") for k in result.params)
    with fitted(spec, config, result.params, x, guide="amortized",
                guide_params=result.guide_params) as (model, guide):
        pyro.set_rng_seed(5)
        log_weights = pointwise_log_weights(model, guide, x, 3)
    encoder, decoder = Encoder(config), Decoder(config)
    load_module(encoder, "encoder", result.params)
    load_module(decoder, "decoder", result.params)
    with torch.no_grad():
        pyro.set_rng_seed(5)
        loc, scale = encoder(x)
        z = loc + scale * torch.randn((3, *loc.shape))
        logits, _ = decoder(z)
        log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum(-1)
        m, s = encoder(result.params["pseudo_inputs"])
        components = torch.distributions.Normal(m, s).log_prob(z.unsqueeze(-2)).sum(-1)
        log_prior = torch.logsumexp(components, -1) - math.log(4)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    torch.testing.assert_close(log_weights, log_lik + log_prior - log_q, rtol=1e-5, atol=1e-4)


def test_vamp_prior_fits_through_the_cli_and_evaluate_reproduces_it(tmp_path, capsys):
    from inference.cli import main
    out = tmp_path / "run"
    assert main(["fit", "dglvm", "--data", "digits", "--prior", "vamp", "--pseudo-inputs", "10",
                 "--latent-dim", "2", "--hidden", "16", "--epochs", "1",
                 "--iwae-samples", "20", "--out", str(out), "--json"]) == 0
    import json
    record = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test_log_likelihood"] == pytest.approx(record["test_log_likelihood"],
                                                         abs=1e-4)
    # the figures find the encoder among the model's parameters
    assert (out / "reconstructions.png").is_file()
    from inference.runs import load_run
    _, params, _, _ = load_run(out)
    config = DGLVMConfig(dim=64, latent_dim=2, hidden=(16,), prior="vamp", pseudo_inputs=10)
    _, z = sample(config, params, 20_000, torch.Generator().manual_seed(0))
    # ancestral draws come from the prior the model evaluates: their mean is the mixture's
    from zoo.dglvm import Encoder, load_module
    encoder = Encoder(config)
    load_module(encoder, "encoder", params)
    with torch.no_grad():
        locs, _ = encoder(params["pseudo_inputs"])
    torch.testing.assert_close(z.mean(0), locs.mean(0), atol=0.05, rtol=0)


def test_parameter_count_is_the_networks_own_and_huge_widths_are_refused_before_work():
    from zoo.dglvm import Decoder, DGLVMConfig, Encoder

    for options in ({}, {"likelihood": "bernoulli"}, {"hidden": (64, 32), "variance": "fixed"},
                    {"prior": "vamp", "pseudo_inputs": 7}):
        config = DGLVMConfig(dim=12, latent_dim=3, **options)
        networks = sum(p.numel() for module in (Decoder(config), Encoder(config))
                       for p in module.parameters())
        extra = 7 * 12 if options.get("prior") == "vamp" else 0
        assert config.parameter_count() == networks + extra
    with pytest.raises(InputError, match=r"--hidden 1000000000 .* about .*iB of memory needed"):
        DGLVMConfig(dim=784, latent_dim=20, hidden=(10**9,)).validate(100)
