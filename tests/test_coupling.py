"""Minibatch couplings (exact OT, Sinkhorn, Schrödinger bridge, class-aware), the fixed-pairs loss, and the refusal
of Tweedie-based tools for runs trained with a coupling."""

import math

import pytest
import torch

from unidm.losses import DenoisingLoss
from unidm.losses.coupling import (COUPLINGS, _cost, couple, coupling_indices, exact_ot_indices, plan_rows, sb_bridge,
                                   sinkhorn_plan, transport_cost)
from unidm.methods import GaussianDiffusion
from unidm.nn import build_network
from unidm.processes import RectifiedFlow, UniformT
from unidm.samplers import karras_grid, sample


def _batch(n, d=2, seed=0, shift=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5 + shift, g


def test_exact_ot_of_a_permuted_copy_is_the_permutation():
    x, g = _batch(50, d=3)
    perm = torch.randperm(50, generator=g)
    idx = exact_ot_indices(x, x[perm])
    assert torch.equal(x[perm][idx], x)  # every point goes back to itself: cost 0, the unique optimum
    assert torch.equal(perm[idx], torch.arange(50))


def test_minibatch_ot_lowers_the_transport_cost():
    """Never more than the pairs as drawn (the identity is a feasible assignment), and far less in expectation."""
    g = torch.Generator().manual_seed(1)
    ind, ot = [], []
    for _ in range(40):
        x0 = torch.randn(64, 2, generator=g, dtype=torch.float64) + torch.tensor([2.0, 0.0], dtype=torch.float64)
        eps = torch.randn(64, 2, generator=g, dtype=torch.float64)
        a, b = transport_cost(x0, eps).mean(), transport_cost(*couple(x0, eps, "ot")).mean()
        assert b <= a + 1e-12
        ind.append(a), ot.append(b)
    ind, ot = torch.stack(ind), torch.stack(ot)
    # independent: E|x0 - eps|^2 = |m|^2 + 2 d = 8; the OT cost between N(m, I) and N(0, I) is |m|^2 = 4 (+ the
    # minibatch bias)
    assert abs(float(ind.mean()) - 8.0) < 4 * float(ind.std()) / math.sqrt(len(ind)) + 0.1
    assert float(ot.mean()) < 0.75 * float(ind.mean())


def test_sinkhorn_plan_tends_to_exact_ot():
    """The entropic plan's cost decreases to the OT cost within the bound 0 <= <P_reg, C> - OT <= reg log n (the
    entropic objective of P_reg is at most that of the OT permutation, whose entropy is log n, and H <= 2 log n)."""
    n = 30
    x0, g = _batch(n, seed=2, shift=1.0)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    C = _cost(x0, eps)
    ot = float(transport_cost(x0, eps[exact_ot_indices(x0, eps)]).mean())
    gaps = []
    for reg in [3.0, 1.0, 0.3, 0.1]:
        P = sinkhorn_plan(C, reg, tol=1e-6)
        assert float((P.sum(1) - 1 / n).abs().sum()) < 1e-6
        torch.testing.assert_close(P.sum(0), torch.full((n,), 1 / n, dtype=torch.float64), atol=1e-12, rtol=0)
        gap = float((P * C).sum()) - ot
        assert -1e-6 <= gap <= reg * math.log(n) + 1e-6
        gaps.append(gap)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))  # the plan's cost decreases with reg
    assert gaps[-1] < 0.05 * gaps[0]


@pytest.mark.parametrize("kind", ["ot-class", "sinkhorn-class", "sb-class"])
def test_class_aware_coupling_stays_within_a_class(kind):
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (30,), generator=g)
    x0 = torch.randn(30, 2, generator=g, dtype=torch.float64) + 4 * labels[:, None].double()
    eps = torch.randn(30, 2, generator=g, dtype=torch.float64)
    idx = coupling_indices(x0, eps, kind, reg=2.0, labels=labels, generator=g)
    assert torch.equal(labels[idx], labels)
    plain = coupling_indices(x0, eps, kind.removesuffix("-class"), reg=2.0, generator=g)
    assert not torch.equal(labels[plain], labels)  # without the classes the pairs do cross them
    with pytest.raises(ValueError, match="needs labels"):
        coupling_indices(x0, eps, kind)


