"""Straightness and transport cost (Liu et al. 2022) against closed forms, the exact rectified flows between two
Gaussians (1-RF and its reflow), and the figures ``unidm eval`` reports for a flow run trained with a coupling."""

import json
import math

import torch

from unidm.cli import main
from unidm.evaluation.straightness import (coupling_straightness, flow_report, flow_velocity, is_linear_path,
                                           ode_straightness, straightness)
from unidm.methods import GaussianDiffusion
from unidm.nn import build_network
from unidm.oracles import GaussianOracle, GaussianRectifiedFlow
from unidm.processes import RectifiedFlow
from unidm.samplers import karras_grid, sample

D64 = torch.float64


def _mu(d=3):
    return torch.tensor([1.0, -2.0, 0.5], dtype=D64)[:d]


def test_deterministic_linear_coupling_with_its_exact_velocity_is_straight():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(200, 3, generator=g, dtype=D64)  # the prior end (t = 1)
    rf2 = GaussianRectifiedFlow(_mu(), 0.4, k=2)
    x0 = rf2.transport(x1)  # the deterministic straight coupling (x0 = mu + c x1)
    assert float(coupling_straightness(rf2.velocity, x0, x1).abs().max()) < 1e-20
    traj = ode_straightness(rf2.velocity, x1, steps=7)
    assert float(traj.straightness.abs().max()) < 1e-20
    torch.testing.assert_close(traj.x0, x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(traj.transport_cost, ((x1 - x0) ** 2).sum(1), rtol=1e-12, atol=1e-12)
    # the same through its denoiser form and flow_velocity, whose t is clamped to the flow's [t_min, 0.999]: the first
    # step sees v(., 0.999), off by O(1e-3) from v(., 1)
    traj_d = straightness(flow_velocity(rf2, RectifiedFlow()), x1, steps=7)
    assert float(traj_d.straightness.abs().max()) < 1e-5


def _conditional_variance(t: torch.Tensor, c: float) -> torch.Tensor:
    """Var(x1 - x0 | x_t) per dim for x0 ~ N(mu, c^2), x1 ~ N(0, 1) independent, x_t = (1 - t) x0 + t x1."""
    var_xt = (1 - t) ** 2 * c**2 + t**2
    cov = t - (1 - t) * c**2
    return (1 + c**2) - cov**2 / var_xt


def test_independent_gaussian_coupling_straightness_closed_form():
    """E int |(x1 - x0) - v*(x_t, t)|^2 dt = int E Var(x1 - x0 | x_t) dt = d c pi / 2 for the independent coupling,
    v* its exact (1-RF) velocity: Monte Carlo over pairs vs quadrature of the closed-form conditional variance."""
    c, d, n, steps = 0.6, 3, 20_000, 32
    rf = GaussianRectifiedFlow(_mu(), c)
    g = torch.Generator().manual_seed(1)
    x0 = _mu() + c * torch.randn(n, d, generator=g, dtype=D64)
    x1 = torch.randn(n, d, generator=g, dtype=D64)
    per_pair = coupling_straightness(rf.velocity, x0, x1, steps=steps)
    t_mid = (torch.arange(steps, dtype=D64) + 0.5) / steps  # the estimator's own levels
    quad = d * float(_conditional_variance(t_mid, c).mean())
    stderr = float(per_pair.std()) / math.sqrt(n)
    assert abs(float(per_pair.mean()) - quad) < 4 * stderr
    t_fine = (torch.arange(200_000, dtype=D64) + 0.5) / 200_000
    assert abs(d * float(_conditional_variance(t_fine, c).mean()) - rf.coupling_straightness()) < 1e-6


def test_rf_velocity_is_the_gaussian_ode_velocity():
    """The 1-RF velocity (Liu's formula, converted) is the flow-process ODE velocity of the exact Gaussian denoiser,
    its denoiser form is GaussianOracle(mu, c^2), and its paths solve its ODE and end at mu + c z."""
    c = 1.7
    rf = GaussianRectifiedFlow(_mu(), c)
    gauss = GaussianOracle(_mu(), torch.full((3,), c**2, dtype=D64))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 3, generator=g, dtype=D64) * 2
    t = torch.rand(64, generator=g, dtype=D64) * 0.98 + 0.01
    torch.testing.assert_close(rf.velocity(x, t), flow_velocity(gauss)(x, t), rtol=1e-10, atol=1e-10)
    sigma = t / (1 - t)
    torch.testing.assert_close(rf(x, sigma), gauss(x, sigma), rtol=1e-10, atol=1e-10)
    z = torch.randn(64, 3, generator=g, dtype=D64)
    h = 1e-6  # the path solves dx_t/dt = v(x_t, t)
    fd = (rf.path(z, t + h) - rf.path(z, t - h)) / (2 * h)
    torch.testing.assert_close(fd, rf.velocity(rf.path(z, t), t), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rf.path(z, torch.ones(64, dtype=D64)), z)
    torch.testing.assert_close(rf.path(z, torch.zeros(64, dtype=D64)), rf.transport(z))
    # the Gaussian oracle's exact probability-flow map from sigma-space t = 0.999 lands on the same point
    t_top = torch.full((64,), 0.999, dtype=D64)
    start = rf.path(z, t_top) / (1 - t_top[:, None])
    torch.testing.assert_close(gauss.ode_solution(start, t_top / (1 - t_top), 0.0), rf.transport(z))


