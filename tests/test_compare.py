"""``unidm compare`` and ``unidm likelihood --data/--out`` on tiny trained runs, read through the faces only.

The compare table must hold every likelihood method each run's family declares, with its declared kind and finite
numbers whose bits/dim is ``nll / (D ln 2)``; the binary-digits table takes every family with a preset on binary
digits, so a new family is checked here as soon as it has one. Scoring a saved ``.npy`` of held-out examples must
give the numbers of the default path bit for bit (same seed, same batches), and a bad array or a mix of data sets is
one line and exit code 2.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from unidm.cli import main
from unidm.commands.compare import train_seconds
from unidm.config import apply_overrides
from unidm.methods import GenerativeModel, SupportsLikelihood
from unidm.presets import FROZEN_PRESETS, PRESETS, get_preset
from unidm.run import build_data, build_model, load_run
from unidm.train import train

TINY = ["train.steps=2", "train.batch_size=8", "train.warmup=0", "train.ema_decay=0", "train.progress=false",
        "train.num_threads=1", "train.log_every=1", "sample.steps=4"]
ODE = ["--option", "rtol=1e-3", "--option", "atol=1e-3", "--option", "hutchinson=1", "--option", "num_terms=8"]


def _train_tiny(name: str, out: str, extra: list[str] = ()) -> str:
    cfg = apply_overrides(get_preset(name), [*TINY, *extra])
    data = build_data(cfg)
    train(build_model(cfg, data), data, cfg.train, out, config_dict=cfg.to_dict(), log=lambda _: None)
    return out


def _binary_digits_presets() -> list[str]:
    """The first preset of every family on binary digits whose model scores or draws data (no frozen runs)."""
    found: dict[str, str] = {}
    for name, d in PRESETS.items():
        family = d.get("family", "gaussian")
        if d["data"]["name"] == "binary-digits" and name not in FROZEN_PRESETS and family not in found:
            cfg = get_preset(name)
            if isinstance(build_model(cfg, build_data(cfg)), (GenerativeModel, SupportsLikelihood)):
                found[family] = name
    return list(found.values())


@pytest.fixture(scope="module")
def moons_runs(tmp_path_factory):
    """A DDPM (vp-discrete: ODE and ELBO), an EDM (ODE) and a PFGM (no likelihood) run on moons."""
    root = tmp_path_factory.mktemp("moons")
    ddpm = ["method.process=vp-discrete", "method.noise_levels=discrete-t"]
    return [_train_tiny("moons-vp", str(root / "vpd"), ddpm),
            _train_tiny("moons-edm", str(root / "edm")), _train_tiny("moons-pfgm", str(root / "pfgm"))]


@pytest.fixture(scope="module")
def binary_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    return [_train_tiny(name, str(root / name)) for name in _binary_digits_presets()]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A Gaussian run on 17-level digits (float data on a grid)."""
    return _train_tiny("digits-edm", str(tmp_path_factory.mktemp("digits") / "edm"), ["method.conditional=false"])


def _cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _check_report(report: dict, paths: list[str]) -> None:
    """Every declared method of every run, with its kind, finite numbers and bits/dim = nll / (D ln 2)."""
    dim = report["data"]["dim"]
    assert [r["run"] for r in report["runs"]] == paths
    for row in report["runs"]:
        model = load_run(row["run"]).model
        declared = model.likelihood_methods() if isinstance(model, SupportsLikelihood) else {}
        assert {m["method"]: m["kind"] for m in row["likelihood"]} == declared, row["run"]
        for m in row["likelihood"]:
            assert m["kind"] in ("exact", "ode", "bound")
            nll, bpd = m["nll_nats"]["mean"], m["bits_per_dim"]["mean"]
            assert math.isfinite(nll) and math.isfinite(m["nll_nats"]["stderr"])
            # (a family may score in float32: its rounding, not a convention, is all that may differ)
            assert bpd == pytest.approx(nll / (dim * math.log(2)), rel=1e-6), (row["run"], m["method"])
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["steps"] == 2 and row["train_seconds"] > 0 and row["train_seconds_source"] == "log"
        if isinstance(model, GenerativeModel):
            assert row["sampling"]["seconds_per_sample"] > 0
            assert math.isfinite(row["quality"]["value"]) and row["quality"]["headline"] in \
                row["quality"]["report"]["metrics"]