@pytest.mark.parametrize("kind", [k for k in COUPLINGS if not k.endswith("-class")])
def test_coupling_and_loss_are_deterministic_for_a_seed(kind):
    x0, _ = _batch(16, seed=4)
    eps = torch.randn(16, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    a = coupling_indices(x0, eps, kind, reg=1.0, generator=torch.Generator().manual_seed(5))
    b = coupling_indices(x0, eps, kind, reg=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    model = _model(coupling=kind, coupling_reg=1.0)
    batch = {"x": x0.float()}
    la = model.loss(batch, torch.Generator().manual_seed(6))
    lb = model.loss(batch, torch.Generator().manual_seed(6))
    assert torch.equal(la, lb)
    if kind != "independent":
        assert not torch.equal(la, model.loss(batch, torch.Generator().manual_seed(7)))


def test_sinkhorn_pairs_follow_the_plan():
    """Row i draws j with probability n P_ij (chi-square over many draws of a 3x3 plan's rows)."""
    x0 = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    eps = torch.tensor([[0.2], [1.1], [1.7]], dtype=torch.float64)
    P = 3 * sinkhorn_plan(_cost(x0, eps), 0.5)
    n = 4000
    idx = plan_rows(P.repeat(n, 1), torch.Generator().manual_seed(8)).reshape(n, 3)
    counts = torch.stack([(idx == j).sum(0) for j in range(3)], dim=1).double()  # [row, j]
    chi2 = float(((counts - n * P) ** 2 / (n * P)).sum())
    assert chi2 < 30.0  # 6 degrees of freedom: p < 1e-4 above 30
    a = coupling_indices(x0, eps, "sinkhorn", reg=0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, idx[0])  # the coupling draws its pairs this way


def test_sb_bridge_is_tong_et_al_in_sigma_space():
    """x = x_t / (1 - t) and target = x_t - t u_t for SB-CFM's bridge point and velocity (Tong et al. 2023)."""
    g = torch.Generator().manual_seed(10)
    x0, eps, z = (torch.randn(16, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.98 + 0.01
    s = 0.7
    tc = t[:, None]
    mu_t = (1 - tc) * x0 + tc * eps
    x_t = mu_t + s * torch.sqrt(tc * (1 - tc)) * z
    u_t = (eps - x0) + (1 - 2 * tc) / (2 * tc * (1 - tc)) * (x_t - mu_t)
    x, target = sb_bridge(x0, eps, t / (1 - t), s, z)
    torch.testing.assert_close(x, x_t / (1 - tc), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(target, x_t - tc * u_t, rtol=1e-12, atol=1e-12)


def _model(**kw):
    net = build_network("mlp", {"dim": 2, "in_channels": 2, "image_size": 2, "num_classes": 0}, hidden=16, depth=1)
    return GaussianDiffusion(net, process=kw.pop("process", "flow"), parameterization="velocity",
                             noise_levels="logit-normal", weighting="velocity", **kw)


def test_fixed_pairs_loss_uses_the_batch_noise():
    # the exact denoiser of the deterministic pair x0 = 2 eps + 1: x = 2 eps + 1 + sigma eps
    exact = lambda x, sigma: 1 + 2 * (x - 1) / (2 + sigma[:, None])  # noqa: E731
    loss = DenoisingLoss(RectifiedFlow(), UniformT(), "x0")
    eps = torch.randn(64, 2, dtype=torch.float64)
    values = loss(exact, 2 * eps + 1, torch.Generator().manual_seed(0), noise=eps)
    assert float(values.abs().max()) < 1e-20
    assert float(loss(exact, 2 * eps + 1, torch.Generator().manual_seed(0)).mean()) > 1e-3  # fresh noise: not 0
    # through the family: the batch's noise and sigma drawn as before, from the same generator
    model = _model(fixed_pairs=True)
    x0, noise = torch.randn(8, 2), torch.randn(8, 2)
    got = model.loss({"x": x0, "noise": noise}, torch.Generator().manual_seed(1))
    sigma = model.loss_fn.noise_levels.draw(model.process, 8, torch.Generator().manual_seed(1), x0.device, x0.dtype)
    want = model.loss_fn.at_sigma(model.denoiser, x0, sigma, noise)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="noise"):
        _model().loss({"x": x0, "noise": noise})
    with pytest.raises(ValueError, match="noise"):
        model.loss({"x": x0})


@pytest.mark.parametrize("kw", [{"coupling": "ot"}, {"coupling": "sb"}, {"fixed_pairs": True}])
def test_coupled_runs_refuse_tweedie_tools(kw):
    model = _model(**kw)
    reason = "coupling 'ot'" if kw.get("coupling") == "ot" else ("coupling 'sb'" if "coupling" in kw else "pairs")
    for sampler, opts in [("ddpm", {}), ("euler_maruyama", {}), ("pc", {}), ("dpmpp_2m_sde", {}),
                          ("ddim", {"eta": 1.0}), ("heun", {"s_churn": 10.0})]:
        with pytest.raises(ValueError, match=reason) as e:
            model.check_sampling(sampler, 4, None, opts)
        assert "\n" not in str(e.value) and "Tweedie" in str(e.value)
    with pytest.raises(ValueError, match=reason):  # the sampler entry point on the bare denoiser
        sample(model.denoiser, torch.randn(2, 2), karras_grid(4, 0.01, 10.0), "ddpm")
    with pytest.raises(ValueError, match="Gaussian transition kernel"):
        model.check_sampling("ddim", 4, None, {"variance": "analytic", "gamma": lambda s: 1.0})
    for sampler in ["heun", "euler", "dpmpp_2m", "adaptive", "ddim"]:  # deterministic samplers stay
        model.check_sampling(sampler, 4, None, {})
    assert model.generate(3, seeds=[0, 1, 2], sampler="heun", steps=3).shape == (3, 2)
    assert model.likelihood(torch.randn(3, 2), rtol=1e-3, atol=1e-3).kind == "ode"
    from types import SimpleNamespace

    from unidm.commands.guidance import guided_denoiser_for

    with pytest.raises(ValueError, match="Tweedie"):  # classifier guidance adds sigma^2 grad log p(y | x)
        guided_denoiser_for(SimpleNamespace(model=model, path="RUN"), "classifier", 2.0, classifier_dir="CLF")
    # DDPM's ELBO is a Tweedie tool too
    vp = _model(process="vp-discrete", **kw)
    assert list(vp.likelihood_methods()) == ["ode"]
    with pytest.raises(ValueError, match="coupling"):
        vp.likelihood(torch.randn(2, 2), method="elbo")
    assert "elbo" in _model(process="vp-discrete").likelihood_methods()


def test_coupling_option_errors():
    with pytest.raises(ValueError, match="valid: independent, ot, ot-class"):
        _model(coupling="optimal")
    with pytest.raises(ValueError, match="coupling_reg"):
        _model(coupling="sinkhorn", coupling_reg=0.0)
    with pytest.raises(ValueError, match="non-Gaussian kernel"):
        _model(process="pfgmpp", process_options={"aug_dim": 4}, coupling="ot")
    with pytest.raises(ValueError, match="the batch has no labels"):
        _model(coupling="ot-class").loss({"x": torch.randn(4, 2)})
    from unidm.data import build_dataset

    with pytest.raises(ValueError, match="needs labels, but dataset 'moons' has none; valid without labels"):
        GaussianDiffusion.from_config({"hidden": 8, "depth": 1}, {"process": "flow", "coupling": "sb-class"},
                                      build_dataset("moons", n_train=100, n_test=10))
    model = _model(coupling="ot")  # a coupled run's process is marked; a fresh one of the same kind is not
    assert not model.process.gaussian_kernel and _model().process.gaussian_kernel
