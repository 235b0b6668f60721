"""The VAE against its mathematics: on a model with a one-dimensional latent, ``log p(x)`` is a quadrature over
``z`` and exact to many digits, so IWAE's bound can be seen to rise with ``K`` towards it (Burda et al. 2016,
Theorem 1), ancestral samples can be checked against ``p(x)`` by a chi-square test, and the closed-form KL of the
ELBO against a Monte-Carlo one.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from unidm.data import Dataset
from unidm.methods.autoregressive import DiscreteData
from unidm.methods.vae import VAE


def tiny_vae(dim: int = 8, levels: int = 2, scale: float = 1.0, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    vae = VAE(DiscreteData("tokens", levels, (dim,)), hidden=16, depth=1, latent=1).double()
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.normal_(0, scale)
        for p in vae.encoder.parameters():  # a sensible but imperfect q(z | x)
            p.normal_(0, 0.3)
    return vae.eval()


def all_points(vae: VAE) -> torch.Tensor:
    return torch.cartesian_prod(*[torch.arange(vae.levels)] * vae.dim).reshape(-1, vae.dim)


def exact_log_p(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """``log p(x) = log int N(z; 0, 1) p(x | z) dz`` ``[B]`` by the rectangle rule on ``[-12, 12]`` (20001 points;
    the integrand is smooth and its tails below exp(-70))."""
    z = torch.linspace(-12, 12, 20001, dtype=torch.float64)
    log_prior = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    with torch.no_grad():
        log_lik = torch.cat([vae.log_likelihood(x, zc[:, None, None]) for zc in z.split(2000)])  # [Z, B]
    return torch.logsumexp(log_lik + log_prior[:, None], 0) + math.log(float(z[1] - z[0]))


def test_the_quadrature_is_a_distribution():
    vae = tiny_vae()
    assert float(exact_log_p(vae, all_points(vae)).exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_iwae_rises_with_k_towards_the_exact_log_likelihood():
    vae = tiny_vae()
    x = all_points(vae)  # all 256 binary vectors, 4 independent draws of each bound
    log_p = exact_log_p(vae, x)
    g = torch.Generator().manual_seed(0)
    bound = {k: torch.stack([vae.iwae(x, samples=k, generator=g) for _ in range(4)]).mean(0) for k in (1, 10, 1000)}
    gap = {k: float((log_p - b).mean()) for k, b in bound.items()}
    # L_1 <= L_10 <= L_1000 <= log p in expectation; with 1024 draws each the means are ordered by far more than
    # their standard errors
    assert gap[1] > gap[10] + 0.05 > gap[1000] + 0.05 > -0.005
    assert gap[1000] < 0.02  # close to log p
    assert gap[1] > 0.2  # the encoder is imperfect: the test could fail
    elbo = torch.stack([vae.elbo(x, g).detach() for _ in range(4)]).mean(0)
    assert float((log_p - elbo).mean()) > gap[10]  # the ELBO is the loosest


def test_closed_form_kl_matches_monte_carlo_elbo():
    """The ELBO with the Gaussian KL in closed form (Kingma & Welling 2014, App. B) and IWAE with one sample (the KL
    sampled) are two unbiased estimates of the same bound."""
    vae = tiny_vae(dim=6)
    x = all_points(vae)[::5]
    g = torch.Generator().manual_seed(1)
    closed = torch.stack([vae.elbo(x, g).detach() for _ in range(400)])
    sampled = torch.stack([vae.iwae(x, samples=1, generator=g) for _ in range(400)])
    diff = closed.mean(0) - sampled.mean(0)
    se = ((closed.var(0) + sampled.var(0)) / 400).sqrt()
    assert float((diff.abs() / se).max()) < 4.5
    shifted = closed.mean(0) - 0.2  # the check has power: a bound off by 0.2 nats fails it
    assert float(((shifted - sampled.mean(0)).abs() / se).max()) > 4.5


def test_ancestral_samples_follow_the_exact_marginal():
    vae = tiny_vae(dim=4, levels=3, scale=0.8)
    x = all_points(vae)
    p = exact_log_p(vae, x).exp()
    n = 6000
    draws = vae.sample(n, generator=torch.Generator().manual_seed(0))
    cell = (draws * 3 ** torch.arange(3, -1, -1)).sum(-1)
    observed = torch.bincount(cell, minlength=len(p)).double()
    expected = p / p.sum() * n
    small = expected < 5
    observed = torch.cat([observed[~small], observed[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    assert float(stats.chisquare(observed.numpy(), expected.numpy()).pvalue) > 1e-3


def test_samples_are_per_seed():
    vae = tiny_vae(dim=8, levels=5)
    x = vae.generate(3, seeds=[4, 5, 6])
    assert torch.equal(vae.generate(1, seeds=[5])[0], x[1])
    assert x.dtype == torch.long and int(x.max()) < 5


def test_a_step_count_does_not_change_the_draw():
    """One ancestral pass: ``steps`` is checked like every family's and then does not apply."""
    vae = tiny_vae(dim=8, levels=5)
    assert torch.equal(vae.generate(3, seeds=[1, 2, 3], steps=7), vae.generate(3, seeds=[1, 2, 3]))
    with pytest.raises(ValueError, match="whole number >= 1"):
        vae.generate(1, seeds=[0], steps=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        vae.generate(1, seeds=[0], sampler="euler")


def test_likelihood_face():
    vae = tiny_vae(dim=6)
    x = all_points(vae)[:20]
    assert vae.likelihood_methods() == {"iwae": "bound", "elbo": "bound"}
    res = vae.likelihood(x, generator=torch.Generator().manual_seed(0), samples=20)
    assert res.kind == "bound" and res.nfe == 20 and res.nll.shape == (20,)
    torch.testing.assert_close(res.bits_per_dim, res.nll / (6 * math.log(2)))
    with pytest.raises(ValueError, match="valid: samples"):
        vae.likelihood(x, k=3)
    with pytest.raises(ValueError, match="whole number >= 1"):
        vae.likelihood(x, samples=0)
    with pytest.raises(ValueError, match="2 levels"):
        vae.likelihood(x, num_levels=17)


def test_bad_data_is_refused_with_one_line():
    moons = Dataset("moons", torch.randn(20, 2), torch.randn(5, 2), kind="vector")
    with pytest.raises(ValueError, match="family 'vae' models discrete data") as e:
        VAE.from_config({}, {}, moons)
    assert "\n" not in str(e.value)
    vae = tiny_vae(dim=6)
    with pytest.raises(ValueError, match=r"expected data of shape \[B, 6\]"):
        vae.likelihood(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown model option"):
        VAE.from_config({"latent_dim": 3}, {}, Dataset("b", torch.randint(2, (9, 4)), torch.randint(2, (3, 4)),
                                                      kind="tokens", vocab_size=2))


def test_likelihood_command_takes_the_family_options(tmp_path, capsys):
    """``unidm likelihood RUN --option samples=S``: the IWAE bound with S importance samples, the same numbers as
    ``likelihood(x, samples=S)`` on the same examples and seed; an option the method does not take is refused."""
    import json

    from unidm.cli import main
    from unidm.config import apply_overrides
    from unidm.presets import get_preset
    from unidm.run import build_data, build_model, load_run
    from unidm.train import train

    cfg = apply_overrides(get_preset("binary-digits-vae"),
                          ["model.hidden=8", "model.latent=2", "train.steps=2", "train.batch_size=8",
                           "train.warmup=0", "train.ema_decay=0", "train.progress=false", "train.num_threads=1"])
    data, run = build_data(cfg), str(tmp_path / "vae")
    train(build_model(cfg, data), data, cfg.train, run, config_dict=cfg.to_dict(), log=lambda _: None)

    def cli(*argv):
        capsys.readouterr()
        rc = main(["likelihood", run, "-n", "6", *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, _ = cli("--option", "samples=3", "--json")
    report = json.loads(out)
    assert rc == 0 and report["method"] == "iwae" and report["nfe_mean"] == 3
    loaded = load_run(run)
    x = loaded.data.test[:6]
    want = loaded.model.likelihood(x, generator=torch.Generator().manual_seed(0), samples=3).nll.double().mean()
    assert report["nll_nats"]["mean"] == pytest.approx(float(want), rel=1e-12)
    rc, out, _ = cli("--method", "elbo", "--option", "samples=2", "--json")
    assert rc == 0 and json.loads(out)["nfe_mean"] == 2
    for argv, words in ((["--option", "k=3"], ("'k'", "valid: samples")),
                        (["--option", "samples"], ("not key=value",)),
                        (["--option", "n_t=2", "--n-t", "2"], ("--option", "--n-t"))):
        rc, _, err = cli(*argv)
        assert rc == 2 and all(w in err for w in words) and len(err.strip().splitlines()) == 1, err