def test_moons_table_holds_every_declared_method_with_its_kind(capsys, tmp_path, moons_runs):
    out_json, plot = tmp_path / "r.json", tmp_path / "r.png"
    rc, out, err = _cli(capsys, "compare", *moons_runs, "-n", "16", *ODE, "--out", out_json, "--plot", plot)
    assert rc == 0, err
    report = json.loads(out_json.read_text())
    assert report["unit"] == "nats"
    _check_report(report, moons_runs)
    kinds = {m["kind"] for r in report["runs"] for m in r["likelihood"]}
    assert kinds == {"ode", "bound"} and report["runs"][2]["likelihood"] == []
    lines = out.splitlines()
    assert "NLL nats" in lines[1] and "(none)" in out and "upper bound on the NLL" in out
    assert any(ln.split()[:2] == ["elbo", "bound"] for ln in lines)  # a second method: its own line under the run
    assert plot.stat().st_size > 0


def test_binary_digits_table_covers_every_family_there(capsys, binary_runs):
    rc, out, err = _cli(capsys, "compare", *binary_runs, "-n", "12", "--json", "--option", "n_t=2")
    assert rc == 0, err
    report = json.loads(out)
    assert report["unit"] == "bits/dim" and report["data"]["dim"] == 64
    _check_report(report, binary_runs)


def test_compare_and_likelihood_give_the_same_numbers(capsys, tmp_path, moons_runs):
    vpd = moons_runs[0]
    rc, out, _ = _cli(capsys, "compare", vpd, "-n", "10", "--json", "--no-quality", *ODE)
    row = json.loads(out)["runs"][0]
    assert rc == 0 and row["quality"] is None and row["sampling"] is None
    rc, out, _ = _cli(capsys, "likelihood", vpd, "-n", "10", "--json", "--elbo", "--hutchinson", "1", "--rtol", "1e-3",
                      "--atol", "1e-3")
    single = json.loads(out)
    assert rc == 0
    by_method = {m["method"]: m for m in row["likelihood"]}
    assert by_method["ode"]["nll_nats"] == single["nll_nats"]


def _roundtrip(capsys, tmp_path, run: str, n: int, *flags) -> None:
    x = load_run(run).data.test[:n].numpy()
    np.save(tmp_path / "x.npy", x)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    rc1, _, err1 = _cli(capsys, "likelihood", run, "--data", tmp_path / "x.npy", "--out", a, *flags)
    rc2, _, err2 = _cli(capsys, "likelihood", run, "-n", n, "--out", b, *flags)
    assert rc1 == 0 and rc2 == 0, err1 + err2
    fa, fb = np.load(a), np.load(b)
    assert set(fa.files) == set(fb.files) and {"log_likelihood", "bits_per_dim", "kind", "method"} <= set(fa.files)
    for key in fa.files:
        assert np.array_equal(fa[key], fb[key]), key
    dim = x[0].size
    np.testing.assert_allclose(fa["bits_per_dim"], -fa["log_likelihood"] / (dim * math.log(2)), rtol=1e-12)
    assert fa["log_likelihood"].shape == (n,) and np.isfinite(fa["log_likelihood"]).all()


def test_data_file_gives_the_numbers_of_the_held_out_split(capsys, tmp_path, moons_runs, binary_runs, digits_run):
    _roundtrip(capsys, tmp_path, moons_runs[0], 6, "--elbo", "--hutchinson", "1", "--rtol", "1e-3", "--atol", "1e-3")
    assert str(np.load(tmp_path / "a.npz")["elbo_kind"]) == "bound"
    masked = next(r for r in binary_runs if load_run(r).config.family == "masked")
    _roundtrip(capsys, tmp_path, masked, 5, "--n-t", "2")
    _roundtrip(capsys, tmp_path, digits_run, 3, "--hutchinson", "1", "--rtol", "1e-2", "--atol", "1e-2")
    assert str(np.load(tmp_path / "a.npz")["kind"]) == "ode"


