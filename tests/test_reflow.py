"""Reflow and distillation: the coupling a flow's ODE defines, its storage, and the commands that train on it.

Against exact oracles: from ``N(0, I)`` to ``N(mu, c^2 I)`` the 1-rectified flow's ODE maps ``z`` to ``mu + c z``
(Liu et al. 2022, the Gaussian case in closed form), and a flow fitted to those pairs is the straight 2-rectified
flow; a mixture's exact ODE carries the prior onto the mixture. Then the storage (deterministic per seed, bitwise
resume after an interruption, another run's pairs refused) and the commands end to end on a tiny moons flow.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest
import torch

from unidm.cli import main
from unidm.data import make_mixture
from unidm.data.pairs import read_manifest, read_pairs
from unidm.evaluation.straightness import coupling_straightness
from unidm.oracles import GaussianOracle, GaussianRectifiedFlow
from unidm.pairs import coupling_pairs, pairs_for_run
from unidm.processes import build_process
from unidm.run import load_run

TINY = ["train.steps=3", "train.batch_size=32", "train.warmup=0", "train.progress=false", "train.num_threads=1",
        "train.ema_decay=0", "data.n_train=400", "data.n_test=200", "model.hidden=16", "model.depth=2", "sample.n=50"]
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # thousands of tiny per-sample solver steps: threads only wait


def _flow():
    return build_process("flow", {"t_max": 1 - 1e-7})  # the ODE starts at t = 1 - 1e-7: x_t = 0.9999999 z


def _folder_digest(path: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), path)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ----------------------------------------------------------------------------------------------- exact oracles
def test_exact_gaussian_ode_pairs_are_mu_plus_c_z_and_their_fitted_flow_is_straight():
    mu, c = torch.tensor([1.0, -2.0], dtype=F64), 0.5
    oracle = GaussianOracle(mu, torch.full((2,), c * c, dtype=F64))  # the 1-RF's denoiser (flow in sigma-space)
    z, x1 = coupling_pairs(oracle, _flow(), range(400), (2,), dtype=F64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x1, mu + c * z, rtol=0, atol=2e-5)
    # the 1-RF's own path is curved: straightness of the independent coupling under its exact velocity is > 0
    rf1 = GaussianRectifiedFlow(mu, c, k=1)
    indep = coupling_straightness(rf1.velocity, mu + c * torch.randn(400, 2, dtype=F64,
                                                                    generator=torch.Generator().manual_seed(1)), z)
    assert float(indep.mean()) > 0.1

    def fitted(x_t, t):  # least squares v(x_t, t) = A x_t + b over the pairs at this t: the reflow fit, per level
        design = torch.cat([x_t, torch.ones(len(x_t), 1, dtype=F64)], 1)
        coef = torch.linalg.lstsq(design, z - x1).solution
        return design @ coef

    s = coupling_straightness(fitted, x1, z, steps=16)
    assert float(s.max()) < 1e-9  # deterministic and straight: the 2-RF has straightness 0
    rf2 = GaussianRectifiedFlow(mu, c, k=2)
    t = torch.full((400,), 0.3, dtype=F64)
    x_t = 0.7 * x1 + 0.3 * z
    torch.testing.assert_close(fitted(x_t, t), rf2.velocity(x_t, t), rtol=0, atol=1e-4)
    torch.testing.assert_close(z - rf2.velocity(z, torch.ones(400, dtype=F64)), mu + c * z)  # one Euler step


def test_mixture_pairs_reproduce_the_parents_marginal():
    oracle = make_mixture("gmm-ring")
    n = 2000
    z, x1 = coupling_pairs(oracle, _flow(), range(n), (2,), dtype=F64, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(x1).all()
    mean, cov = oracle.mean(), oracle.covariance()
    se = (torch.diagonal(cov) / n).sqrt()
    assert ((x1.mean(0) - mean).abs() < 4 * se).all()
    torch.testing.assert_close(torch.cov(x1.T), cov, rtol=0.1, atol=0.05)
    # cross-entropy of the pairs' x1 under the true density = its entropy, up to Monte Carlo error
    logp = oracle.log_prob(x1)
    gap = float(-logp.mean()) - oracle.entropy()
    assert abs(gap) < 4 * float(logp.std()) / math.sqrt(n), gap
    # every x1 lies on the ring, in a component (within 5 of its standard deviations)
    assert float(oracle.log_prob(x1).min()) > float(oracle.log_prob(oracle.mean().reshape(1, 2))) + 1.0


# ------------------------------------------------------------------------------------------------ a tiny run
@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("parent") / "run")
    assert main(["train", "moons-flow", "--out", out, *TINY]) == 0
    return out


def test_pairs_are_per_seed_and_resume_bitwise(parent, tmp_path):
    run = load_run(parent)
    kw = {"seed": 7, "chunk_size": 40, "rtol": 1e-4, "atol": 1e-4, "progress": False}
    one = pairs_for_run(run, str(tmp_path / "one"), 130, **kw)
    assert (one["chunks"], one["done"], one["new"]) == (4, 4, 4)
    part = pairs_for_run(run, str(tmp_path / "two"), 130, max_chunks=2, **kw)  # killed after two chunks
    assert part["done"] == 2
    with pytest.raises(ValueError, match="unfinished: 2 of 4 chunks"):
        read_pairs(str(tmp_path / "two"))
    rest = pairs_for_run(run, str(tmp_path / "two"), 130, **kw)
    assert (rest["new"], rest["done"]) == (2, 4)
    for rank in (1, 0):  # two ranks share the chunks
        pairs_for_run(run, str(tmp_path / "ranks"), 130, rank=rank, world=2, **kw)
    a, b, c = (read_pairs(str(tmp_path / d)) for d in ("one", "two", "ranks"))
    for key in ("z", "x1"):
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    # pair i is seed 7 + i: its noise is the run's prior draw, its x1 the ODE's end from sigma_max z
    seeds = range(7 + 50, 7 + 53)
    torch.testing.assert_close(a["z"][50:53], run.model.process.prior_sample((3, 2), 1.0, seeds=seeds))
    x = run.model.generate(3, seeds=seeds, sampler="adaptive", steps=2, grid="uniform-t", rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a["x1"][50:53], x, rtol=0, atol=1e-5)
    manifest = read_manifest(str(tmp_path / "one"))
    assert manifest["parent"] == os.path.abspath(parent) and manifest["n"] == 130 and manifest["seed"] == 7
    with pytest.raises(ValueError, match="another run"):
        read_pairs(str(tmp_path / "one"), digest="0" * 64)
    with pytest.raises(ValueError, match="other settings"):
        pairs_for_run(run, str(tmp_path / "one"), 130, **{**kw, "seed": 8})


def test_reflow_distill_end_to_end_and_the_parent_untouched(parent, tmp_path, capsys):
    before = _folder_digest(parent)
    rf2, rf3, student = (str(tmp_path / d) for d in ("rf2", "rf3", "student"))
    common = ["--pairs", "96", "--chunk-size", "32", "--rtol", "1e-3", "--atol", "1e-3", "train.steps=3",
              "train.batch_size=32", "sample.n=50"]
    assert main(["reflow", parent, "--out", rf2, "--pairs-only", *common]) == 0
    assert not os.path.exists(os.path.join(rf2, "config.json"))  # stopped after the pairs
    assert main(["reflow", parent, "--out", rf2, *common]) == 0  # the same command goes on to train
    cfg = json.load(open(os.path.join(rf2, "config.json")))
    assert cfg["data"]["name"] == "pairs" and cfg["data"]["parent"] == os.path.abspath(parent)
    assert cfg["data"]["digest"] == read_manifest(os.path.join(rf2, "pairs"))["digest"]
    assert cfg["method"]["fixed_pairs"] is True and cfg["family"] == "gaussian"
    assert cfg["method"]["noise_levels"] == "uniform-t" and "noise_options" not in cfg["method"]  # Liu et al.'s t
    assert main(["reflow", rf2, "--out", rf3, *common]) == 0  # 3-RF
    assert json.load(open(os.path.join(rf3, "config.json")))["data"]["base"] == cfg["data"]["base"]
    assert main(["distill", rf2, "--out", student, "--steps", "1", "--pairs-from", rf3, *common]) == 0
    assert torch.equal(read_pairs(os.path.join(student, "pairs"))["x1"], read_pairs(os.path.join(rf3, "pairs"))["x1"])
    out = str(tmp_path / "s.npz")
    assert main(["sample", student, "--steps", "1", "-n", "5", "--out", out]) == 0
    import numpy as np

    x = np.load(out)["samples"]
    assert x.shape == (5, 2) and np.isfinite(x).all()
    # one Euler step of the student is its denoiser at sigma_max: the map z -> x1 it was trained for
    run = load_run(student)
    z = run.model.process.prior_sample((5, 2), 1.0, seeds=range(5))
    smax = run.model.process.sigma_max
    torch.testing.assert_close(torch.from_numpy(x), run.model.denoiser(z * smax, torch.full((5,), smax)).detach(),
                               rtol=0, atol=1e-4)
    capsys.readouterr()
    # the pairs of another parent are refused; the folder keeps them
    assert main(["reflow", parent, "--out", student, *common]) == 2  # student's pairs are rf2's
    assert "another run" in capsys.readouterr().err
    assert main(["distill", parent, "--out", str(tmp_path / "x"), "--pairs-from", rf3, *common]) == 2
    assert "another run" in capsys.readouterr().err
    assert _folder_digest(parent) == before


def test_non_flow_parent_is_refused_and_left_untouched(tmp_path, capsys):
    parent = str(tmp_path / "pfgmpp")
    assert main(["train", "moons-pfgmpp-d1", "--out", parent, *TINY]) == 0
    before = _folder_digest(parent)
    capsys.readouterr()
    for cmd in ("reflow", "distill"):
        assert main([cmd, parent, "--out", str(tmp_path / cmd), "--pairs", "8"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "deterministic probability-flow ODE" in err and "'gaussian'" in err
    assert _folder_digest(parent) == before
    assert main(["reflow", parent, "--out", parent]) == 2


@pytest.mark.slow  # two processes start torch
@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is not available")
def test_reflow_under_torchrun_shares_the_chunks_and_trains(parent, tmp_path):
    import subprocess
    import sys

    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "unidm",
           "reflow", parent, "--out", out, "--pairs", "64", "--chunk-size", "16", "--rtol", "1e-3", "--atol", "1e-3",
           "--device", "cpu", "train.steps=2", "train.batch_size=32", "sample.n=20"]
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    one = str(tmp_path / "one")
    assert main(["reflow", parent, "--out", one, "--pairs", "64", "--chunk-size", "16", "--rtol", "1e-3", "--atol",
                 "1e-3", "--pairs-only"]) == 0
    a, b = read_pairs(os.path.join(out, "pairs")), read_pairs(os.path.join(one, "pairs"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # ranks drew alternate chunks: the same pairs as one process
    assert load_run(out).step == 2


def test_student_starts_as_its_teacher_and_its_feature_loss_adds_the_feature_distance(parent):
    from unidm.config import apply_overrides
    from unidm.presets import get_preset
    from unidm.run import build_data, build_model

    class Doubler(torch.nn.Module):
        def features(self, x):
            return 2 * x

    over = ["model.hidden=16", "model.depth=2", "data.n_train=400", "data.n_test=200", f"method.teacher={parent}"]
    cfg = apply_overrides(get_preset("moons-flow-distill"), over)
    data = build_data(cfg)
    plain = build_model(cfg, data)
    teacher = load_run(parent).model
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in plain.state_dict().items())
    weighted = build_model(apply_overrides(cfg, ["method.feature_weight=0.5"]), data)
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(6, 2, generator=g), "noise": torch.randn(6, 2, generator=g)}
    with pytest.raises(ValueError, match="feature network"):
        weighted.loss(batch)
    weighted.add_frozen("features", Doubler())
    # |phi(a) - phi(b)|^2 = 4 |a - b|^2 for phi = 2x: the loss is (1 + 4 w) times the plain one
    torch.testing.assert_close(weighted.loss(batch), 3.0 * plain.loss(batch))
    # one Euler step: the student's output is its denoiser at sigma_max, compared with x1
    smax = plain.process.sigma_max
    direct = (plain.denoiser(batch["noise"] * smax, torch.full((6,), smax)) - batch["x"]).pow(2).mean(1)
    torch.testing.assert_close(plain.loss(batch), direct, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="Tweedie"):
        plain.check_sampling("ddpm")
    assert plain.likelihood_methods() == {}


@pytest.mark.parametrize("bad", [["--solver", "bogus"], ["--rtol", "0"], ["train.steps=0"], ["method.bogus=1"],
                                 ["model.hidden=0"]])
def test_bad_input_is_refused_before_anything_is_written(parent, tmp_path, capsys, bad):
    out = str(tmp_path / "new")
    for cmd in ("reflow", "distill"):
        assert main([cmd, parent, "--out", out, "--pairs", "8", *bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert not os.path.exists(out)


def test_class_conditional_pairs_follow_each_samples_label():
    # D(x, sigma | y) of N(mu_y, c^2 I): the adaptive solver keeps each sample's label while the others finish
    means, c = torch.tensor([[3.0, 0.0], [-3.0, 1.0], [0.0, -4.0]], dtype=F64), 0.5

    def denoiser(x, sigma, class_labels):
        mu, s2 = means[class_labels], sigma.reshape(-1, 1) ** 2
        return mu + c * c / (c * c + s2) * (x - mu)

    y = torch.tensor([0, 2, 1, 1, 0, 2])
    z, x1 = coupling_pairs(denoiser, _flow(), range(6), (2,), class_labels=y, dtype=F64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x1, means[y] + c * z, rtol=0, atol=2e-5)
