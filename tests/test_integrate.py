"""ODE solvers and divergence estimators against closed forms, in float64."""

import math

import pytest
import torch

from unidm.integrate import solve_fixed, solve_ivp
from unidm.integrate.divergence import exact_divergence, hutchinson_divergence, sample_probes

torch.set_num_threads(1)
F64 = torch.float64


def _decay_rates():
    return torch.tensor([[0.5], [1.0], [-0.3], [2.0]], dtype=F64)


@pytest.mark.parametrize("t0,t1", [(0.0, 2.0), (2.0, 0.0), (0.3, -1.1)])
@pytest.mark.parametrize("tol", [1e-4, 1e-7, 1e-10])
def test_linear_ode_meets_tolerance_both_directions(t0, t1, tol):
    a = _decay_rates()
    y0 = torch.ones(4, 3, dtype=F64) * torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    sol = solve_ivp(lambda t, y: -a * y, t0, t1, y0, rtol=tol, atol=tol)
    exact = y0 * torch.exp(-a * (t1 - t0))
    rel = ((sol.y - exact).abs() / (tol + tol * exact.abs())).max()
    assert rel < 20  # the local tolerance accumulated over a few dozen steps
    assert sol.t == t1 and sol.ts[0] == t0 and sol.ts[-1] == t1


def test_time_dependent_ode_tensor_time():
    # y' = cos(t) y  ->  y = y0 exp(sin t - sin t0); t given as 0-d tensors
    y0 = torch.tensor([1.0, 3.0], dtype=F64)
    sol = solve_ivp(lambda t, y: torch.cos(t) * y, torch.tensor(0.5), torch.tensor(4.0), y0, rtol=1e-9, atol=1e-9)
    exact = y0 * math.exp(math.sin(4.0) - math.sin(0.5))
    torch.testing.assert_close(sol.y, exact, rtol=1e-7, atol=1e-7)


def test_nfe_decreases_with_looser_tolerance():
    f = lambda t, y: torch.stack([y[:, 1], -y[:, 0]], 1)  # noqa: E731  harmonic oscillator
    y0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)
    nfes, errs = [], []
    for tol in [1e-9, 1e-6, 1e-3]:
        sol = solve_ivp(f, 0.0, 6.0, y0, rtol=tol, atol=tol)
        exact = torch.stack([torch.sin(torch.tensor(6.0) + torch.tensor([0.0, math.pi / 2])),
                             torch.cos(torch.tensor(6.0) + torch.tensor([0.0, math.pi / 2]))], 1).to(F64)
        nfes.append(sol.nfe)
        errs.append(float((sol.y - exact).abs().max()))
        assert sol.nfe == 2 + 6 * (sol.n_steps + sol.n_rejected)
    assert nfes[0] > nfes[1] > nfes[2]
    assert errs[0] < errs[1] < errs[2]


def test_tuple_state_augmented_log_density():
    # dx/dt = -a x, d(logp)/dt = -div = a * d: the change of variables of a linear flow
    a = _decay_rates()
    x0 = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    logp0 = torch.zeros(4, dtype=F64)

    def f(t, state):
        x, _ = state
        return -a * x, a[:, 0] * x.shape[1]

    sol = solve_ivp(f, 0.0, 1.5, (x0, logp0), rtol=1e-8, atol=1e-8)
    assert isinstance(sol.y, tuple) and len(sol.y) == 2
    x1, logp1 = sol.y
    torch.testing.assert_close(x1, x0 * torch.exp(-1.5 * a), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(logp1, 1.5 * 3 * a[:, 0], rtol=1e-7, atol=1e-7)


def test_first_step_callback_and_max_steps():
    seen = []
    f = lambda t, y: -y  # noqa: E731
    sol = solve_ivp(f, 0.0, 1.0, torch.ones(1, dtype=F64), first_step=1e-3, callback=lambda t, y: seen.append(t))
    assert seen == sol.ts[1:] and len(seen) == sol.n_steps
    with pytest.raises(RuntimeError):
        solve_ivp(f, 0.0, 1.0, torch.ones(1, dtype=F64), rtol=1e-12, atol=1e-12, max_steps=3)


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4)])
def test_fixed_grid_order(method, order):
    f = lambda t, y: torch.cos(t) * y  # noqa: E731
    y0 = torch.ones(1, dtype=F64)
    exact = math.exp(math.sin(1.0))
    errs = []
    for n in (16, 32):
        sol = solve_fixed(f, torch.linspace(0, 1, n + 1, dtype=F64), y0, method=method)
        errs.append(abs(float(sol.y[0]) - exact))
    assert math.log2(errs[0] / errs[1]) == pytest.approx(order, abs=0.25)


def test_exact_divergence_matches_jacobian_trace():
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=F64)
    fn = lambda z: torch.tanh(z @ w) + z**3  # noqa: E731
    x = torch.randn(5, 4, dtype=F64)
    out, div = exact_divergence(fn, x)
    for b in range(5):
        jac = torch.autograd.functional.jacobian(fn, x[b : b + 1]).reshape(4, 4)
        assert float(div[b]) == pytest.approx(float(torch.trace(jac)), rel=1e-12)
    torch.testing.assert_close(out, fn(x))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind):
    torch.manual_seed(1)
    w = torch.randn(6, 6, dtype=F64)
    fn = lambda z: torch.sin(z @ w)  # noqa: E731
    x = torch.randn(3, 6, dtype=F64)
    _, exact = exact_divergence(fn, x)
    k = 2000
    probes = sample_probes(x, k, kind, generator=torch.Generator().manual_seed(2))
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = fn(xg)
        per = torch.stack([(torch.autograd.grad(out, xg, v, retain_graph=True)[0] * v).sum(1) for v in probes])
    _, est = hutchinson_divergence(fn, x, probes)
    torch.testing.assert_close(est, per.mean(0))
    stderr = per.std(0) / math.sqrt(k)
    assert ((est - exact).abs() < 4 * stderr).all()
