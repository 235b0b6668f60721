"""The command line's contract with its user: nothing lost, nothing silently wrong.

Every class of mistake a user can make on ``unidm train | sample | eval | likelihood`` is refused with exit code 2
(3 for a corrupt run), ONE line on stderr naming the key, flag or file, no traceback, and — for a command that
would write — the folder's prior contents byte-identical afterwards (:func:`folder_digest`). The few runs these
tests need are trained once per module (tiny: 20 steps on one thread) and copied where a test changes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from unidm.cli import build_parser, main

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning",
                                        "ignore:std.*degrees of freedom:UserWarning")

#: a tiny moons run: trains in well under a second on one thread
TINY = ["train.steps=20", "train.batch_size=32", "train.num_threads=1", "train.progress=false", "sample.n=50",
        "sample.steps=2", "model.hidden=16"]
#: the toy dataset sized down (the held-out split has 100 examples)
TOY_DATA = ["data.n_train=2000", "data.n_test=100"]
N_TEST = 100


# ------------------------------------------------------------------------------------------------------- helpers
def folder_digest(path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``path`` (hidden ones too); folders appear as ``"<dir>"``,
    so an empty folder that appears or disappears is seen as well."""
    digest = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            digest[os.path.relpath(os.path.join(root, d), path) + "/"] = "<dir>"
        for f in files:
            full = os.path.join(root, f)
            with open(full, "rb") as fh:
                digest[os.path.relpath(full, path)] = hashlib.sha256(fh.read()).hexdigest()
    return digest


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``unidm ARGV`` in this process: (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors and --help
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(result, *names, code=(2,)):
    """Exit ``code``, exactly one line on stderr naming each of ``names``, and no traceback."""
    rc, out, err = result
    assert "Traceback" not in out + err, out + err
    assert rc in code, f"exit {rc}, expected {code}\nstdout: {out}\nstderr: {err}"
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line on stderr: {err!r}"
    for name in names:
        assert str(name) in err, f"{name!r} not named in: {err!r}"
    return err


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train(out, *items):
    torch.set_num_threads(1)
    rc = main(["train", *map(str, items), "--out", str(out)])
    assert rc == 0, f"training {items} into {out} failed with exit code {rc}"
    return str(out)


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    """A 20-step moons-edm run (held-out split of 100). Tests that change it copy it first."""
    return _train(tmp_path_factory.mktemp("edm") / "run", "moons-edm", *TINY, *TOY_DATA)


@pytest.fixture(scope="module")
def blur_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("blur") / "run", "digits-blur", "train.steps=2", "train.batch_size=8",
                  "train.num_threads=1", "train.progress=false", "model.channels=8", "model.channel_mult=[1]",
                  "sample.n=4", "sample.steps=2")


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("clf") / "run", "gmm-ring-classifier", "train.steps=2",
                  "train.batch_size=8", "train.num_threads=1", "train.progress=false", "model.hidden=16",
                  "data.n_train=500", "data.n_test=100")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty current directory: a command that must write nothing leaves it empty."""
    wd = tmp_path / "cwd"
    wd.mkdir()
    monkeypatch.chdir(wd)
    return wd


# ---------------------------------------------------------------------------------------- 1. config values
BAD_CONFIG = [
    ("train.steps=abc", ["train.steps", "abc"]),
    ("train.steps=2.5", ["train.steps", "2.5"]),
    ("train.steps=-3", ["train.steps", "-3"]),
    ("train.steps=1e400", ["train.steps"]),
    ("train.batch_size=0", ["train.batch_size"]),
    ("train.log_every=0", ["train.log_every"]),
    ("model.hidden=0", ["model.hidden"]),
    ("model.hidden=[1,2", ["model.hidden", "[1,2"]),
    ("train.ema_decay=2", ["train.ema_decay"]),
    ("train.decay=bogus", ["train.decay", "bogus", "cosine", "linear", "none"]),
    ("sample.sampler=bogus", ["sampler", "bogus", "heun"]),  # a name the family does not have: before training
    ("sample.grid=bogus", ["grid", "bogus", "karras"]),
    ("train.stepz=3", ["stepz", "steps", "batch_size", "log_every"]),  # an unknown key lists the valid ones
]


@pytest.mark.parametrize("override,names", BAD_CONFIG, ids=[b[0] for b in BAD_CONFIG])
def test_train_bad_config_value(capsys, workdir, override, names):
    out = workdir / "r"
    assert_refused(cli(capsys, "train", "moons-edm", "--out", out, *TINY, override), *names)
    assert not out.exists(), f"{override}: the run folder was created"
    assert os.listdir(workdir) == [], f"{override}: wrote {os.listdir(workdir)}"


#: values refused by nobody today: data sizes and method numbers (the family constructor is meant to refuse the
#: latter, docs/errors.md); each should be exit 2, one line naming the key, and no run folder
BAD_CONFIG_UNCHECKED = [
    ("data.n_train=0", ["data.n_train"], "traceback (RuntimeError: ZeroDivisionError, exit 1) after writing a "
                                         "config.json, model.safetensors and state/step_00000000 into --out"),
    ("data.n_test=0", ["data.n_test"], "trains the whole run, then a traceback (RuntimeError: cannot reshape "
                                       "tensor of 0 elements, exit 1), leaving the run folder"),
    ("method.sigma_data=0", ["method.sigma_data"], "trains and diverges (loss inf in step 1, exit 3), leaving a "
                                                   "run folder"),
    ("method.sigma_data=-1", ["method.sigma_data"], "accepted: trains with a negative sigma_data (exit 0)"),
    ("method.noise_options.p_std=-1", ["p_std"], "accepted: trains with a negative standard deviation (exit 0)"),
]


@pytest.mark.parametrize("override,names", [(o, n) for o, n, _ in BAD_CONFIG_UNCHECKED],
                         ids=[b[0] for b in BAD_CONFIG_UNCHECKED])
def test_train_bad_data_or_method_value(capsys, workdir, override, names):
    out = workdir / "r"
    assert_refused(cli(capsys, "train", "moons-edm", "--out", out, *TINY, *TOY_DATA, override), *names)
    assert not out.exists(), f"{override}: the run folder was created"


def test_train_unknown_preset_lists_presets(capsys, workdir):
    out = workdir / "r"
    err = assert_refused(cli(capsys, "train", "moons-edmm", "--out", out, *TINY), "moons-edmm")
    assert not out.exists() and os.listdir(workdir) == []
    from unidm.presets import PRESETS

    missing = [name for name in PRESETS if name not in err]
    assert not missing, f"valid presets not listed: {missing}"


def test_train_unknown_preset_refused(capsys, workdir):
    out = workdir / "r"
    assert_refused(cli(capsys, "train", "moons-edmm", "--out", out, *TINY), "moons-edmm", "unidm presets")
    assert not out.exists() and os.listdir(workdir) == []


def test_train_decay_none_is_constant_lr(capsys, workdir):
    """``train.decay=none`` is a valid name (no decay), not None, and trains at a constant learning rate."""
    out = workdir / "r"
    rc, _, err = cli(capsys, "train", "moons-edm", "--out", out, *TINY, *TOY_DATA, "train.decay=none",
                     "train.warmup=0", "train.log_every=5", "train.lr=0.002")
    assert rc == 0, err
    with open(out / "config.json") as f:
        assert json.load(f)["train"]["decay"] == "none"
    with open(out / "metrics.jsonl") as f:
        lrs = [json.loads(line)["lr"] for line in f if line.strip()]
    assert len(lrs) == 4 and all(lr == pytest.approx(0.002) for lr in lrs), lrs


# ---------------------------------------------------------------------------- 2. --out: a folder of the user's
@pytest.fixture
def user_folder(workdir):
    """A folder of the user's that looks a bit like a run but is not one."""
    u = workdir / "mine"
    (u / ".tmp-dir").mkdir(parents=True)
    (u / ".tmp-dir" / "keep.txt").write_text("the user's\n")
    (u / "config.json").write_text('{"my_app": {"threshold": 3}}\n')
    (u / "samples.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (u / "metrics.jsonl").write_text('{"accuracy": 0.9}\n')
    (u / ".tmp-x").write_bytes(b"half-written by the user's own tool")
    return u


@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
def test_train_refuses_user_folder(capsys, user_folder, resume):
    before = folder_digest(user_folder)
    argv = ["train", "moons-edm", "--out", user_folder, *TINY] + (["--resume"] if resume else [])
    assert_refused(cli(capsys, *argv), "mine")
    assert folder_digest(user_folder) == before


def test_train_refuses_out_that_is_a_file(capsys, workdir):
    f = workdir / "notes.txt"
    f.write_text("keep me\n")
    assert_refused(cli(capsys, "train", "moons-edm", "--out", f, *TINY), "notes.txt")
    assert f.read_text() == "keep me\n" and os.listdir(workdir) == ["notes.txt"]


# ------------------------------------------------------------------------------------------ 3. path traversal
@pytest.mark.parametrize("name", ["../../x", "ABS", "..", "a/../../x", "a\\b"])
def test_config_name_cannot_escape_runs(capsys, tmp_path, monkeypatch, name):
    """A config file's ``name`` decides ``runs/<name>`` when no ``--out`` is given: it cannot leave ``runs/``."""
    from unidm.presets import get_preset

    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    target = tmp_path / "abs-target"
    cfg = get_preset("moons-edm").to_dict()
    cfg["name"] = str(target) if name == "ABS" else name
    with open(here / "cfg.json", "w") as f:
        json.dump(cfg, f)
    before = folder_digest(tmp_path)
    assert_refused(cli(capsys, "train", "cfg.json", *TINY), repr(cfg["name"]))  # quoted as Python would
    assert folder_digest(tmp_path) == before, "something was written"
    assert not (tmp_path / "x").exists() and not (tmp_path / "a" / "x").exists() and not target.exists()
    assert not (here / "runs").exists()


def test_override_name_cannot_escape_runs(capsys, tmp_path, monkeypatch):
    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    assert_refused(cli(capsys, "train", "moons-edm", "name=../../x", *TINY), "../../x")
    assert os.listdir(here) == [] and sorted(os.listdir(tmp_path)) == ["a"]


# ----------------------------------------------------------------------------------------- 4. resume mismatches
def test_resume_with_another_preset_names_the_keys(capsys, edm_run):
    before = folder_digest(edm_run)
    err = assert_refused(cli(capsys, "train", "moons-flow", "--out", edm_run, "--resume"),
                         "method.process", "method.parameterization")
    assert "'edm'" in err and "'flow'" in err
    assert folder_digest(edm_run) == before, "config.json (or something else) changed"


def test_resume_with_the_same_preset_named_again(capsys, edm_run, tmp_path):
    """``unidm train PRESET --out RUN --resume`` with the run's own preset and overrides continues it: the data
    summary stored at the start (``data_info``) is not a setting a preset could differ in."""
    run = tmp_path / "run"
    shutil.copytree(edm_run, run)
    items = [i for i in TINY if not i.startswith("train.steps=")]
    rc, out, err = cli(capsys, "train", "moons-edm", *items, *TOY_DATA, "train.steps=22", "--out", run, "--resume")
    assert rc == 0, err
    assert "resumed from" in out + err and "trained 22 steps" in out
    rc, _, err = cli(capsys, "train", "moons-edm", *items, *TOY_DATA, "train.steps=24", "train.lr=0.5",
                     "--out", run, "--resume")
    assert rc == 2 and "train.lr" in err and "data_info" not in err


def test_resume_below_reached_step(capsys, edm_run):
    before = folder_digest(edm_run)
    assert_refused(cli(capsys, "train", "--out", edm_run, "--resume", "train.steps=10"), "train.steps", "20")
    assert folder_digest(edm_run) == before


@pytest.mark.parametrize("kind", ["empty", "user", "missing"])
def test_resume_not_a_run(capsys, workdir, kind):
    folder = workdir / "notarun"
    if kind != "missing":
        folder.mkdir()
    if kind == "user":
        (folder / "notes.txt").write_text("mine\n")
    before = folder_digest(workdir)
    assert_refused(cli(capsys, "train", "--out", folder, "--resume"), "notarun", "config.json")
    assert folder_digest(workdir) == before


def test_resume_needs_out(capsys, workdir):
    assert_refused(cli(capsys, "train", "--resume"), "--out")
    assert os.listdir(workdir) == []


# -------------------------------------------------------------------- 5. sample / eval / likelihood: numbers, names
SAMPLE_BAD = [
    (["-n", "0"], ["-n"]),
    (["--steps", "0"], ["--steps"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--seed", "-1"], ["--seed"]),
    (["-n", "x"], ["-n"]),
    (["--option", "s_churn=abc"], ["s_churn", "abc"]),
    (["--option", "bogus=1"], ["bogus", "s_churn"]),
    (["--option", "noequals"], ["--option", "noequals"]),
    (["--sampler", "bogus"], ["bogus", "heun"]),
    (["--grid", "bogus"], ["bogus", "karras"]),
    (["--device", "nonsense"], ["--device", "nonsense"]),
    (["--device", "cuda"], ["--device", "CUDA"]),
    (["--out", "x.txt"], ["--out", "x.txt"]),
    (["--plot", "x.bogus"], ["--plot", "x.bogus"]),
    (["--class", "1"], ["--class"]),  # an unconditional run
    (["--guidance", "cfg"], ["--guidance", "--class"]),
]


@pytest.mark.parametrize("args,names", SAMPLE_BAD, ids=[" ".join(a) for a, _ in SAMPLE_BAD])
def test_sample_bad_argument(capsys, workdir, edm_run, args, names):
    if args[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    before = folder_digest(edm_run)
    assert_refused(cli(capsys, "sample", edm_run, "-n", "3", "--steps", "2", *args), *names)
    assert folder_digest(edm_run) == before, "the run folder changed (a samples.npz written?)"
    assert os.listdir(workdir) == [], f"wrote {os.listdir(workdir)}"  # no x.txt, no x.txt.npz, no picture


def test_sample_out_is_a_folder(capsys, workdir, edm_run):
    (workdir / "d.npz").mkdir()
    before = folder_digest(workdir)
    assert_refused(cli(capsys, "sample", edm_run, "-n", "3", "--steps", "2", "--out", "d.npz"), "d.npz")
    assert folder_digest(workdir) == before, "a temporary file was left behind"


EVAL_BAD = [(["-n", "0"], ["-n"]), (["--device", "nonsense"], ["--device"]), (["--steps", "0"], ["--steps"]),
            (["--sampler", "bogus"], ["bogus", "heun"])]


@pytest.mark.parametrize("args,names", EVAL_BAD, ids=[" ".join(a) for a, _ in EVAL_BAD])
def test_eval_bad_argument(capsys, workdir, edm_run, args, names):
    before = folder_digest(edm_run)
    assert_refused(cli(capsys, "eval", edm_run, *args), *names)
    assert folder_digest(edm_run) == before and os.listdir(workdir) == []


LIKELIHOOD_BAD = [(["-n", "0"], ["-n"]), (["--hutchinson", "0"], ["--hutchinson"]),
                  (["--batch-size", "0"], ["--batch-size"]), (["--device", "nonsense"], ["--device"]),
                  (["--method", "bogus"], ["bogus", "ode"]),
                  (["--elbo"], ["elbo", "vp-discrete"])]  # an EDM run has no ELBO


@pytest.mark.parametrize("args,names", LIKELIHOOD_BAD, ids=[" ".join(a) for a, _ in LIKELIHOOD_BAD])
def test_likelihood_bad_argument(capsys, workdir, edm_run, args, names):
    before = folder_digest(edm_run)
    assert_refused(cli(capsys, "likelihood", edm_run, "-n", "5", *args), *names)
    assert folder_digest(edm_run) == before and os.listdir(workdir) == []


@pytest.mark.parametrize("command", [["likelihood"], ["likelihood", "--elbo"]])
def test_likelihood_on_blur_names_the_family(capsys, workdir, blur_run, command):
    before = folder_digest(blur_run)
    assert_refused(cli(capsys, *command, blur_run, "-n", "5"), "'blur'", blur_run)
    assert folder_digest(blur_run) == before


@pytest.mark.parametrize("command", [["sample", "-n", "3", "--out", "s.npz"], ["eval", "-n", "3"],
                                     ["likelihood", "-n", "3"]], ids=["sample", "eval", "likelihood"])
def test_classifier_run_draws_no_samples(capsys, workdir, classifier_run, command):
    before = folder_digest(classifier_run)
    assert_refused(cli(capsys, command[0], classifier_run, *command[1:]), "'classifier'", classifier_run)
    assert folder_digest(classifier_run) == before and os.listdir(workdir) == []


def test_sample_not_a_run(capsys, workdir):
    assert_refused(cli(capsys, "sample", workdir / "nope", "-n", "3", "--out", "s.npz"), "nope", "config.json")
    assert os.listdir(workdir) == []


# ------------------------------------------------------------------------------- 5b. a hand-edited run folder
RUN_EDITS = {
    "config-not-json": lambda run: open(os.path.join(run, "config.json"), "w").write("{"),
    "hidden-changed": lambda run: _edit_config(run, lambda c: c["model"].update(hidden=32)),
    "hidden-zero": lambda run: _edit_config(run, lambda c: c["model"].update(hidden=0)),
    "hidden-string": lambda run: _edit_config(run, lambda c: c["model"].update(hidden="abc")),
    "sampler-unknown": lambda run: _edit_config(run, lambda c: c["sample"].update(sampler="bogus")),
}
#: edits that today end in a traceback (exit 1): load_run hands the stored config to the model without
#: validate_config, and load_weights lets load_state_dict's RuntimeError (a shape mismatch) escape


def _edit_config(run, change):
    path = os.path.join(run, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    change(cfg)
    with open(path, "w") as f:
        json.dump(cfg, f)


@pytest.mark.parametrize("edit", [
    name for name in RUN_EDITS])
def test_sample_hand_edited_run(capsys, workdir, edm_run, edit):
    run = str(workdir.parent / "edited")
    shutil.copytree(edm_run, run)
    RUN_EDITS[edit](run)
    before = folder_digest(run)
    names = ["sampler", "bogus"] if edit == "sampler-unknown" else ["config.json"]  # (the sampler: from the run)
    assert_refused(cli(capsys, "sample", run, "-n", "3", "--out", "s.npz"), *names, code=(2, 3))
    assert folder_digest(run) == before and os.listdir(workdir) == []


# ------------------------------------------------------------------------------------------- 5c. a diverged run
DIVERGE = ["train.lr=1e30", "train.grad_clip=0", "train.warmup=0"]


def test_diverged_training_exit_3(capsys, workdir):
    out = workdir / "r"
    err = assert_refused(cli(capsys, "train", "moons-edm", "--out", out, *TINY, *TOY_DATA, *DIVERGE), "r/state/step_",
                         code=(3,))
    assert "inf" in err or "nan" in err.lower()
    assert (out / "config.json").is_file() and (out / "state").is_dir()  # the last good checkpoint is kept


def test_diverged_run_advice_can_be_followed(capsys, workdir):
    out = workdir / "r"
    err = assert_refused(cli(capsys, "train", "moons-edm", "--out", out, *TINY, *TOY_DATA, *DIVERGE), code=(3,))
    if "before resuming" not in err:  # fixed by not advising an impossible resume
        return
    before = folder_digest(out)
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "train.lr=0.001")
    assert rc == 0, f"the advice of the divergence message was refused: {err}"
    assert folder_digest(out) != before


# --------------------------------------------------------------------------- 6. eval asks for more than there is
def test_eval_more_than_held_out_says_so(capsys, workdir, edm_run):
    before = folder_digest(edm_run)
    rc, out, err = cli(capsys, "eval", edm_run, "-n", "500", "--steps", "2")
    assert rc == 0, err
    assert "Traceback" not in out + err
    assert "500" in err and str(N_TEST) in err, f"no note on stderr naming the number evaluated: {err!r}"
    assert f"{N_TEST} samples" in out
    assert folder_digest(edm_run) == before


# --------------------------------------------------------------------------------------------- 7. data files
def _empty(p):
    p.write_bytes(b"")


def _zero_d(p):
    np.save(p, np.float64(3.0))


def _three_d(p):
    np.save(p, np.zeros((10, 2, 2)))


def _no_rows(p):
    np.save(p, np.zeros((0, 2)))


def _not_utf8(p):
    p.write_bytes(b"1.0,2.0\n3.0,\xff4.0\n")


DATA_FILES = [("empty.npy", _empty), ("zerod.npy", _zero_d), ("threed.npy", _three_d), ("norows.npy", _no_rows),
              ("latin1.csv", _not_utf8), ("missing.npy", None)]


@pytest.mark.parametrize("filename,make", DATA_FILES, ids=[d[0] for d in DATA_FILES])
def test_train_bad_data_file(capsys, workdir, tmp_path, filename, make):
    data = tmp_path / "data"
    data.mkdir()
    path = data / filename
    if make:
        make(path)
    before = folder_digest(data)
    out = workdir / "r"
    assert_refused(cli(capsys, "train", "moons-edm", "--out", out, *TINY, "data.name=array", f"data.path={path}"),
                   str(path))
    assert not out.exists() and os.listdir(workdir) == []
    assert folder_digest(data) == before


def test_train_array_without_path(capsys, workdir):
    out = workdir / "r"
    assert_refused(cli(capsys, "train", "moons-edm", "--out", out, *TINY, "data.name=array"), "data.path")
    assert not out.exists()


def test_run_on_user_data_samples_from_anywhere(capsys, tmp_path, monkeypatch):
    """A relative ``data.path`` is stored absolute: the run samples (and loads its data) from another directory."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    np.save(a / "points.npy", np.random.default_rng(0).standard_normal((300, 2)))
    monkeypatch.chdir(a)
    rc, _, err = cli(capsys, "train", "moons-edm", "--out", "run", *TINY, "data.name=array", "data.path=points.npy")
    assert rc == 0, err
    with open(a / "run" / "config.json") as f:
        assert json.load(f)["data"]["path"] == str(a / "points.npy")
    monkeypatch.chdir(b)
    rc, out, err = cli(capsys, "sample", a / "run", "-n", "5", "--out", "s.npz")
    assert rc == 0, err
    assert os.listdir(b) == ["s.npz"]
    with np.load(b / "s.npz") as z:
        assert z["samples"].shape == (5, 2)


# ------------------------------------------------------------------------------------------------------ 8. help
def _help_entries(text: str) -> dict[str, str]:
    """``{invocation: help text}`` of the ``options:`` section of an argparse help (wrapped lines joined)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip(":") in ("options", "optional arguments"))
    entries: dict[str, str] = {}
    current = None
    for line in lines[start + 1:]:
        if not line.strip():
            break
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if m:
            current = m.group(1)
            entries[current] = m.group(2) or ""
        else:
            assert current is not None and line.startswith("   "), f"unexpected help line {line!r}"
            entries[current] = (entries[current] + " " + line.strip()).strip()
    return entries


def _subparser(command):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


HELP_COMMANDS = ["train", "sample", "eval", "likelihood"]


@pytest.mark.parametrize("command", HELP_COMMANDS)
def test_help_every_option_explained(capsys, command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    rc, out, err = cli(capsys, command, "--help")
    assert rc == 0 and err == "" and out.startswith(f"usage: unidm {command}")
    entries = _help_entries(out)
    flags = {flag: text for inv, text in entries.items() for flag in re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", inv)}
    sp = _subparser(command)
    for action in sp._actions:
        for flag in action.option_strings:
            assert flag in flags, f"{command}: {flag} not in the help"
            assert len(flags[flag].strip()) > 3, f"{command}: {flag} has no help text"
        if action.option_strings and action.default not in (None, False, "==SUPPRESS==") and action.dest != "help":
            text = flags[action.option_strings[0]]
            assert "(default: " in text, f"{command}: {action.option_strings[0]} has default {action.default!r} " \
                                         f"but its help does not show it: {text!r}"


@pytest.mark.parametrize("command", HELP_COMMANDS)
def test_help_states_each_default_once(capsys, command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    rc, out, _ = cli(capsys, command, "--help")
    assert rc == 0
    bad = {inv: text for inv, text in _help_entries(out).items()
           if "(default: None)" in text or len(re.findall(r"\bdefault\b", text)) > 1}
    assert not bad, f"{command}: placeholder or doubled defaults: {bad}"


# -------------------------------------------------------------------------------------------- 9. a sampled file
def test_sample_writes_exactly_the_npz(capsys, workdir, edm_run):
    before = folder_digest(edm_run)
    rc, out, err = cli(capsys, "sample", edm_run, "-n", "5", "--out", "s.npz")
    assert rc == 0, err
    assert err == ""
    assert os.listdir(workdir) == ["s.npz"], os.listdir(workdir)
    assert "s.npz" in out
    with np.load(workdir / "s.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["samples", "seeds"]
        assert z["samples"].shape == (5, 2) and np.isfinite(z["samples"]).all()
        assert z["seeds"].shape == (5,) and z["seeds"].tolist() == [0, 1, 2, 3, 4]
    assert folder_digest(edm_run) == before, "sample --out wrote into the run folder"


# --------------------------------------------------------------------------------------- a real process, no traceback
def _subprocess(*argv, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "unidm", *map(str, argv)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_process_errors_are_one_line(workdir, edm_run, blur_run):
    """Through ``python -m unidm``: a config value, a sampler option and a family without likelihood, each one line
    on stderr and exit 2, without a traceback (three commands in one test to pay for one import each)."""
    assert_refused(_subprocess("train", "moons-edm", "--out", "r", "train.steps=abc", cwd=workdir), "train.steps")
    assert_refused(_subprocess("sample", edm_run, "-n", "3", "--option", "bogus=1", cwd=workdir), "bogus")
    assert_refused(_subprocess("likelihood", blur_run, "-n", "3", cwd=workdir), "'blur'")
    assert os.listdir(workdir) == []
