"""End to end: config errors, a short training run that clearly learns, and the CLI."""

import json
import os

import numpy as np
import pytest
import torch

from unidm.cli import main
from unidm.config import RunConfig, apply_overrides
from unidm.evaluation.metrics import sliced_wasserstein
from unidm.presets import PRESETS, get_preset
from unidm.run import build_data, build_model, load_run
from unidm.train import train

TINY = ["model.hidden=128", "model.depth=2", "data.n_train=4000", "data.n_test=2000", "train.batch_size=256",
        "train.progress=false", "train.log_every=50"]


def test_presets_cover_every_toy_with_every_process():
    for d in ["moons", "circles", "swissroll", "8gaussians", "checkerboard", "pinwheel", "spirals"]:
        for p in ["vp", "ve", "edm", "flow"]:
            assert f"{d}-{p}" in PRESETS


def test_config_errors_list_valid_choices():
    cfg = get_preset("moons-edm")
    with pytest.raises(ValueError, match="valid:.*steps"):
        apply_overrides(cfg, ["train.stepz=3"])
    with pytest.raises(ValueError, match="valid:.*data"):
        apply_overrides(cfg, ["dta.name=moons"])
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("moons-edn")
    bad = apply_overrides(cfg, ["method.process=vpp"])
    with pytest.raises(ValueError, match="valid:.*subvp"):
        build_model(bad, build_data(bad))
    bad = apply_overrides(cfg, ["model.hiden=3"])
    with pytest.raises(ValueError, match="valid:.*hidden"):
        build_model(bad, build_data(bad))
    bad = apply_overrides(cfg, ["method.weighting=snr"])
    with pytest.raises(ValueError, match="valid:.*min-snr"):
        build_model(bad, build_data(bad))


def test_nested_overrides_set_one_entry_and_bad_mappings_are_refused():
    cfg = apply_overrides(get_preset("moons-edm"), ["method.noise_options.p_mean=-0.8"])
    assert cfg.method["noise_options"] == {"p_mean": -0.8, "p_std": 1.4}  # the preset's p_std is kept
    model = build_model(cfg, build_data(cfg))
    assert model.loss_fn.noise_levels.p_mean == -0.8
    cfg = apply_overrides(get_preset("moons-edm"), ['method.noise_options={"p_mean": -0.5, "p_std": 1.0}'])
    assert cfg.method["noise_options"] == {"p_mean": -0.5, "p_std": 1.0}
    with pytest.raises(ValueError, match="method.process is 'edm', not a mapping"):
        apply_overrides(cfg, ["method.process.x=1"])
    with pytest.raises(ValueError, match="method.noise_options=.*looks like JSON"):  # malformed JSON is refused
        apply_overrides(cfg, ["method.noise_options={p_mean: -0.8}"])
    bad = apply_overrides(cfg, ["method.noise_options=abc"])  # a plain string where a mapping belongs
    with pytest.raises(ValueError, match="must be a mapping.*method.noise_options.NAME=VALUE"):
        build_model(bad, build_data(bad))
    bad = apply_overrides(cfg, ["method.noise_options.p_men=-0.8"])
    with pytest.raises(ValueError, match="valid:.*p_mean"):
        build_model(bad, build_data(bad))


def test_config_round_trips_through_json():
    cfg = apply_overrides(get_preset("checkerboard-flow"), ["train.lr=0.001", "method.noise_options={\"m\": 0.5}"])
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg and again.method["noise_options"] == {"m": 0.5}


@pytest.mark.parametrize("preset", ["moons-edm", "moons-flow"])
def test_short_training_clearly_learns(tmp_path, preset):
    """800 steps of a small MLP: the samples beat, by far, both the untrained model and the best Gaussian fit."""
    cfg = apply_overrides(get_preset(preset), TINY + ["train.steps=800", "train.ckpt_every=800"])
    data = build_data(cfg)
    model = build_model(cfg, data)
    test = data.test[:2000]

    def quality(m):
        return sliced_wasserstein(m.generate(2000, seeds=range(2000), sampler="heun", steps=32), test)

    before = quality(model)
    train(model, data, cfg.train, str(tmp_path), config_dict=cfg.to_dict())
    after = quality(load_run(str(tmp_path)).model)
    g = torch.Generator().manual_seed(0)
    chol = torch.linalg.cholesky(torch.cov(data.train.T))
    gaussian_fit = data.train.mean(0) + torch.randn(2000, 2, generator=g) @ chol.T
    baseline = sliced_wasserstein(gaussian_fit, test)
    assert after < 0.4 * before, (before, after)
    assert after < 0.4 * baseline, (baseline, after)


def test_cli_train_sample_eval(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "8gaussians-edm", "--out", out, *TINY, "train.steps=60", "train.ckpt_every=30",
                 "sample.n=200"]) == 0
    for f in ("config.json", "model.safetensors", "metrics.jsonl", "samples.png"):
        assert os.path.isfile(os.path.join(out, f)), f
    assert {"step_00000030", "step_00000060"} <= set(os.listdir(os.path.join(out, "state")))
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert records[-1]["step"] == 60 and all(np.isfinite(r["loss"]) for r in records)
    npz = str(tmp_path / "s.npz")
    assert main(["sample", out, "-n", "12", "--sampler", "euler", "--steps", "8", "--seed", "5", "--out", npz,
                 "--plot", str(tmp_path / "s.png")]) == 0
    a = np.load(npz)["samples"]
    assert a.shape == (12, 2) and os.path.isfile(tmp_path / "s.png")
    # per-sample seeds: sample 5+3 drawn alone equals row 3 of the batch
    npz2 = str(tmp_path / "s2.npz")
    assert main(["sample", out, "-n", "1", "--sampler", "euler", "--steps", "8", "--seed", "8", "--out", npz2]) == 0
    np.testing.assert_allclose(np.load(npz2)["samples"][0], a[3], rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["eval", out, "--json", "-n", "500", "--steps", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["metrics"]) == {"sliced_w2", "mmd", "energy"}
    assert all(m["floor"] > 0 for m in report["metrics"].values())


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "nope-edm", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["train", "moons-edm", "--out", str(tmp_path / "x"), "train.bogus=1"]) == 2
    assert "valid:" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) != 0
    out = str(tmp_path / "run")
    assert main(["train", "moons-edm", "--out", out, *TINY, "train.steps=2", "sample.n=10"]) == 0
    capsys.readouterr()
    assert main(["sample", out, "-n", "2", "--sampler", "not-a-sampler"]) == 2
    assert "valid:" in capsys.readouterr().err
