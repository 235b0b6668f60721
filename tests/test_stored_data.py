"""A run on the user's own file samples after the file is gone, from what ``config.json`` stored of the data."""

from __future__ import annotations

import os

import numpy as np
import torch

from unidm.cli import main
from unidm.config import apply_overrides
from unidm.presets import get_preset
from unidm.run import StoredData, build_data, build_model, data_info


def test_stored_info_rebuilds_the_model_and_the_stratified_labels_exactly():
    cfg = apply_overrides(get_preset("digits-edm"), [])
    data = build_data(cfg)
    stored = StoredData.from_info("digits", data_info(data), "the file is gone")
    assert stored.shape == data.shape and stored.kind == data.kind and stored.std == data.std
    assert len(stored.train) == 0 and stored.meta["levels"] == data.meta["levels"]
    seeds = list(range(0, 3000, 7))
    assert torch.equal(stored.draw_labels(seeds), data.draw_labels(seeds))  # labels depend on class counts alone
    a, b = build_model(cfg, data), build_model(cfg, stored)
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_user_data_run_samples_without_its_file_and_eval_asks_for_it(tmp_path, capsys):
    pts = tmp_path / "pts.npy"
    np.save(pts, np.random.RandomState(0).randn(300, 2).astype("float32"))
    run = str(tmp_path / "run")
    assert main(["train", "moons-edm", "--out", run, "data.name=array", f"data.path={pts}", "train.steps=5",
                 "train.batch_size=32", "train.progress=false", "sample.n=20"]) == 0
    assert main(["sample", run, "-n", "6", "--steps", "4", "--out", str(tmp_path / "a.npz")]) == 0
    os.rename(pts, tmp_path / "moved.npy")
    capsys.readouterr()
    assert main(["sample", run, "-n", "6", "--steps", "4", "--out", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert np.array_equal(a["samples"], b["samples"])
    for command in (["eval", run], ["likelihood", run, "-n", "4"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(pts) in err
