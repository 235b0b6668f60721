"""Guidance against closed forms: a Gaussian mixture whose components are the classes (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from unidm.data.mixtures import grid, random_mixture, ring
from unidm.guidance import AutoGuidance, ClassifierFreeGuidance, ClassifierGuidance, MixtureClassOracle, rescale_guided
from unidm.oracles import GaussianOracle

SIGMAS = [0.05, 0.3, 1.0, 4.0]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is fastest, and the CI machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mixtures():
    return {"ring": ring(k=5), "grid": grid(side=3), "16d": random_mixture(dim=6, k=4, seed=3)}


def _inputs(oracle, sigma: float, n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = oracle.sample(n, sigma=sigma, generator=g)
    y = torch.randint(0, oracle.num_components, (n,), generator=g)
    return x, torch.full((n,), sigma, dtype=torch.float64), y


def _component_denoiser(oracle, x, s, y):
    """``E[x0 | x, y]`` from the single Gaussian of component ``y`` (independent of the code under test)."""
    out = torch.empty_like(x)
    for k in range(oracle.num_components):
        m = y == k
        if m.any():
            out[m] = GaussianOracle(oracle.means[k], oracle.variances[k])(x[m], s[m])
    return out


def _posterior_grad(oracle, x, s, y):
    """``grad_x log p(y | x, sigma)`` by autograd through the oracle's exact responsibilities."""
    xg = x.clone().requires_grad_(True)
    log_r = torch.log(oracle.responsibilities(xg, s)).gather(1, y[:, None]).sum()
    return torch.autograd.grad(log_r, xg)[0]


class CountingOracle(MixtureClassOracle):
    def __init__(self, oracle):
        super().__init__(oracle)
        self.calls, self.rows = 0, []

    def __call__(self, x, sigma, class_labels=None, **cond):
        self.calls += 1
        self.rows.append(x.shape[0])
        return super().__call__(x, sigma, class_labels=class_labels, **cond)


