"""Images: the UNet's shapes and batch-order equivariance, the digits / folder / array datasets and their errors,
the sample-quality metrics against their floors, and one tiny run through the trainer and the plots."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from unidm.data import build_dataset
from unidm.data.images import digits_dataset, image_array_dataset, image_folder_dataset
from unidm.evaluation import image_metrics as im
from unidm.nn import build_network
from unidm.nn.unet import SelfAttention, UNet

from unidm.evaluation.feature_net import FeatureRecipe

#: a quicker feature network than the default (a few epochs): enough for the tests' contrasts
FAST = FeatureRecipe(epochs=4)
TINY = dict(channels=8, channel_mult=(1, 2, 2), num_blocks=1, groups=4, head_dim=8)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNIDM_CACHE", str(tmp_path_factory.getbasetemp() / "unidm-cache"))


@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_unet_output_shape(size):
    torch.manual_seed(0)
    net = UNet(in_channels=3, image_size=size, attn_resolutions=(size // 2,), **TINY)
    x = torch.randn(2, 3, size, size)
    assert net(x, torch.zeros(2)).shape == x.shape
    assert any(isinstance(m, SelfAttention) for m in net.modules())


def test_unet_class_labels_and_null_label():
    net = UNet(in_channels=1, image_size=8, num_classes=10, **TINY)
    x = torch.randn(4, 1, 8, 8)
    for p in net.parameters():  # make the output depend on everything (zero-initialised layers otherwise hide it)
        torch.nn.init.normal_(p, std=0.2)
    out_null = net(x, torch.zeros(4))
    assert torch.equal(out_null, net(x, torch.zeros(4), class_labels=torch.full((4,), 10)))
    assert not torch.allclose(out_null, net(x, torch.zeros(4), class_labels=torch.arange(4)))


def test_unet_batch_order_equivariance():
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, num_classes=3, attn_resolutions=(4,), **TINY).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, c, y = torch.randn(6, 1, 8, 8), torch.randn(6), torch.randint(0, 3, (6,))
    perm = torch.randperm(6)
    out = net(x, c, class_labels=y)
    torch.testing.assert_close(net(x[perm], c[perm], class_labels=y[perm]), out[perm], atol=1e-5, rtol=1e-5)


def test_image_mlp_shape_and_build():
    net = build_network("image-mlp", {"in_channels": 1, "image_size": 8, "num_classes": 10, "dim": 64},
                        hidden=32, depth=2)
    x = torch.randn(3, 1, 8, 8)
    assert net(x, torch.zeros(3)).shape == x.shape
    assert net(x, torch.zeros(()), class_labels=torch.arange(3)).shape == x.shape  # scalar c_noise broadcasts
    with pytest.raises(ValueError, match="ImageMLP expects"):
        net(torch.randn(3, 64), torch.zeros(3))


def test_build_network_fills_data_sizes():
    net = build_network("unet", {"in_channels": 1, "image_size": 8, "num_classes": 0, "dim": 64}, **TINY)
    assert net.in_channels == 1 and net(torch.randn(2, 1, 8, 8), torch.zeros(2)).shape == (2, 1, 8, 8)


def test_digits_dataset():
    d = build_dataset("digits")
    assert d.kind == "image" and d.meta["levels"] == 17 and d.num_classes == 10
    assert d.train.shape[1:] == (1, 8, 8) and len(d.train) + len(d.test) == 1797
    assert d.train.min() == -1 and d.train.max() == 1
    levels = (d.train + 1) * 8  # the 17 grey levels sit exactly on v / 8 - 1
    assert torch.equal(levels, levels.round())
    assert set(d.test_labels.tolist()) == set(range(10))
    assert torch.equal(digits_dataset().test, d.test)  # the split is deterministic
    flipped = digits_dataset(flip=True)
    assert len(flipped.train) == 2 * len(d.train) and torch.equal(flipped.train[len(d.train):], d.train.flip(-1))


def _write_images(folder, n=6, size=(12, 10)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = os.path.join(folder, f"class{i % 2}")
        os.makedirs(sub, exist_ok=True)
        arr = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(sub, f"img{i}.{'png' if i % 2 else 'jpg'}"))


def test_image_folder_loading(tmp_path):
    _write_images(tmp_path)
    d = image_folder_dataset(str(tmp_path), image_size=8, channels=1, labels=True, test_fraction=0.34)
    assert d.train.shape[1:] == (1, 8, 8) and len(d.train) + len(d.test) == 6
    assert d.num_classes == 2 and -1 <= float(d.train.min()) and float(d.train.max()) <= 1
    rgb = image_folder_dataset(str(tmp_path), image_size=6, channels=3)
    assert rgb.train.shape[1:] == (3, 6, 6)


def test_image_folder_bad_file_is_named(tmp_path):
    _write_images(tmp_path)
    bad = tmp_path / "class0" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="broken.png"):
        image_folder_dataset(str(tmp_path), image_size=8)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        image_folder_dataset(str(tmp_path / "nowhere"))


def test_image_array_loading_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=arr, labels=np.arange(10) % 2)
    d = image_array_dataset(str(tmp_path / "imgs.npz"), labels_key="labels", image_size=8, test_fraction=0.2)
    assert d.train.shape[1:] == (3, 8, 8) and d.num_classes == 2
    np.save(tmp_path / "unit.npy", rng.random((5, 8, 8)).astype(np.float32))
    u = image_array_dataset(str(tmp_path / "unit.npy"), test_fraction=0.2)
    assert u.train.shape[1:] == (1, 8, 8) and float(u.train.min()) >= -1
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.npy"):
        image_array_dataset(str(tmp_path / "bad.npy"))
    np.save(tmp_path / "range.npy", rng.random((5, 8, 8)).astype(np.float32) * 10)
    with pytest.raises(ValueError, match="range.npy"):
        image_array_dataset(str(tmp_path / "range.npy"))


def test_frechet_distance_closed_form():
    # N(0, I) vs N(m, diag(s^2)): |m|^2 + sum (1 - s)^2
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    s = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    b = torch.randn(200_000, 3, generator=g, dtype=torch.float64) * s + 1.0
    assert abs(im.frechet_distance(a, b) - (3 + float(((1 - s) ** 2).sum()))) < 0.05
    assert im.frechet_distance(a, a) < 1e-8


def test_frechet_floor_is_the_whole_training_split_when_samples_are_as_many():
    # with as many samples as training images the floor depends on no draw: the training split itself
    d = digits_dataset()
    r1 = im.evaluate_images(d.train, d, c2st_test=False, recipe=FAST, seed=1)
    r2 = im.evaluate_images(d.train, d, c2st_test=False, recipe=FAST, seed=2)
    assert r1["n_frechet"] == len(d.train) and r1["n"] == len(d.test)
    f1, f2 = r1["metrics"]["frechet"], r2["metrics"]["frechet"]
    assert abs(f1["floor"] - f2["floor"]) < 1e-9  # the same images in another order
    assert abs(f1["value"] - f1["floor"]) < 1e-9  # the samples are the training images
    # with held-out-many samples the floor is a draw of training images, and two draws differ
    s1 = im.evaluate_images(d.train[: len(d.test)], d, c2st_test=False, recipe=FAST, seed=1)
    s2 = im.evaluate_images(d.train[: len(d.test)], d, c2st_test=False, recipe=FAST, seed=2)
    assert s1["n_frechet"] == len(d.test)
    assert s1["metrics"]["frechet"]["floor"] != s2["metrics"]["frechet"]["floor"]


def _mean_distance(a, b):
    return float((a.double().mean(0) - b.double().mean(0)).pow(2).sum())


@pytest.mark.parametrize("stratified", [False, True])
def test_resampled_floor_matches_the_bootstrap_closed_form(stratified):
    # E |mean(T*) - mu_H|^2 = |mu_T - mu_H|^2 + sum_c (n_c / n)^2 tr(S_c) / n_c, S_c the biased covariance
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(torch.tensor([50, 30, 20]))
    f = torch.randn(100, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 1.5])
    f += 3 * labels[:, None].double()  # classes far apart: stratifying removes most of the variance
    h = torch.randn(40, 4, generator=g, dtype=torch.float64)
    base = _mean_distance(f, h)
    groups = [f[labels == c] for c in range(3)] if stratified else [f]
    extra = sum((len(x) / 100) ** 2 * (x - x.mean(0)).pow(2).sum(1).mean() / len(x) for x in groups)
    r = im.resampled_floor(f, h, labels=labels if stratified else None, draws=4000, distance=_mean_distance)
    assert r["stratified"] is stratified and r["draws"] == 4000
    # the Monte Carlo error of the mean of 4000 draws is std / sqrt(4000) < 2 % of std
    assert abs(r["mean"] - (base + float(extra))) < 4 * r["std"] / 4000**0.5
    assert r["p95"] > r["mean"] > base


def test_resampled_floor_keeps_the_class_counts():
    labels = torch.tensor([0] * 7 + [1] * 2 + [2] * 11)
    f = labels[:, None].double().repeat(1, 2)
    seen = []

    def counts(a, b):
        seen.append(torch.bincount(a[:, 0].long(), minlength=3).tolist())
        return 0.0

    im.resampled_floor(f, f, labels=labels, draws=5, distance=counts)
    assert seen == [[7, 2, 11]] * 5  # all of the split: its exact counts
    seen.clear()
    im.resampled_floor(f, f, m=12, labels=labels, draws=3, distance=counts)
    assert seen == [[4, 1, 7]] * 3  # quotas 4.2 / 1.2 / 6.6, rounded by the largest remainder to sum to 12
    with pytest.raises(ValueError, match="labels has 3 entries"):
        im.resampled_floor(f, f, labels=labels[:3])


def test_evaluate_images_reports_the_resampled_floor():
    d = digits_dataset()
    r = im.evaluate_images(d.train, d, c2st_test=False, recipe=FAST, stratified=True)["metrics"]["frechet"]
    # the training split itself scores the plain floor; fresh draws from it score more on average
    assert r["value"] == pytest.approx(r["floor"], abs=1e-9)
    assert r["resampled"]["stratified"] and r["resampled"]["mean"] > r["floor"]
    assert r["ratio_resampled"] == pytest.approx(r["value"] / r["resampled"]["mean"])
    iid = im.evaluate_images(d.train, d, c2st_test=False, recipe=FAST)["metrics"]["frechet"]["resampled"]
    assert not iid["stratified"] and iid["mean"] > r["resampled"]["mean"]  # class counts add noise


def test_metrics_near_floor_for_two_halves_and_large_for_noise():
    d = digits_dataset()
    g = torch.Generator().manual_seed(1)
    half = d.train[torch.randperm(len(d.train), generator=g)[: len(d.test)]]
    noise = torch.rand(len(d.test), 1, 8, 8, generator=g) * 2 - 1
    real = im.evaluate_images(half, d, c2st_test=False, recipe=FAST)["metrics"]
    fake = im.evaluate_images(noise, d, c2st_test=False, recipe=FAST)["metrics"]
    assert real["frechet"]["value"] < 2 * real["frechet"]["floor"]
    assert fake["frechet"]["value"] > 20 * real["frechet"]["floor"]
    assert fake["kid"]["value"] > 100 * abs(real["kid"]["value"]) + 0.1
    assert real["precision"]["value"] > 0.8 and real["recall"]["value"] > 0.8
    assert fake["precision"]["value"] < 0.1 and fake["recall"]["value"] < 0.1
    assert real["copies"]["value"] == 1.0  # a subset of the training set is all copies
    assert fake["copies"]["value"] == 0.0


def test_c2st_tells_noise_from_data_not_halves():
    d = digits_dataset()
    perm = torch.randperm(len(d.test), generator=torch.Generator().manual_seed(0))  # the file is ordered by writer
    a, b = d.test[perm[:120]], d.test[perm[120:240]]
    noise = im.quantize(torch.rand(120, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, 17)
    quick = dict(folds=3, hidden=64, steps=40)
    assert abs(im.c2st(a, b, **quick) - 0.5) < 0.12
    assert im.c2st(noise, b, **quick) > 0.9


def test_quantize_to_digit_levels():
    x = torch.tensor([-1.0, -0.97, 0.0, 0.06, 1.2])
    torch.testing.assert_close(im.quantize(x, 17), torch.tensor([-1.0, -1.0, 0.0, 0.0, 1.0]))


def test_feature_net_is_cached_and_deterministic():
    from unidm.evaluation import feature_net as fn

    d = digits_dataset()
    net = fn.feature_net_for(d, FAST)
    assert os.path.isfile(net.info["cache"]) and net.info["held_out_accuracy"] > 0.8
    fn._MEMO.clear()
    again = fn.feature_net_for(d, FAST)  # from the safetensors cache
    torch.testing.assert_close(fn.features(again, d.test[:20]), fn.features(net, d.test[:20]))


def test_tiny_training_run_and_pictures(tmp_path):
    from unidm.config import apply_overrides
    from unidm.presets import get_preset
    from unidm.run import build_data, build_model, load_run
    from unidm.train import train

    cfg = apply_overrides(get_preset("digits-edm"), [
        "train.steps=4", "train.batch_size=16", "train.log_every=2", "train.progress=false",
        "model.channels=8"])
    data = build_data(cfg)
    model = build_model(cfg, data)
    train(model, data, cfg.train, str(tmp_path / "run"), config_dict=cfg.to_dict(), log=lambda s: None)
    run = load_run(str(tmp_path / "run"))
    x = run.model.generate(4, seeds=range(4), sampler="euler", steps=3)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    assert os.path.isfile(im.IMAGE_PLOTTERS["image"](x, data, str(tmp_path / "samples.png"), "t"))
    path = im.plot_trajectory(run.model, data, str(tmp_path / "traj.png"), sigmas=(10.0, 1.0, 0.1), n=2, steps=4)
    assert os.path.isfile(path)


@pytest.mark.parametrize("name", ["digits-vp", "digits-edm", "digits-flow"])
def test_presets_build(name):
    from unidm.presets import get_preset
    from unidm.run import build_data, build_model

    cfg = get_preset(name)
    model = build_model(cfg, build_data(cfg))
    assert model.num_classes == 10  # conditional, with label dropout
    assert model.loss({"x": torch.randn(2, 1, 8, 8), "y": torch.tensor([3, 7])}).shape == (2,)


def test_draw_labels_follow_the_class_prior_stratified_and_depend_on_the_seed_alone():
    d = digits_dataset()
    prior = d.class_prior()
    torch.testing.assert_close(prior.sum(), torch.tensor(1.0, dtype=torch.float64))
    n = 20000
    labels = d.draw_labels(range(n))
    freq = torch.bincount(labels, minlength=d.num_classes).double() / n
    assert labels.dtype == torch.long and int(labels.min()) >= 0 and int(labels.max()) < d.num_classes
    # each frequency within 4 binomial standard deviations of its class prior
    assert ((freq - prior).abs() <= 4 * (prior * (1 - prior) / n).sqrt()).all()
    assert torch.equal(d.draw_labels(range(7, 12)), labels[7:12])  # label i depends on seed i alone
    # stratified: any N consecutive seeds carry exactly the training split's class counts
    counts = torch.bincount(d.train_labels.long(), minlength=d.num_classes)
    N = len(d.train_labels)
    for start in (0, 5, 10**6 + 3):
        torch.testing.assert_close(torch.bincount(d.draw_labels(range(start, start + N)), minlength=d.num_classes),
                                   counts)
    # a shorter run of seeds is a draw without replacement from those labels: no class beyond its count
    part = torch.bincount(d.draw_labels(range(300)), minlength=d.num_classes)
    assert (part <= counts).all() and int(part.sum()) == 300
    with pytest.raises(ValueError, match="no class labels"):
        type(d)("plain", d.train, d.test, kind="image").class_prior()
    with pytest.raises(ValueError, match="no class labels"):
        type(d)("plain", d.train, d.test, kind="image").draw_labels(range(3))


def test_conditional_run_is_sampled_with_labels_from_the_class_prior(tmp_path, capsys):
    """``unidm sample`` of a class-conditional run without ``--class`` draws one label per seed from the training
    class frequencies (the samples then follow the data distribution); ``--null-label`` uses the unconditional
    model, ``--class K`` class K."""
    from unidm.cli import main
    from unidm.run import load_run

    out = str(tmp_path / "run")
    assert main(["train", "digits-edm", "--out", out, "train.steps=4", "train.batch_size=16", "train.progress=false",
                 "model.channels=8", "method.label_dropout=0.2", "sample.steps=3",
                 "train.ckpt_every=4"]) == 0
    run = load_run(out)
    seeds = range(3, 9)
    common = ["sample", out, "-n", "6", "--seed", "3", "--sampler", "euler", "--steps", "3"]
    expect = {
        "prior": run.model.generate(6, seeds=seeds, sampler="euler", steps=3,
                                    class_labels=run.data.draw_labels(seeds)),
        "null": run.model.generate(6, seeds=seeds, sampler="euler", steps=3),
        "class": run.model.generate(6, seeds=seeds, sampler="euler", steps=3, class_labels=4),
    }
    flags = {"prior": [], "null": ["--null-label"], "class": ["--class", "4"]}
    for name, extra in flags.items():
        npz = str(tmp_path / f"{name}.npz")
        assert main([*common, *extra, "--out", npz]) == 0
        torch.testing.assert_close(torch.from_numpy(np.load(npz)["samples"]), expect[name])
    assert not torch.allclose(expect["prior"], expect["null"])
    # unidm eval compares stratified samples with fresh draws from the training split within classes; the null
    # label's unconditional samples with i.i.d. draws
    for extra, within in (([], True), (["--null-label"], False)):
        capsys.readouterr()
        assert main(["eval", out, "-n", "64", "--sampler", "euler", "--steps", "2", "--json", *extra]) == 0
        frechet = json.loads(capsys.readouterr().out)["metrics"]["frechet"]
        assert frechet["resampled"]["stratified"] is within
        assert frechet["ratio_resampled"] == pytest.approx(frechet["value"] / frechet["resampled"]["mean"])
    assert main(["eval", out, "-n", "64", "--sampler", "euler", "--steps", "2"]) == 0
    assert "resampled" in capsys.readouterr().out


def test_c2st_trains_its_classifier_even_under_no_grad():
    """The two-sample classifier is trained inside c2st, so a caller sampling under ``torch.no_grad`` gets the same
    accuracy (it failed with 'does not require grad' before)."""
    from unidm.evaluation.image_metrics import c2st

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 1, 8, 8, generator=g), torch.randn(200, 1, 8, 8, generator=g) + 0.5
    with torch.no_grad():
        inside = c2st(a, b)
    assert inside == c2st(a, b) and inside > 0.8  # shifted by half a standard deviation in 64 dims: separable