def _bad_arrays(tmp_path) -> dict:
    test = build_data(get_preset("digits-edm")).test[:4].numpy()
    arrays = {"wrong-shape": test.reshape(4, 64), "off-grid": test + 0.01, "out-of-range": test * 1.5,
              "nan": np.where(test > 0, np.nan, test), "object": np.array([{"a": 1}], dtype=object),
              "no-examples": test[:0]}
    paths = {}
    for name, arr in arrays.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], arr, allow_pickle=True)
    paths["missing"] = tmp_path / "missing.npy"
    (tmp_path / "x.csv").write_text("1,2\n")
    paths["not-npy"] = tmp_path / "x.csv"
    return paths


BAD_DIGITS = {"wrong-shape": "shape", "off-grid": "17-level grid", "out-of-range": "17-level grid", "nan": "NaN",
              "object": "nothing is unpickled", "no-examples": "no examples", "missing": "no such file",
              "not-npy": ".npy"}


def _refused(result, *words) -> str:
    rc, out, err = result
    assert "Traceback" not in out + err
    assert rc == 2, f"exit {rc}: {out}{err}"
    assert err.count("\n") == 1 and err.endswith("\n"), repr(err)
    for word in words:
        assert word in err, (word, err)
    return err


def test_bad_data_is_one_line_and_nothing_written(capsys, tmp_path, digits_run, binary_runs):
    paths = _bad_arrays(tmp_path)
    for name, word in BAD_DIGITS.items():
        out = tmp_path / f"{name}.npz"
        _refused(_cli(capsys, "likelihood", digits_run, "--data", paths[name], "--out", out), word, "--data")
        assert not out.exists()
    tokens = load_run(binary_runs[0]).data.test[:3].numpy()
    for name, arr, word in [("float", tokens.astype(np.float32), "integer tokens"),
                            ("vocab", tokens + 2, "vocabulary")]:
        np.save(tmp_path / f"{name}.npy", arr)
        _refused(_cli(capsys, "likelihood", binary_runs[0], "--data", tmp_path / f"{name}.npy"), word)
    _refused(_cli(capsys, "likelihood", binary_runs[0], "--data", paths["wrong-shape"], "--split", "test"), "--split")
    _refused(_cli(capsys, "likelihood", binary_runs[0], "--out", tmp_path / "x.txt"), ".npz")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left behind


def test_compare_refuses_mixed_data_and_unknown_options(capsys, tmp_path, moons_runs, binary_runs):
    err = _refused(_cli(capsys, "compare", moons_runs[1], binary_runs[0], "--no-quality"), "different data")
    assert "moons" in err and "binary-digits" in err
    _refused(_cli(capsys, "compare", moons_runs[1], "--option", "bogus=1"), "bogus", "hutchinson")
    _refused(_cli(capsys, "compare", moons_runs[1], "--out", tmp_path / "r.txt"), ".json")
    _refused(_cli(capsys, "compare", tmp_path / "nowhere"), "not a run folder")


def test_training_time_sums_sessions_and_times_the_tail(tmp_path):
    records = [{"step": 10, "time": 1.0, "steps_per_sec": 10.0}, {"step": 20, "time": 2.0, "steps_per_sec": 10.0},
               {"step": 30, "time": 0.5, "steps_per_sec": 20.0}, {"step": 40, "time": 1.0, "steps_per_sec": 20.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert train_seconds(str(tmp_path)) == (3.0, "log")  # a resumed session restarts the clock: 2.0 + 1.0
    assert train_seconds(str(tmp_path), step=40) == (3.0, "log")
    assert train_seconds(str(tmp_path), step=50) == (3.5, "log+tail")  # 10 more steps at 20 steps/s
    os.remove(tmp_path / "metrics.jsonl")
    assert train_seconds(str(tmp_path)) == (None, "none")


def test_reads_no_family_name():
    import ast
    import inspect

    from unidm.commands import compare
    from unidm.methods import FAMILIES

    strings = {n.value for n in ast.walk(ast.parse(inspect.getsource(compare))) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)}
    assert not strings & set(FAMILIES), strings & set(FAMILIES)