@pytest.mark.parametrize("name", ["ring", "grid", "16d"])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_conditional_denoiser_is_unconditional_plus_posterior_gradient(name, sigma):
    """E[x0 | x, y] = E[x0 | x] + sigma^2 grad_x log p(y | x, sigma) (Tweedie on p(x | y) = p(x) p(y|x) / p(y))."""
    oracle = _mixtures()[name]
    x, s, y = _inputs(oracle, sigma)
    lhs = _component_denoiser(oracle, x, s, y)
    rhs = oracle(x, s) + sigma**2 * _posterior_grad(oracle, x, s, y)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-10)
    exact = MixtureClassOracle(oracle)
    torch.testing.assert_close(exact(x, s, class_labels=y), lhs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(exact.logits(x, s), torch.log(oracle.responsibilities(x, s)), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(exact(x, s, class_labels=torch.full_like(y, exact.null_label)), oracle(x, s))


@pytest.mark.parametrize("name", ["ring", "grid", "16d"])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_both_guidances_at_w1_reproduce_the_exact_conditional_denoiser(name, sigma):
    oracle = _mixtures()[name]
    exact = MixtureClassOracle(oracle)
    x, s, y = _inputs(oracle, sigma, seed=1)
    target = _component_denoiser(oracle, x, s, y)
    cg = ClassifierGuidance(oracle, exact.logits, scale=1.0)  # unconditional oracle + exact classifier
    torch.testing.assert_close(cg(x, s, class_labels=y), target, rtol=1e-9, atol=1e-10)
    for scale in (1.0, 1.0 + 1e-12):  # exactly 1 skips the unconditional pass; just above it does both
        cfg = ClassifierFreeGuidance(exact, scale=scale)
        torch.testing.assert_close(cfg(x, s, class_labels=y), target, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 4.0])
def test_cfg_and_classifier_guidance_agree_at_every_weight_with_exact_pieces(w):
    """With exact pieces D_c - D_u = sigma^2 grad log p(y|x): both give D_u + w (D_c - D_u); w = 0 is D_u."""
    oracle = ring(k=6)
    exact = MixtureClassOracle(oracle)
    x, s, y = _inputs(oracle, 0.5, seed=2)
    cfg = ClassifierFreeGuidance(exact, scale=w)(x, s, class_labels=y)
    cg = ClassifierGuidance(oracle, exact.logits, scale=w)(x, s, class_labels=y)
    torch.testing.assert_close(cfg, cg, rtol=1e-9, atol=1e-10)
    d_u, d_c = oracle(x, s), exact(x, s, class_labels=y)
    torch.testing.assert_close(cfg, d_u + w * (d_c - d_u), rtol=1e-12, atol=1e-12)
    # on a conditional base, (w - 1) sigma^2 grad log p is added: the same guided denoiser again
    cg_cond = ClassifierGuidance(exact, exact.logits, scale=w, conditional_base=True)(x, s, class_labels=y)
    torch.testing.assert_close(cg_cond, cfg, rtol=1e-9, atol=1e-10)


def test_guidance_interval_returns_the_conditional_prediction_outside():
    oracle = ring(k=4)
    exact = MixtureClassOracle(oracle)
    g = torch.Generator().manual_seed(3)
    x = oracle.sample(8, sigma=1.0, generator=g)
    s = torch.tensor([0.01, 0.1, 0.3, 0.5, 1.0, 2.0, 5.0, 20.0], dtype=torch.float64)
    y = torch.arange(8) % 4
    inside = (s >= 0.3) & (s <= 2.0)
    d_u, d_c = oracle(x, s), exact(x, s, class_labels=y)
    guided = d_u + 3.0 * (d_c - d_u)
    expect = torch.where(inside[:, None], guided, d_c)
    counted = CountingOracle(oracle)
    cfg = ClassifierFreeGuidance(counted, scale=3.0, sigma_lo=0.3, sigma_hi=2.0)
    torch.testing.assert_close(cfg(x, s, class_labels=y), expect, rtol=1e-12, atol=1e-12)
    assert counted.rows == [8 + int(inside.sum())]  # unconditional rows only where guidance applies
    cg = ClassifierGuidance(oracle, exact.logits, scale=3.0, sigma_lo=0.3, sigma_hi=2.0)
    torch.testing.assert_close(cg(x, s, class_labels=y), expect, rtol=1e-9, atol=1e-10)
    # all levels outside: a single conditional pass of the plain batch
    counted.rows.clear()
    out = cfg(x, torch.full((8,), 10.0, dtype=torch.float64), class_labels=y)
    assert counted.rows == [8]
    torch.testing.assert_close(out, exact(x, torch.full((8,), 10.0, dtype=torch.float64), class_labels=y))


def test_batched_cfg_makes_one_denoiser_call_per_step():
    from unidm.samplers import karras_grid, solve

    oracle = ring(k=6)
    counted = CountingOracle(oracle)
    cfg = ClassifierFreeGuidance(counted, scale=2.0)
    x = 80.0 * torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = solve(cfg, x, karras_grid(12, 0.002, 80.0), "heun", class_labels=torch.arange(16) % 6)
    assert counted.calls == res.nfe > 0
    assert set(counted.rows) == {32}


def test_rescale_matches_lin_et_al_eq_15_16():
    g = torch.Generator().manual_seed(0)
    cond, guided = torch.randn(5, 3, 4, generator=g), 3 * torch.randn(5, 3, 4, generator=g)
    out = rescale_guided(guided, cond, phi=1.0)
    torch.testing.assert_close(out.std(dim=(1, 2)), cond.std(dim=(1, 2)))
    # eq. 15 written out, per example: a pure rescaling of the guided prediction (its mean is scaled, not moved)
    for i in range(5):
        torch.testing.assert_close(out[i], guided[i] * float(cond[i].std()) / float(guided[i].std()))
    torch.testing.assert_close(rescale_guided(guided, cond, 0.0), guided)
    half = rescale_guided(guided, cond, 0.7)
    torch.testing.assert_close(half, 0.7 * out + 0.3 * guided)
    oracle = ring(k=4)
    exact = MixtureClassOracle(oracle)
    x, s, y = _inputs(oracle, 0.5, n=8)
    d_u, d_c = oracle(x, s), exact(x, s, class_labels=y)
    cfg = ClassifierFreeGuidance(exact, scale=3.0, rescale=0.7)(x, s, class_labels=y)
    torch.testing.assert_close(cfg, rescale_guided(d_u + 3 * (d_c - d_u), d_c, 0.7))


def test_guided_ode_with_exact_pieces_samples_the_requested_component():
    """Heun on the exact conditional denoiser (CFG at w = 1) lands in component y, and so does w = 4."""
    from unidm.samplers import karras_grid, sample

    oracle = ring(k=6)
    exact = MixtureClassOracle(oracle)
    y = torch.arange(300) % 6
    x = 80.0 * torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grid_ = karras_grid(24, 0.002, 80.0)
    for w in (1.0, 4.0):
        out = sample(ClassifierFreeGuidance(exact, scale=w), x, grid_, "heun", class_labels=y)
        r = oracle.responsibilities(out, 0.0)
        assert float((r.argmax(1) == y).double().mean()) > 0.99
    # over-guidance pushes samples away from the other classes (not towards mu_y: Chidambaram et al. 2024):
    # the exact classifier at a moderate noise level grows more confident as w grows
    conf = [float(exact.logits(sample(ClassifierFreeGuidance(exact, w), x, grid_, "heun", class_labels=y), 1.0)
                  .gather(1, y[:, None]).mean()) for w in (1.0, 4.0)]
    assert conf[1] > conf[0]


def test_errors_are_clear():
    oracle = ring(k=4)
    exact = MixtureClassOracle(oracle)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="class_labels"):
        ClassifierFreeGuidance(exact, 2.0)(x, 1.0)
    with pytest.raises(ValueError, match="null_label"):
        ClassifierFreeGuidance(oracle, 2.0)
    with pytest.raises(ValueError, match="sigma_lo"):
        ClassifierFreeGuidance(exact, 2.0, sigma_lo=2.0, sigma_hi=1.0)
    with pytest.raises(ValueError, match="rescale"):
        ClassifierFreeGuidance(exact, 2.0, rescale=1.5)
    with pytest.raises(ValueError, match="finite"):
        ClassifierGuidance(oracle, exact.logits, math.nan)


