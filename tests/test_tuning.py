"""Tuned sampling grids (issue 22): the tuner finds the known optimum on a Gaussian, beats Karras for every solver,
is deterministic, returns valid grids that generalise to fresh noises, and the CLI stores and uses them."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from unidm.cli import main
from unidm.oracles import GaussianOracle
from unidm.run import load_run
from unidm.samplers import karras_grid, prior_noise, solve
from unidm.data.mixtures import ring
from unidm.guidance import ClassifierFreeGuidance, MixtureClassOracle
from unidm.samplers.tuning import (grid_error, grid_from_logits, logits_from_grid, nfe_of, reference_solve,
                                   steps_for_nfe, tune_grid)

F64 = torch.float64
C = 0.5  # data std
SMAX, SMIN = 80.0, 0.002


def gaussian(dim: int = 2) -> GaussianOracle:
    return GaussianOracle(torch.linspace(-0.5, 0.7, dim, dtype=F64), torch.full((dim,), C * C, dtype=F64))


def test_parameterisation_round_trips_and_is_always_a_grid():
    g = karras_grid(6, SMIN, SMAX)
    z = logits_from_grid(g, SMIN / 10)
    assert torch.allclose(grid_from_logits(z, SMAX, SMIN / 10), g, rtol=1e-12, atol=0)
    for z in (torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(0)) * 5, torch.full((5,), -20.0,
                                                                                                    dtype=F64)):
        g = grid_from_logits(z, SMAX, 1e-4)
        assert float(g[0]) == SMAX and float(g[-1]) == 0 and bool((g[1:] < g[:-1]).all()) and float(g[-2]) > 1e-4


def test_steps_from_nfe():
    assert steps_for_nfe("euler", 5) == 5 and steps_for_nfe("heun", 5) == 3 and steps_for_nfe("heun", 4) == 2
    assert nfe_of("heun", 3) == 5 and nfe_of("dpmpp_2m", 4) == 4


@pytest.mark.parametrize("K,optimizer", [(4, "lbfgs"), (10, "lbfgs"), (4, "nelder-mead")])
def test_euler_optimum_is_uniform_in_atan(K, optimizer):
    # one Euler step sigma -> s on N(mu, c^2) is exact up to cos(atan(sigma/c) - atan(s/c)): the best K-step grid
    # (from sigma_max to 0) is uniform in atan(sigma/c); both optimisers must find it from the Karras start
    t = tune_grid(gaussian(), "euler", K, shape=(2,), sigma_max=SMAX, sigma_min=SMIN, sigma_floor=1e-5, samples=32,
                  init="karras-rho7", optimizer=optimizer, holdout=0)
    theta = torch.atan(t.sigmas / C)
    best = math.atan(SMAX / C) * torch.linspace(1, 0, K + 1, dtype=F64)
    assert float((theta - best).abs().max()) < 1e-3
    # its error is the closed form 1 - cos(theta_max / K)^K times the RMS distance of the exact solution to mu
    assert t.error < 0.7 * t.init_error


@pytest.mark.parametrize("sampler,options", [("euler", {}), ("heun", {}), ("dpmpp_2m", {}), ("unipc", {})])
def test_tuned_beats_karras_on_the_gaussian(sampler, options):
    D = gaussian()
    for K in (4, 6, 10):
        t = tune_grid(D, sampler, K, shape=(2,), sigma_max=SMAX, sigma_min=SMIN, samples=32, options=options,
                      max_evals=150, holdout=0)
        g = t.sigmas
        assert len(g) == t.steps + 1 and float(g[0]) == SMAX and float(g[-1]) == 0 and bool((g[1:] < g[:-1]).all())
        assert t.nfe <= K and t.error < t.fixed_errors["karras-rho7"], (sampler, K, t.error, t.fixed_errors)


def test_deterministic_for_a_seed():
    a = tune_grid(gaussian(), "dpmpp_2m", 5, shape=(2,), sigma_max=SMAX, sigma_min=SMIN, samples=32, seed=3)
    b = tune_grid(gaussian(), "dpmpp_2m", 5, shape=(2,), sigma_max=SMAX, sigma_min=SMIN, samples=32, seed=3)
    assert torch.equal(a.sigmas, b.sigmas) and a.error == b.error


def test_generalises_to_fresh_noises():
    D = gaussian(4)
    t = tune_grid(D, "dpmpp_2m", 6, shape=(4,), sigma_max=SMAX, sigma_min=SMIN, samples=256, seed=0, max_evals=300)
    x = prior_noise((1024, 4), SMAX, generator=torch.Generator().manual_seed(99), dtype=F64)
    ref = solve(D, x, torch.tensor([SMAX, t.sigma_floor, 0.0], dtype=F64), "adaptive", rtol=1e-7, atol=1e-7).x
    held_out = grid_error(D, x, t.sigmas, "dpmpp_2m", ref)
    karras = grid_error(D, x, karras_grid(6, SMIN, SMAX), "dpmpp_2m", ref)
    assert abs(held_out / t.error - 1) < 0.10 and held_out < karras


def test_guided_tuning_fits_the_guided_denoiser():
    # classifier-free guidance (scale 4) on the exact class-conditional ring mixture: the guided ODE is not the
    # unguided one, so the grid tuned through the guided denoiser (with the calibration noises' labels) must beat
    # the grid tuned for the unguided mixture and every fixed grid on the guided problem, on fresh noises
    exact = MixtureClassOracle(ring(k=4))
    G = ClassifierFreeGuidance(exact, scale=4.0, null_label=exact.null_label)
    kw = dict(shape=(2,), sigma_max=SMAX, sigma_min=SMIN, samples=32, seed=0, max_evals=200, holdout=16)
    guided = tune_grid(G, "dpmpp_2m", 6, cond={"class_labels": torch.arange(32) % 4}, **kw)
    unguided = tune_grid(exact, "dpmpp_2m", 6, **kw)
    x = prior_noise((128, 2), SMAX, generator=torch.Generator().manual_seed(5), dtype=F64)
    cond = {"class_labels": torch.arange(128) % 3}
    ref, _ = reference_solve(G, x, SMAX, guided.sigma_floor, cond, 1e-6)
    err = {k: grid_error(G, x, g, "dpmpp_2m", ref, cond=cond) for k, g in
           (("guided", guided.sigmas), ("unguided", unguided.sigmas), ("karras", karras_grid(6, SMIN, SMAX)))}
    assert err["guided"] < 0.5 * min(err["unguided"], err["karras"]), err
    assert guided.error < min(guided.fixed_errors.values())
    assert guided.holdout_error <= guided.holdout_init_error  # the held-out check never returns a worse grid


def test_refuses_stochastic_and_adaptive():
    for s in ("ddpm", "adaptive"):
        with pytest.raises(ValueError, match="deterministic"):
            tune_grid(gaussian(), s, 4, shape=(2,), sigma_max=SMAX, sigma_min=SMIN, samples=4)
    with pytest.raises(ValueError, match="valid: lbfgs, nelder-mead"):
        tune_grid(gaussian(), "euler", 4, shape=(2,), sigma_max=SMAX, sigma_min=SMIN, samples=4, optimizer="adam")


TINY = ["data.n_train=200", "data.n_test=50", "train.steps=5", "train.batch_size=32", "train.progress=false",
        "sample.n=10", "train.num_threads=1"]


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tune") / "run")
    assert main(["train", "moons-edm", "--out", out, *TINY]) == 0
    return out


def test_cli_tune_then_sample(edm_run, tmp_path, capsys):
    assert main(["tune-grid", edm_run, "--nfe", "4", "--sampler", "dpmpp_2m", "--samples", "32"]) == 0
    out = capsys.readouterr().out
    path = os.path.join(edm_run, "tuned_grids", "dpmpp_2m-nfe4.json")
    assert os.path.isfile(path) and "use it with" in out
    stored = json.load(open(path))
    assert stored["sampler"] == "dpmpp_2m" and stored["nfe"] == 4 and len(stored["sigmas"]) == 5
    assert stored["error"] <= stored["init_error"] and len(stored["digest"]) == 16
    npz = str(tmp_path / "s.npz")
    assert main(["sample", edm_run, "-n", "5", "--sampler", "dpmpp_2m", "--steps", "4", "--grid", "tuned",
                 "--out", npz]) == 0
    x = np.load(npz)["samples"]
    run = load_run(edm_run)
    from unidm.run import load_tuned_grid

    y = run.model.generate(5, seeds=range(5), sampler="dpmpp_2m", steps=4, grid="tuned",
                           grid_options={"tuned": load_tuned_grid(run, "dpmpp_2m", 4)})
    assert np.array_equal(x, y.numpy())
    # refusals, one line each: no grid for that sampler / NFE, then other weights
    capsys.readouterr()
    assert main(["sample", edm_run, "-n", "5", "--sampler", "euler", "--steps", "4", "--grid", "tuned",
                 "--out", npz]) == 2
    err = capsys.readouterr().err.strip()
    assert "no grid tuned for sampler 'euler' at 4 NFE" in err and "unidm tune-grid" in err and "\n" not in err
    assert main(["sample", edm_run, "-n", "5", "--sampler", "dpmpp_2m", "--steps", "6", "--grid", "tuned",
                 "--out", npz]) == 2
    assert "no grid tuned for sampler 'dpmpp_2m' at 6 NFE" in capsys.readouterr().err
    stored["digest"] = "0" * 16  # as if the weights had changed since
    with open(path, "w") as f:
        json.dump(stored, f)
    assert main(["sample", edm_run, "-n", "5", "--sampler", "dpmpp_2m", "--steps", "4", "--grid", "tuned",
                 "--out", npz]) == 2
    err = capsys.readouterr().err.strip()
    assert "other weights" in err and "\n" not in err
