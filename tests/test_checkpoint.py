"""Checkpoints: atomic folders verified by SHA-256, keep-last-K, fallback past broken ones, and no pickle ever
loaded: a pickle whose unpickling would create a marker file is refused and the marker never appears."""

import io
import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from unidm.config import apply_overrides
from unidm.presets import get_preset
from unidm.run import build_data, build_model, load_run
from unidm.train import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint, load_safetensors,
                         param_digest, train, verify_checkpoint)
from unidm.train.checkpoint import _sha256

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model.hidden=32", "model.depth=1", "train.batch_size=64", "data.n_train=2000", "data.n_test=500",
        "train.progress=false", "train.num_threads=1", "train.steps=30", "train.ckpt_every=10", "train.warmup=5"]


def _build(*overrides):
    cfg = apply_overrides(get_preset("moons-edm"), [*TINY, *overrides])
    data = build_data(cfg)
    torch.manual_seed(0)
    return cfg, data, build_model(cfg, data)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 30-step run keeping every checkpoint (0, 10, 20, 30); tests work on copies."""
    path = str(tmp_path_factory.mktemp("ckpt") / "run")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg, data, model = _build("train.keep_last=0")
    train(model, data, cfg.train, path, config_dict=cfg.to_dict(), log=lambda s: None)
    torch.set_num_threads(n)
    return path


def _copy(run_dir, tmp_path):
    dst = str(tmp_path / "run")
    shutil.copytree(run_dir, dst)
    return dst


def test_checkpoint_holds_the_final_weights_and_keep_last(run_dir, tmp_path):
    steps = [int(os.path.basename(p)[5:]) for p in list_checkpoints(run_dir)]
    assert steps == [0, 10, 20, 30]
    ck = load_checkpoint(list_checkpoints(run_dir)[-1])
    assert ck.step == 30 and sorted(os.listdir(ck.path)) == ["model.safetensors", "optimizer.safetensors",
                                                             "state.json"]
    assert ck.extra["param_digests"] == [param_digest(ck.model)]
    run = load_run(run_dir, weights="model")
    assert run.step == 30 and param_digest(run.model.state_dict()) == param_digest(ck.model)

    cfg, data, model = _build("train.keep_last=2")
    path = str(tmp_path / "k2")
    train(model, data, cfg.train, path, log=lambda s: None)
    assert [os.path.basename(p) for p in list_checkpoints(path)] == ["step_00000020", "step_00000030"]
    assert not [n for n in os.listdir(os.path.join(path, "state")) if n.startswith(".tmp")]


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 3)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


CORRUPTIONS = {
    "truncated weights": ("model.safetensors", _truncate),
    "flipped byte in optimizer": ("optimizer.safetensors", _flip_byte),
    "truncated state.json": ("state.json", _truncate),
    "missing state.json": ("state.json", os.unlink),
    "missing weights": ("model.safetensors", os.unlink),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_broken_newest_checkpoint_is_refused_naming_the_file(run_dir, tmp_path, kind):
    path = _copy(run_dir, tmp_path)
    name, damage = CORRUPTIONS[kind]
    newest = list_checkpoints(path)[-1]
    damage(os.path.join(newest, name))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as e:
        load_checkpoint(newest)
    assert newest in str(e.value)
    warnings = []
    ck = latest_checkpoint(path, warn=warnings.append)
    assert ck.step == 20
    assert len(warnings) == 1 and os.path.join(newest, name) in warnings[0]


def test_resume_falls_back_past_a_corrupt_checkpoint_and_ends_bitwise_equal(run_dir, tmp_path):
    path = _copy(run_dir, tmp_path)
    reference = load_checkpoint(list_checkpoints(path)[-1])
    _truncate(os.path.join(list_checkpoints(path)[-1], "model.safetensors"))
    ours = [os.path.join(path, "state", ".unidm-tmp-0123456789abcdef-step_00000040"),  # a killed write: removed,
            os.path.join(path, "state", ".tmp-step_ab3_x9q0")]  # also as earlier versions named it
    for p in ours:
        os.makedirs(p)
    foreign = [os.path.join(path, ".tmp-x"), os.path.join(path, ".unidm-tmp-notours"),  # anything else stays
               os.path.join(path, ".unidm-tmp-0123456789abcdef-notes.txt"), os.path.join(path, "state", ".tmp-step_x")]
    os.makedirs(foreign[-1])
    for p in foreign[:-1]:
        with open(p, "w") as f:
            f.write("mine")
    cfg, data, model = _build("train.keep_last=0")
    lines = []
    train(model, data, cfg.train, path, resume=True, log=lines.append)
    assert any("skipping" in ln and "step_00000030" in ln and "model.safetensors" in ln for ln in lines)
    assert any("resumed from" in ln and "step_00000020" in ln for ln in lines)
    final = load_checkpoint(list_checkpoints(path)[-1])
    assert final.step == 30
    assert param_digest(final.model) == param_digest(reference.model)
    assert param_digest(final.ema) == param_digest(reference.ema)
    assert not any(os.path.exists(p) for p in ours)
    assert all(os.path.exists(p) for p in foreign)


def test_fresh_run_refuses_a_folder_with_checkpoints_and_resume_needs_one(run_dir, tmp_path):
    cfg, data, model = _build()
    with pytest.raises(FileExistsError, match="--resume"):
        train(model, data, cfg.train, _copy(run_dir, tmp_path), log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="no whole checkpoint"):
        train(model, data, cfg.train, str(tmp_path / "empty"), resume=True, log=lambda s: None)


# --- pickles -------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): the proof that a loader ran a pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickles(marker: str) -> dict[str, bytes]:
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "x": _Payload(marker)}, buf)
    out = {f"protocol {p}": pickle.dumps({"x": _Payload(marker)}, protocol=p) for p in (0, 2, 5)}
    out["torch.save zip"] = buf.getvalue()
    return out


@pytest.fixture
def marker(tmp_path):
    m = str(tmp_path / "PWNED")
    # the control: these payloads do run code when unpickled, so the marker's absence below means something
    pickle.loads(_pickles(m)["protocol 2"])
    assert os.path.exists(m)
    os.unlink(m)
    torch.load(io.BytesIO(_pickles(m)["torch.save zip"]), weights_only=False)
    assert os.path.exists(m)
    os.unlink(m)
    return m


@pytest.fixture
def no_unpickling(monkeypatch):
    """Make every pickle entry point explode, so a loader that reached one would fail loudly, not quietly."""

    def boom(*a, **k):
        raise AssertionError("a pickle loader was called")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, boom)
    monkeypatch.setattr(torch, "load", boom)


def _rehash(ck_dir):
    """Make state.json's SHA-256 match the (malicious) files, so the loader really reaches the parser."""
    state_path = os.path.join(ck_dir, "state.json")
    with open(state_path) as f:
        state = json.load(f)
    state["sha256"] = {n: _sha256(os.path.join(ck_dir, n)) for n in state["sha256"]}
    with open(state_path, "w") as f:
        json.dump(state, f)