# ---- the noise-conditional classifier and end to end ----------------------------------------------------------

def _train(cfg_dict, out, steps):
    from unidm.config import RunConfig
    from unidm.run import build_data, build_model, load_run
    from unidm.train import train

    cfg = RunConfig.from_dict(cfg_dict)
    cfg.train.steps, cfg.train.progress, cfg.train.device = steps, False, "cpu"
    cfg.train.ckpt_every, cfg.train.log_every = steps, steps
    data = build_data(cfg)
    model = build_model(cfg, data)
    train(model, data, cfg.train, str(out), config_dict=cfg.to_dict(), log=lambda s: None)
    return load_run(str(out))


def _small(preset: str, **model) -> dict:
    import copy

    from unidm.presets import PRESETS

    d = copy.deepcopy(PRESETS[preset])
    d["data"] = {"name": "gmm-ring", "n_train": 8000, "n_test": 1000}
    d["model"].update(model)
    d["train"].update(batch_size=256, warmup=20, lr=3e-3, ema_decay=0.99)
    return d


def test_noisy_classifier_family_and_errors(tmp_path):
    from unidm.methods import FAMILIES
    from unidm.methods.classifier import CLASSIFIER_FAMILIES, NoisyClassifier

    assert CLASSIFIER_FAMILIES == {"classifier": NoisyClassifier} and FAMILIES["classifier"] is NoisyClassifier
    run = _train(_small("gmm-ring-classifier", hidden=64, depth=2), tmp_path / "clf", 150)
    clf = run.model
    assert isinstance(clf, NoisyClassifier) and clf.num_classes == 6
    x, y = run.data.test[:500], run.data.test_labels[:500]
    assert clf.accuracy(x, y, 0.05, generator=torch.Generator().manual_seed(0)) > 0.9
    from unidm.methods import GenerativeModel, TrainableModel

    assert isinstance(clf, TrainableModel) and not isinstance(clf, GenerativeModel)  # trained, never sampled
    # its gradient is finite inside no_grad and at sigma = 0
    with torch.no_grad():
        cg = ClassifierGuidance(lambda x, s, **c: x, clf, scale=1.0)
        out = cg(x[:8], torch.zeros(8), class_labels=y[:8])
    assert torch.isfinite(out).all()


