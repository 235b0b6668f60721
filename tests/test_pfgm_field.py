"""Original PFGM (Xu et al. 2022): the field objective, the hemisphere prior and the backward ODE in z, in float64
where the mathematics is checked."""

from __future__ import annotations

import math

import pytest
import torch

from unidm.methods.pfgm import (PoissonFlow, _drift, field_grid, field_target, hemisphere_prior, perturb_augmented,
                                solve_field_ode)
from unidm.nn import MLP
from unidm.oracles import poisson_field, sphere_area
from unidm.rng import seed_generators

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids oversubscription on a shared machine (restored after each test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(**kw) -> PoissonFlow:
    torch.manual_seed(0)
    return PoissonFlow(MLP(dim=3, hidden=64, depth=2), data_shape=(2,), z_max=20.0, z_min=0.002, **kw)


@pytest.mark.parametrize("n", [2, 16])
def test_field_target_is_the_papers_normalised_poisson_field_of_the_reference_batch(n):
    g = torch.Generator().manual_seed(n)
    ref = torch.randn(40, n, generator=g, dtype=F64)
    x, z = perturb_augmented(ref[:10], M=200.0, sigma=0.01, tau=0.03, generator=g)
    gamma = 0.7
    x_aug = torch.cat([x, z[:, None]], 1)
    # the paper: Ê = c(x~) sum_j (x~ - y~_j) / |x~ - y~_j|^(N+1), c = 1 / sum_j |x~ - y~_j|^-(N+1); poisson_field is
    # (1 / S_N) (1 / K) sum_j (...), so Ê = poisson_field * S_N * K * c
    dist = torch.cdist(x_aug, torch.nn.functional.pad(ref, (0, 1)))
    c = 1 / dist.pow(-(n + 1)).sum(1, keepdim=True)
    e = poisson_field(x_aug, ref) * sphere_area(n + 1) * len(ref) * c
    expected = -math.sqrt(n) * e / (e.norm(dim=1, keepdim=True) + gamma)
    torch.testing.assert_close(field_target(x, z, ref, gamma), expected, rtol=1e-9, atol=1e-12)


def test_perturbation_follows_algorithm_2():
    # z = |eps_z| (1 + tau)^m and |x - y| = |eps_x| (1 + tau)^m: log(|x - y| / z) does not depend on m, and
    # log z = log|eps_z| + m log(1 + tau) with m ~ U[0, M]
    y = torch.zeros(20000, 3, dtype=F64)
    x, z = perturb_augmented(y, M=100.0, sigma=0.01, tau=0.03, generator=torch.Generator().manual_seed(0))
    log_half_normal_mean = math.log(0.01) + (-math.log(2) - 0.5772156649) / 2  # E log|eps_z|
    expected = log_half_normal_mean + 50 * math.log1p(0.03)
    assert abs(float(torch.log(z).mean()) - expected) < 0.03
    assert float((z > 0).all()) and x.shape == y.shape


def test_exact_field_ode_carries_the_hemisphere_prior_onto_the_points():
    pts = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=F64)

    def field(x, z):  # the exact field (direction), oracle instead of a network
        e = poisson_field(torch.cat([x, z[:, None]], 1), pts, normalize=True)
        return -e[:, :-1], -e[:, -1]

    x = hemisphere_prior((500, 2), 40.0, seed_generators(range(500)), F64)
    for method, steps in [("rk4", 100), ("rk45", 1)]:
        y, _ = solve_field_ode(field, x, field_grid("log-z", steps, 1e-5, 40.0), method)
        d = torch.cdist(y, pts)
        near = d.min(1).values
        # measured: median 1.7e-5, max 1.4e-3 (the marginal at z_min is heavy-tailed: P(|x - y| > eps) ~ z_min / eps)
        assert float(near.median()) < 1e-4 and float(near.max()) < 1e-2
        # Gauss's law: each of the 5 equal charges receives a fifth of the flux (measured 112, 106, 95, 95, 92)
        counts = torch.bincount(d.argmin(1), minlength=5).double() / 500
        assert float((counts - 0.2).abs().max()) < 0.07