@pytest.mark.parametrize("target", ["model.safetensors", "optimizer.safetensors"])
def test_checkpoint_whose_safetensors_is_a_pickle_is_refused_without_running_it(run_dir, tmp_path, marker,
                                                                                 no_unpickling, target):
    for kind, payload in _pickles(marker).items():
        path = str(tmp_path / kind.replace(" ", "_"))
        shutil.copytree(run_dir, path)
        newest = list_checkpoints(path)[-1]
        with open(os.path.join(newest, target), "wb") as f:
            f.write(payload)
        _rehash(newest)
        verify_checkpoint(newest)  # the hashes match: only the format check stands between us and the payload
        with pytest.raises(CheckpointError, match=target.replace(".", r"\.")):
            load_checkpoint(newest)
        with pytest.raises(CheckpointError):
            load_safetensors(os.path.join(newest, target))
        warnings = []
        assert latest_checkpoint(path, warn=warnings.append).step == 20, kind
        assert target in warnings[0]
        assert not os.path.exists(marker), kind


def test_checkpoint_folder_holding_a_pickle_file_is_refused(run_dir, tmp_path, marker, no_unpickling):
    path = _copy(run_dir, tmp_path)
    newest = list_checkpoints(path)[-1]
    with open(os.path.join(newest, "optimizer.pt"), "wb") as f:
        f.write(_pickles(marker)["torch.save zip"])
    with pytest.raises(CheckpointError, match="unexpected files.*optimizer.pt"):
        load_checkpoint(newest)
    assert latest_checkpoint(path, warn=lambda s: None).step == 20
    assert not os.path.exists(marker)