def test_end_to_end_guided_samples_land_in_the_requested_component(tmp_path):
    """A tiny conditional EDM model with label dropout and a tiny noisy classifier on gmm-ring (6 classes):
    conditional and guided samples of class k fall mostly in component k (chance is 1/6)."""
    import argparse

    from unidm.commands.guidance import generate_options, guided_denoiser_for

    model_run = _train(_small("gmm-ring-cond", hidden=64, depth=2), tmp_path / "cond", 400)
    clf_dir = tmp_path / "clf"
    _train(_small("gmm-ring-classifier", hidden=64, depth=2), clf_dir, 200)
    oracle = model_run.data.meta["oracle"]
    k, n = 2, 300

    def frac(denoiser, w_label):
        x = model_run.model.generate(n, seeds=range(n), steps=12, class_labels=k, denoiser=denoiser)
        return float((oracle.responsibilities(x.double(), 0.0).argmax(1) == k).double().mean()), w_label

    results = [frac(None, "conditional")]
    for guidance in ("cfg", "classifier"):
        D = guided_denoiser_for(model_run, guidance, 3.0, str(clf_dir))
        results.append(frac(D, f"{guidance} w=3"))
    for value, label in results:
        assert value > 0.8, (label, results)
    uncond = model_run.model.generate(n, seeds=range(n), steps=12)  # null label: spread over the ring
    assert float((oracle.responsibilities(uncond.double(), 0.0).argmax(1) == k).double().mean()) < 0.5
    args = argparse.Namespace(class_label=k, guidance="classifier", scale=2.0, classifier=None, sigma_lo=0.0,
                              sigma_hi=math.inf, rescale=0.0)
    with pytest.raises(ValueError, match="--classifier"):
        generate_options(model_run, args)
    with pytest.raises(ValueError, match="out of range"):
        generate_options(model_run, argparse.Namespace(class_label=9, guidance=None, classifier=None))


def test_classifier_from_config_builds_both_architectures_and_refuses_unlabelled_data():
    from unidm.data import Dataset
    from unidm.methods.classifier import ClassifierConvNet, NoisyClassifier

    images = Dataset("imgs", torch.randn(20, 1, 8, 8), torch.randn(4, 1, 8, 8), kind="image",
                     train_labels=torch.arange(20) % 10, num_classes=10)
    clf = NoisyClassifier.from_config({"channels": [8, 16]}, {}, images)
    assert isinstance(clf.net, ClassifierConvNet) and clf.data_shape == (1, 8, 8)
    assert clf(images.train[:5], torch.full((5,), 0.3)).shape == (5, 10)
    assert clf.loss(images.batch(torch.arange(6))).shape == (6,)
    grad = ClassifierGuidance(lambda x, s, **c: x, clf, 2.0)(images.train[:3], torch.full((3,), 1.0),
                                                              class_labels=torch.tensor([1, 2, 3]))
    assert grad.shape == (3, 1, 8, 8) and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="labelled"):
        NoisyClassifier.from_config({}, {}, Dataset("plain", torch.randn(8, 2), torch.randn(2, 2)))
    with pytest.raises(ValueError, match="model.arch"):
        NoisyClassifier.from_config({"arch": "unet"}, {}, images)
    with pytest.raises(ValueError, match="method option"):
        NoisyClassifier.from_config({}, {"label_dropout": 0.1}, images)


def test_classifier_preconditioning_keeps_the_guidance_term_bounded_at_large_sigma():
    """With logits = log_prior + c_out(sigma) F(c_in x, c_noise), sigma^2 grad_x log p = O(sigma_data) at every
    sigma (as for the exact posterior of a mixture); without it the term grows like sigma."""
    from unidm.methods.classifier import ClassifierMLP, NoisyClassifier

    torch.manual_seed(0)
    net = ClassifierMLP(dim=2, num_classes=4, hidden=32, depth=2)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 4
    sizes = {}
    for precondition in (True, False):
        clf = NoisyClassifier(net, num_classes=4, sigma_data=0.5, precondition=precondition)
        for sigma in (1.0, 1000.0):
            x = sigma * torch.randn(64, 2, generator=g)
            term = ClassifierGuidance(lambda x, s, **c: torch.zeros_like(x), clf, 1.0)(
                x, torch.full((64,), sigma), class_labels=y)
            sizes[precondition, sigma] = float(term.norm(dim=1).mean())
    assert sizes[True, 1000.0] < 2 * sizes[True, 1.0] + 0.1
    assert sizes[False, 1000.0] > 50 * sizes[True, 1000.0]
    exact = MixtureClassOracle(ring(k=4))  # the exact term is bounded too: sigma^2 grad -> mu_y - E[mu | x]
    x = 1000.0 * torch.randn(64, 2, generator=g, dtype=torch.float64)
    term = ClassifierGuidance(lambda x, s, **c: torch.zeros_like(x), exact.logits, 1.0)(x, 1000.0, class_labels=y)
    assert float(term.norm(dim=1).max()) < 2 * 1.5 + 1e-6


