"""Analytic-DPM from the command line: the Gamma statistics of a run are computed once, cached by the weights'
digest, and feed ``--option variance=analytic`` and ``--grid dp``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from unidm.cli import main
from unidm.run import gamma_for_run, load_run
from unidm.samplers.variance import dp_grid

TINY = ["method.process=vp-discrete", "data.n_train=200", "data.n_test=50", "train.steps=5", "train.batch_size=32",
        "train.progress=false", "sample.n=10", "train.num_threads=1"]


@pytest.fixture(scope="module")
def vp_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vpd") / "run")
    assert main(["train", "moons-vp", "--out", out, *TINY]) == 0
    return out


def test_gamma_statistics_are_cached_by_digest(vp_run):
    run = load_run(vp_run)
    stats, info = gamma_for_run(run, n=100)
    assert not info["cached"] and os.path.isfile(info["path"]) and info["levels"] == run.model.process.num_steps
    # the default estimator is 1 - E|x0 - D|^2 / (d sigma^2): at most 1, and below 0 where this barely trained
    # model's error exceeds the noise itself
    assert bool(torch.isfinite(stats.gamma).all()) and bool((stats.gamma <= 1).all())
    mtime = os.path.getmtime(info["path"])
    again, info2 = gamma_for_run(load_run(vp_run), n=100)
    assert info2["cached"] and info2["path"] == info["path"] and os.path.getmtime(info["path"]) == mtime
    assert torch.equal(again.gamma, stats.gamma) and torch.equal(again.sigmas, stats.sigmas)
    with torch.no_grad():  # other weights: another file, never the stale statistics
        run.model.net.parameters().__next__().add_(0.01)
    _, info3 = gamma_for_run(run, n=100)
    assert not info3["cached"] and info3["path"] != info["path"]


def test_sample_with_analytic_variance_and_dp_grid(vp_run, tmp_path, capsys):
    out_a, out_b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    assert main(["sample", vp_run, "-n", "6", "--sampler", "ddpm", "--steps", "4", "--grid", "dp", "--option",
                 "variance=analytic", "--out", out_a]) == 0
    assert "Gamma statistics: 1000 levels" in capsys.readouterr().out
    x = np.load(out_a)["samples"]
    assert x.shape == (6, 2) and np.isfinite(x).all()
    # the dp grid the command used is Analytic-DPM's trajectory over the cached statistics
    run = load_run(vp_run)
    stats, info = gamma_for_run(run)
    assert info["cached"]
    y = run.model.generate(6, seeds=range(6), sampler="ddpm", steps=4, grid="dp", grid_options={"gamma": stats},
                           variance="analytic", gamma=stats)
    assert np.array_equal(x, y.numpy())
    g = dp_grid(stats, 4)
    assert len(g) == 5 and float(g[-1]) == 0 and bool((g[:-1] > g[1:]).all())
    assert main(["sample", vp_run, "-n", "6", "--sampler", "heun", "--steps", "4", "--grid", "dp", "--out", out_b]) == 0


def test_analytic_variance_refused_where_it_does_not_apply(vp_run, tmp_path, capsys):
    from unidm.methods import FAMILIES

    run = load_run(vp_run)
    with pytest.raises(ValueError, match="grid 'dp'.*Gamma"):
        run.model.generate(2, seeds=[0, 1], sampler="ddpm", steps=3, grid="dp")
    assert "gaussian" in FAMILIES
    assert main(["sample", vp_run, "-n", "2", "--sampler", "ddpm", "--option", "variance=bogus",
                 "--out", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "variance" in err


def test_a_killed_gamma_computation_resumes_to_the_same_statistics(vp_run, tmp_path):
    import shutil

    from unidm.likelihood import gamma_statistics, statistics_sigmas

    run_dir = str(tmp_path / "copy")
    shutil.copytree(vp_run, run_dir, ignore=shutil.ignore_patterns("gamma"))
    run = load_run(run_dir)
    x = run.data.train[:100].double()
    with torch.no_grad(), run.model.evaluating():
        reference = gamma_statistics(run.model.denoiser, x, statistics_sigmas(run.model.process),
                                     generator=torch.Generator().manual_seed(0), progress=False)
    calls = {"n": 0}

    def die_after_120_levels(module, inputs):  # one denoiser call per level (100 examples, batch 500)
        calls["n"] += 1
        if calls["n"] > 120:
            raise RuntimeError("killed")

    hook = run.model.denoiser.register_forward_pre_hook(die_after_120_levels)
    with pytest.raises(RuntimeError, match="killed"):
        gamma_for_run(run, n=100)
    hook.remove()
    folder = os.path.join(run_dir, "gamma")
    assert [f for f in os.listdir(folder) if f.endswith(".partial.safetensors")]  # levels 1..100 were saved
    assert not [f for f in os.listdir(folder) if not f.endswith(".partial.safetensors")]
    stats, info = gamma_for_run(run, n=100)
    assert info["resumed_levels"] == 100 and not info["cached"]
    assert torch.equal(stats.gamma, reference.gamma) and torch.equal(stats.stderr, reference.stderr)
    assert os.listdir(folder) == [os.path.basename(info["path"])]  # the partial file is gone