def test_load_run_refuses_a_pickled_model_file(run_dir, tmp_path, marker, no_unpickling, capsys):
    for kind, payload in _pickles(marker).items():
        path = str(tmp_path / kind.replace(" ", "_"))
        shutil.copytree(run_dir, path)
        with open(os.path.join(path, "model.safetensors"), "wb") as f:
            f.write(payload)
        run = load_run(path)  # falls back to the newest whole checkpoint, saying why
        assert run.step == 30
        assert "model.safetensors" in capsys.readouterr().out
        shutil.rmtree(os.path.join(path, "state"))
        with pytest.raises(CheckpointError, match="model.safetensors"):
            load_run(path)
        assert not os.path.exists(marker), kind


def test_safetensors_loader_rejects_foreign_and_truncated_files(tmp_path):
    good = str(tmp_path / "w.safetensors")
    save_file({"a": torch.arange(6.0)}, good)
    assert torch.equal(load_safetensors(good)["a"], torch.arange(6.0))
    for name, data in {"empty": b"", "short": b"\x01\x02", "json": b'{"a": 1}', "text": b"hello world, not it"}.items():
        p = str(tmp_path / f"{name}.safetensors")
        with open(p, "wb") as f:
            f.write(data)
        with pytest.raises(CheckpointError, match=name):
            load_safetensors(p)
    _truncate(good)
    with pytest.raises(CheckpointError, match="w.safetensors"):
        load_safetensors(good)


def test_load_weights_refuses_a_state_of_another_model_naming_both():
    from torch import nn

    from unidm.run import load_weights
    from unidm.train import CheckpointError

    with pytest.raises(CheckpointError, match="guide.safetensors does not match the run's model: missing"):
        load_weights(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)).state_dict(), "guide.safetensors",
                     "the run's model")


@pytest.mark.parametrize("low_bytes", [b"\x80", b"PK"])
def test_a_safetensors_header_length_that_looks_like_a_pickle_or_zip_signature_still_loads(tmp_path, low_bytes):
    """The 8-byte header length of a real safetensors file can begin with 0x80 (a pickle's first byte) or "PK" (a
    zip's): such a file is safetensors (its header parses), not a foreign file."""
    from safetensors.torch import save_file

    from unidm.train.checkpoint import load_safetensors

    target = int.from_bytes(low_bytes, "little")
    modulus = 256 ** len(low_bytes)
    x = torch.arange(6, dtype=torch.float32)
    path = str(tmp_path / "w.safetensors")
    save_file({"x": x}, path, metadata={"pad": ""})
    with open(path, "rb") as f:
        start = (target - int.from_bytes(f.read(8), "little")) % modulus  # each pad character adds one byte
    for pad in range(max(start - 16, 0), start + 16):
        save_file({"x": x}, path, metadata={"pad": "p" * pad})
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
        if n % modulus == target:
            break
    else:
        pytest.fail("no padding gave the wanted header length")
    with open(path, "rb") as f:
        assert f.read(len(low_bytes)) == low_bytes
    assert torch.equal(load_safetensors(path)["x"], x)