@pytest.mark.parametrize("w", [0.0, 1.0, 2.0, 3.5])
def test_autoguidance_of_gaussians_matches_the_closed_form_flow(w):
    # D_w = D_bad + w (D_good - D_bad) for zero-mean Gaussians is k(sigma) x with 1 - k = (1 - w)(1 - k_bad) +
    # w (1 - k_good), so the PF-ODE dx/dsigma = (1 - k) x / sigma maps x(S) to x(0) times
    # sqrt((v_bad / (v_bad + S^2))^(1 - w) (v_good / (v_good + S^2))^w)
    from unidm.samplers import karras_grid, sample

    one = torch.ones(1, dtype=torch.float64)
    v_good, v_bad, S = 0.5, 2.0, 80.0
    D = AutoGuidance(GaussianOracle(0 * one, v_good * one), GaussianOracle(0 * one, v_bad * one), scale=w)
    x = torch.tensor([[1.0], [-3.0]], dtype=torch.float64) * S
    ratio = math.sqrt((v_bad / (v_bad + S**2)) ** (1 - w) * (v_good / (v_good + S**2)) ** w)
    errs = []
    for steps in (200, 400):
        out = sample(D, x, karras_grid(steps, 1e-4, S), "heun")
        errs.append(float((out / x / ratio - 1).abs().max()))
    assert errs[1] < 1e-3
    assert 1.7 < math.log2(errs[0] / errs[1]) < 2.3  # Heun's order 2 towards the closed form


def test_autoguidance_weight_one_is_the_good_model_and_the_interval_switches_it_off():
    one = torch.ones(2, dtype=torch.float64)
    good, bad = GaussianOracle(0 * one, one), GaussianOracle(one, 3 * one)
    calls = []

    def counting_bad(x, sigma, **cond):
        calls.append(len(x))
        return bad(x, sigma)

    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 0.5, 2.0, 9.0], dtype=torch.float64)
    torch.testing.assert_close(AutoGuidance(good, counting_bad, 1.0)(x, sigma), good(x, sigma))
    assert calls == []  # w = 1: one pass of the good model only
    out = AutoGuidance(good, counting_bad, 2.5, sigma_lo=0.3, sigma_hi=3.0)(x, sigma)
    assert calls == [2]  # the bad model sees only the rows inside the interval
    inside = torch.tensor([False, True, True, False])
    torch.testing.assert_close(out[~inside], good(x[~inside], sigma[~inside]))
    expect = bad(x[inside], sigma[inside]) + 2.5 * (good(x[inside], sigma[inside]) - bad(x[inside], sigma[inside]))
    torch.testing.assert_close(out[inside], expect)


def test_autoguidance_from_the_command_line_options_with_an_early_checkpoint(tmp_path):
    """An unconditional tiny EDM model on gmm-ring guided by its own step-100 EMA checkpoint: w = 1 is the model
    itself, bit for bit; w = 2 moves samples towards higher true density (the weak model's extra blur is
    extrapolated away)."""
    import argparse

    from unidm.commands.guidance import generate_options
    from unidm.config import RunConfig
    from unidm.run import build_data, build_model, load_run
    from unidm.train import train

    cfg = RunConfig.from_dict(_small("gmm-ring-edm", hidden=64, depth=2))
    cfg.train.steps, cfg.train.progress, cfg.train.device = 400, False, "cpu"
    cfg.train.ckpt_every, cfg.train.log_every, cfg.train.keep_last = 100, 100, 5
    data = build_data(cfg)
    train(build_model(cfg, data), data, cfg.train, str(tmp_path / "run"), config_dict=cfg.to_dict(),
          log=lambda s: None)
    run = load_run(str(tmp_path / "run"))
    oracle, n = run.data.meta["oracle"], 2000

    def ns(**kw):
        base = dict(class_label=None, guidance="auto", guide=str(tmp_path / "run" / "state" / "step_00000100"),
                    scale=1.0, classifier=None, sigma_lo=0.0, sigma_hi=math.inf, rescale=0.0)
        return argparse.Namespace(**{**base, **kw})

    def draw(**opts):
        return run.model.generate(n, seeds=range(n), steps=16, **opts)

    plain = draw()
    assert torch.equal(draw(**generate_options(run, ns(scale=1.0))), plain)
    guided = draw(**generate_options(run, ns(scale=2.0)))
    nll = lambda x: float(-oracle.log_prob(x.double()).mean())  # noqa: E731
    assert nll(guided) < nll(plain) - 0.3, (nll(guided), nll(plain))
    with pytest.raises(ValueError, match="--guide"):
        generate_options(run, ns(guide=None))
    with pytest.raises(ValueError, match="neither a run folder"):
        generate_options(run, ns(guide=str(tmp_path)))
    with pytest.raises(ValueError, match="--guidance auto"):
        generate_options(run, ns(guidance=None))