def test_hemisphere_prior_radius_law_and_per_seed_draws():
    x = hemisphere_prior((20000, 2), 3.0, torch.Generator().manual_seed(0), F64)
    # density ∝ (|x|^2 + z^2)^(-3/2) in 2-D: P(|x| > k z) = (1 + k^2)^(-1/2)
    for k in (0.5, 2.0, 10.0):
        assert abs(float((x.norm(dim=1) > 3 * k).double().mean()) - (1 + k * k) ** -0.5) < 0.01
    a = hemisphere_prior((3, 2), 3.0, seed_generators([4, 5, 6]))
    assert torch.equal(a[1:2], hemisphere_prior((1, 2), 3.0, seed_generators([5])))
    clipped = hemisphere_prior((1000, 2), 3.0, torch.Generator().manual_seed(0), upper_norm=10.0)
    assert float(clipped.norm(dim=1).max()) <= 10.0 + 1e-5


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    data = torch.cat([torch.randn(512, 2) * 0.1 + torch.tensor([1.0, 0.0]),
                      torch.randn(512, 2) * 0.1 - torch.tensor([1.0, 0.0])])
    model = _model(M=257.0, gamma=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def held_out() -> float:
        with torch.no_grad():
            return float(model.loss({"x": data}, torch.Generator().manual_seed(99)).mean())

    before = held_out()
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(len(data), (256,), generator=g)
        loss = model.loss({"x": data[idx]}, g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out()
    assert after < 0.5 * before, (before, after)


def test_generate_per_seed_every_sampler():
    model = _model(upper_norm=100.0).eval()
    model.data_radius.fill_(2.0)
    for sampler in ("euler", "heun", "midpoint", "rk4", "rk45"):
        x = model.generate(3, seeds=[5, 6, 7], sampler=sampler, steps=4)
        alone = model.generate(1, seeds=[6], sampler=sampler, steps=4)
        torch.testing.assert_close(alone[0], x[1], rtol=1e-6, atol=1e-6)
        assert torch.isfinite(x).all() and not torch.equal(x[0], x[2])


def test_denoiser_view_is_the_same_ode():
    # D(x, sigma) = x - sigma v_x / v_z makes (x - D) / sigma = v_x / v_z = dx/dz, i.e. x - D = dx/dt' at t' = log z
    model = _model().double().eval()
    model.data_radius.fill_(2.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p, dtype=F64))
    x = torch.randn(4, 2, dtype=F64) * 5
    D = model.as_denoiser()
    assert D.process.aug_dim == 1 and not D.process.gaussian_kernel
    for z in (20.0, 1.0, 0.01):
        with torch.no_grad():
            drift = _drift(model.field, **model.guard())(torch.tensor(math.log(z), dtype=F64), x)
            torch.testing.assert_close(x - D(x, torch.full((4,), z, dtype=F64)), drift)


def test_bad_input_is_refused_with_one_line():
    model = _model(ref_size=16)
    batch = {"x": torch.randn(8, 2)}
    with pytest.raises(ValueError, match="smaller than method.ref_size=16") as e:
        model.loss(batch)
    assert "\n" not in str(e.value)
    model.reference_data = torch.randn(100, 2)
    assert model.loss(batch, torch.Generator().manual_seed(0)).shape == (8,)  # the batch + 8 training points
    with pytest.raises(ValueError, match="ref_size=4 is smaller than the batch of 8"):
        _model(ref_size=4).loss(batch)
    for key, value in [("gamma", -1.0), ("gamma", 0.0), ("gamma", float("nan")), ("M", 0), ("M", True),
                       ("tau", -0.1), ("sigma", "x"), ("upper_norm", -1.0)]:
        with pytest.raises(ValueError, match=f"method.{key} must be") as e:
            _model(**{key: value})
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="ref_size must be a whole number"):
        _model(ref_size=0)
    with pytest.raises(ValueError, match="z_min"):
        PoissonFlow(MLP(dim=3), data_shape=(2,), z_min=5.0, z_max=1.0)
    with pytest.raises(ValueError, match="unknown sampler 'edm' for family 'pfgm'"):
        _model().generate(2, sampler="edm")
    with pytest.raises(ValueError, match="grid for family 'pfgm'"):
        _model().generate(2, grid="uniform-t")