def test_one_rf_paths_are_curved():
    """Along its own ODE the 1-RF is curved for every c (c = 1 included: the marginal std sqrt(t^2 + (1 - t)^2)
    dips in the middle), with straightness d c (2 - pi / 2); the Euler estimate converges to it."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4000, 3, generator=g, dtype=D64)
    for c in [0.5, 1.0, 2.0]:
        rf = GaussianRectifiedFlow(_mu(), c)
        r = ode_straightness(rf.velocity, z, steps=400)
        exact = rf.straightness()
        assert exact > 0.4 * c
        # per path the straightness is |z|^2 int (s' - (c - 1))^2: a Monte Carlo mean over z, and Euler's O(1/steps)
        stderr = float(r.straightness.std()) / math.sqrt(len(z))
        assert abs(float(r.straightness.mean()) - exact) < 4 * stderr + 0.01 * exact
        torch.testing.assert_close(r.x0, rf.transport(z), rtol=0, atol=0.02 * c)


def test_one_exact_reflow_is_straight_and_one_step():
    """Reflow of the 1-RF coupling: pairs (z, x0) from an accurate solve of the 1-RF ODE; the k = 2 oracle's
    velocity on their interpolation is the pairs' own x1 - x0 (Liu's mu + (c - 1) z, sign flipped), its ODE is
    straight, and one Euler step reproduces the pairs."""
    c = 2.5
    rf1, rf2 = GaussianRectifiedFlow(_mu(), c), GaussianRectifiedFlow(_mu(), c, k=2)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(256, 3, generator=g, dtype=D64)
    t_top = torch.full((256,), 0.999, dtype=D64)  # start on the exact path at t = 0.999 (sigma = 999)
    start = rf1.path(z, t_top) / (1 - t_top[:, None])
    x0 = sample(rf1, start, karras_grid(64, 1e-6, 999.0), "adaptive", rtol=1e-9, atol=1e-9)  # the parent's ODE
    torch.testing.assert_close(x0, rf1.transport(z), rtol=1e-6, atol=1e-6)
    pairs_v = z - x0  # the reflowed coupling is deterministic: E[x1 - x0 | x_t] is the pair's own chord
    torch.testing.assert_close(-pairs_v, _mu() + (c - 1) * z, rtol=1e-6, atol=1e-6)
    for t in [0.1, 0.5, 0.9]:
        tt = torch.full((256,), t, dtype=D64)
        x_t = (1 - t) * x0 + t * z
        torch.testing.assert_close(rf2.velocity(x_t, tt), pairs_v, rtol=1e-6, atol=1e-6)
    r = ode_straightness(rf2.velocity, z, steps=16)
    assert float(r.straightness.max()) < 1e-20
    one_step = ode_straightness(rf2.velocity, z, steps=1).x0
    torch.testing.assert_close(one_step, rf2.transport(z), rtol=1e-12, atol=1e-12)
    assert float(ode_straightness(rf1.velocity, z, steps=1).x0.sub(rf1.transport(z)).abs().max()) > 0.1


def test_flow_report_reads_the_face():
    net = build_network("mlp", {"dim": 2, "in_channels": 2, "image_size": 2, "num_classes": 0}, hidden=16, depth=1)
    flow = GaussianDiffusion(net, process="flow", parameterization="velocity")
    assert is_linear_path(flow.process)
    rep = flow_report(flow, 50, range(50), steps=8)
    assert set(rep) >= {"straightness", "transport_cost"} and rep["straightness_trajectories"] == 50
    assert math.isfinite(rep["straightness"]) and rep["straightness"] >= 0
    edm = GaussianDiffusion(build_network("mlp", {"dim": 2, "in_channels": 2, "image_size": 2, "num_classes": 0},
                                          hidden=16, depth=1), process="edm")
    assert not is_linear_path(edm.process) and flow_report(edm, 50) == {}


def test_ot_coupling_end_to_end(tmp_path, capsys):
    """``unidm train moons-flow method.coupling=ot`` trains, and ``unidm eval`` reports a straighter flow with a
    lower transport cost than the independent coupling at equal steps and seeds."""
    torch.set_num_threads(1)
    common = ["train.steps=150", "train.batch_size=256", "model.hidden=64", "train.progress=false",
              "train.num_threads=1", "data.n_train=4000", "data.n_test=500", "sample.n=16", "sample.steps=4"]
    reports = {}
    for coupling in ["independent", "ot"]:
        out = tmp_path / coupling
        assert main(["train", "moons-flow", f"method.coupling={coupling}", *common, "--out", str(out)]) == 0
        capsys.readouterr()
        assert main(["eval", str(out), "-n", "500", "--steps", "16", "--json"]) == 0
        reports[coupling] = json.loads(capsys.readouterr().out)
    ind, ot = reports["independent"], reports["ot"]
    assert ot["straightness"] < 0.5 * ind["straightness"]
    assert ot["transport_cost"] < ind["transport_cost"]
