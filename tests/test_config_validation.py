"""The config's contract with its user: every bad value is refused before any work starts, with one line that
names the key and the value; resuming refuses a config that would make another run."""

import os

import pytest

from unidm.config import (
    RESUMABLE_KEYS, RunConfig, SampleConfig, apply_overrides, check_resume, parse_value, resolve_data_paths,
    safe_run_name, validate_config,
)
from unidm.presets import PRESETS, get_preset


def _validated(*overrides: str) -> RunConfig:
    cfg = apply_overrides(RunConfig(), list(overrides))
    validate_config(cfg)
    return cfg


# (override, text the message must hold besides the key)
BAD = [
    ("train.steps=2.5", "2.5"), ("train.steps=abc", "'abc'"), ("train.steps=true", "True"),
    ("train.steps=0", "0"), ("train.steps=-5", "-5"), ("train.steps=1e3", "1000.0"), ("train.steps=null", "None"),
    ("train.batch_size=0", "0"), ("train.log_every=0", "0"), ("train.ckpt_every=0", "0"),
    ("train.grad_accum=0", "0"), ("train.grad_accum=3", "3"),  # 512 is not divisible by 3
    ("train.keep_last=-1", "-1"), ("train.num_threads=-1", "-1"), ("train.warmup=-1", "-1"),
    ("train.warmup=1.5", "1.5"),
    ("train.seed=-1", "-1"), ("train.seed=0.5", "0.5"), (f"train.seed={2**63}", str(2**63)),
    ("train.ema_decay=2", "2"), ("train.ema_decay=1", "1"), ("train.ema_decay=-0.1", "-0.1"),
    ("train.lr=0", "0"), ("train.lr=-1e-3", "-0.001"), ("train.lr=1e400", "inf"), ("train.lr=NaN", "nan"),
    ("train.lr=fast", "'fast'"), ("train.lr=true", "True"),
    ("train.weight_decay=-0.1", "-0.1"), ("train.grad_clip=-1", "-1"), ("train.grad_clip=Infinity", "inf"),
    ("train.min_lr_ratio=1.5", "1.5"), ("train.min_lr_ratio=-0.5", "-0.5"),
    ("train.betas=[0.9]", "0.9"), ("train.betas=[0.9, 1.0]", "1.0"), ("train.betas=[0.9, -0.1]", "-0.1"),
    ("train.betas=[0.9, \"x\"]", "'x'"), ("train.betas=[0.9, 0.99, 0.999]", "0.999"),
    ("train.decay=none2", "'none2'"), ("train.decay=null", "None"), ("train.precision=fp64", "'fp64'"),
    ("train.device=gpu", "'gpu'"), ("train.device=cuda:x", "'cuda:x'"), ("train.device=3", "3"),
    ("train.precision=fp16", "cpu"),  # with train.device=cpu (PREREQUISITES)
    ("train.compile=1", "1"), ("train.progress=yes", "'yes'"), ("train.ema_warmup=0", "0"),
    ("sample.steps=0", "0"), ("sample.steps=2.5", "2.5"), ("sample.n=0", "0"), ("sample.n=ten", "'ten'"),
    ("sample.seed=-3", "-3"), ("sample.sampler=7", "7"), ("sample.grid=", "''"),
    ("family=gausian", "'gausian'"), ("family=3", "3"),
    ("name=../../x", "'../../x'"), ("name=/abs/path", "'/abs/path'"), ("name=a/b", "'a/b'"),
    ("name=a\\b", "'a\\\\b'"), ("name=..", "'..'"), ("name=a..b", "'a..b'"), ("name=a\tb", "'a\\tb'"),
    ("name=5", "5"),
    ("model.hidden=0", "0"), ("model.depth=-1", "-1"), ("model.hidden=1e400", "inf"),
    ("model.channel_mult=[1, 0]", "0"), ("model.dropout=1", "1"), ("model.dropout=-0.1", "-0.1"),
    ("method.label_dropout=1.5", "1.5"), ("method.clean_fraction=2", "2"), ("method.sigma_data=NaN", "nan"),
    ("method.noise_options.p_mean=-Infinity", "-inf"),
    ("data.name=moon", "'moon'"), ("data.noise=NaN", "nan"), ("data.test_fraction=0", "0"),
    ("data.test_fraction=1", "1"), ("data.path=3", "3"), ("data.path=", "''"),
]


#: overrides applied before the one tested
PREREQUISITES = {
    "train.precision=fp16": ["train.device=cpu"],
    **{f"data.test_fraction={v}": ["data.name=digits"] for v in ("0", "1", "0.5")},
    **{f"data.path={v}": ["data.name=array"] for v in ("3", "", "points.npy")},
}


@pytest.mark.parametrize("override,shown", BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_naming_key_and_value(override, shown):
    key = override.split("=", 1)[0]
    with pytest.raises(ValueError) as info:
        _validated(*PREREQUISITES.get(override, []), override)
    msg = str(info.value)
    assert "\n" not in msg
    assert key.split(".")[-1].split("[")[0] in msg and key.split(".")[0] in msg, msg
    assert shown in msg, msg


GOOD = [
    "train.steps=1", "train.lr=1", "train.lr=3e-4", "train.weight_decay=0", "train.grad_clip=0",
    "train.ema_decay=0", "train.ema_decay=0.9999", "train.min_lr_ratio=0", "train.min_lr_ratio=1",
    "train.betas=[0, 0.5]", "train.decay=none", "train.decay=linear", "train.precision=bf16",
    "train.device=cuda", "train.device=cuda:1", "train.device=mps", "train.device=cpu", "train.keep_last=0",
    "train.warmup=0", "train.num_threads=0", "train.grad_accum=4", "train.seed=0", f"train.seed={2**63 - 1}",
    "sample.steps=1", "sample.n=1", "name=my run", "name=moons-edm_2", "name=", "model.num_classes=0",
    "model.dropout=0", "method.label_dropout=1", "method.noise_options.p_mean=-1.2", "data.noise=0",
    "data.test_fraction=0.5", "data.path=points.npy",  # validate_config does not look for the file
]


@pytest.mark.parametrize("override", GOOD)
def test_good_values_pass(override):
    _validated(*PREREQUISITES.get(override, []), override)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    cfg = get_preset(name)
    validate_config(cfg)
    validate_config(RunConfig.from_json(cfg.to_json()))


def test_check_sample_hook_is_called_last():
    seen = []
    validate_config(RunConfig(), check_sample=seen.append)
    assert seen == [RunConfig().sample]

    def refuse(s: SampleConfig) -> None:
        raise ValueError(f"sample.sampler={s.sampler!r} is not a sampler of family 'gaussian'")

    with pytest.raises(ValueError, match="sample.sampler=None"):
        validate_config(RunConfig(), check_sample=refuse)
    with pytest.raises(ValueError, match="train.steps"):  # the generic checks come first
        validate_config(apply_overrides(RunConfig(), ["train.steps=0"]), check_sample=refuse)


def test_parse_value():
    assert parse_value("none") == "none" and parse_value("None") == "None"
    assert parse_value("null") is None and parse_value("NULL") is None
    assert parse_value("True") is True and parse_value("3") == 3 and parse_value("1e-3") == 1e-3
    assert parse_value("[1, 2]") == [1, 2] and parse_value('{"a": 1}') == {"a": 1} and parse_value("heun") == "heun"
    for text in ("[1,2", "{", '{"a": 1', " [1,, 2]"):
        with pytest.raises(ValueError, match="model.channel_mult"):
            parse_value(text, "model.channel_mult")


def test_none_is_a_decay_name_not_null():
    cfg = _validated("train.decay=none")
    assert cfg.train.decay == "none"


@pytest.mark.parametrize("override,needle", [
    ("train.steps", "'train.steps'"),
    ("trian.steps=3", "'trian.steps'"),
    ("train.stpes=3", "'stpes'"),
    ("sample.sampelr=heun", "'sampelr'"),
    ("data={}", "'data'"),
    ("family.x=1", "'family.x'"),
    ("train.steps.x=1", "'train.steps.x'"),
    ("model.channel_mult=[1,2", "model.channel_mult"),
    ("train..steps=3", "'train..steps=3'"),
    ("train.betas=0.9", "train.betas"),
    ("train=3", "'train'"),
])
def test_apply_overrides_names_the_key(override, needle):
    with pytest.raises(ValueError) as info:
        apply_overrides(RunConfig(), [override])
    assert needle in str(info.value), str(info.value)


def test_from_dict_and_from_json_name_the_source():
    with pytest.raises(ValueError, match=r"^cfg/run\.json: unknown config section: 'trian'"):
        RunConfig.from_dict({"trian": {}}, source="cfg/run.json")
    with pytest.raises(ValueError, match=r"^cfg/run\.json: .*'data' must be a mapping"):
        RunConfig.from_dict({"data": "moons"}, source="cfg/run.json")
    with pytest.raises(ValueError, match="'model' must be a mapping"):
        RunConfig.from_dict({"model": None})
    with pytest.raises(ValueError, match="'train' must be a mapping"):
        RunConfig.from_dict({"train": [1, 2]})
    with pytest.raises(ValueError, match=r"^x\.json: a config must be a mapping.*list"):
        RunConfig.from_dict([1], source="x.json")
    with pytest.raises(ValueError, match=r"x\.json is not valid JSON: .* line 1, column"):
        RunConfig.from_json('{"family": ', source="x.json")
    assert RunConfig.from_dict({"train": None, "sample": None}) == RunConfig()


@pytest.mark.parametrize("name", ["../../x", "/abs/path", "a/b", "a\\b", "..", ".", "a..b", "", "   ", "a\x00b",
                                  "a\nb", "a\u202eb", "C:x", "x" * 201, None, 3])
def test_safe_run_name_refuses(name):
    with pytest.raises(ValueError) as info:
        safe_run_name(name)
    assert repr(name)[:50] in str(info.value)


def test_safe_run_name_keeps_good_names():
    assert safe_run_name("moons-edm") == "moons-edm"
    assert safe_run_name("  my run  ") == "my run"
    assert safe_run_name("digits.v2") == "digits.v2"
    assert safe_run_name("é" * 100) == "é" * 100


def test_resolve_data_paths(tmp_path, monkeypatch):
    (tmp_path / "pts.npy").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    cfg = apply_overrides(RunConfig(), ["data.name=array", "data.path=pts.npy"])
    out = resolve_data_paths(cfg)
    assert out.data["path"] == str(tmp_path / "pts.npy") and os.path.isabs(out.data["path"])
    assert cfg.data["path"] == "pts.npy"  # the input is left alone
    assert resolve_data_paths(out) == out  # idempotent
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "pts.npy").write_bytes(b"x")
    assert resolve_data_paths(cfg, base_dir=str(sub)).data["path"] == str(sub / "pts.npy")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_paths(apply_overrides(cfg, ["data.path=~/pts.npy"])).data["path"] == str(tmp_path / "pts.npy")
    with pytest.raises(FileNotFoundError, match=r"data\.path: .*missing\.npy"):
        resolve_data_paths(apply_overrides(cfg, ["data.path=missing.npy"]))
    with pytest.raises(ValueError, match=r"data\.path .*3"):
        resolve_data_paths(apply_overrides(cfg, ["data.path=3"]))
    with pytest.raises(ValueError, match=r"data\.path"):
        resolve_data_paths(apply_overrides(cfg, ["data.path=  "]))
    assert resolve_data_paths(RunConfig()) == RunConfig()  # no path: nothing to do


# ----------------------------------------------------------------------------------------------------- resume

def _stored() -> RunConfig:
    return get_preset("moons-edm")


def test_resume_with_the_same_config():
    assert check_resume(_stored(), _stored(), 1000) == []
    # an int written as a float in the stored JSON is the same value
    d = _stored().to_dict()
    d["train"]["lr"] = 2
    e = _stored().to_dict()
    e["train"]["lr"] = 2.0
    assert check_resume(RunConfig.from_dict(d), RunConfig.from_dict(e), 10) == []


@pytest.mark.parametrize("override", [
    "train.steps=5000", "train.log_every=10", "train.ckpt_every=100", "train.keep_last=0", "train.progress=false",
    "train.device=cuda", "train.num_threads=4", "train.compile=true", "train.grad_accum=2", "sample.sampler=euler",
    "sample.steps=8", "sample.n=10", "sample.seed=3", "sample.grid=uniform-t",
])
def test_resume_allows_run_independent_keys(override):
    key, value = override.split("=")
    changes = check_resume(_stored(), apply_overrides(_stored(), [override]), 1000)
    assert any(c.startswith(f"{key}: ") for c in changes), changes
    assert key in RESUMABLE_KEYS or key.startswith("sample.")


@pytest.mark.parametrize("override", [
    "family=masked", "name=other", "data.name=circles", "data.noise=0.1", "model.hidden=128", "model.arch=unet",
    "model.dropout=0.1", "method.process=vp", "method.noise_options.p_mean=-1.2", "method.conditional=true",
    "train.seed=1", "train.batch_size=256", "train.lr=1e-3", "train.betas=[0.9, 0.999]", "train.weight_decay=0.1",
    "train.warmup=50", "train.decay=linear", "train.min_lr_ratio=0.1", "train.grad_clip=0", "train.ema_decay=0.99",
    "train.ema_warmup=false", "train.precision=bf16",
])
def test_resume_refuses_run_defining_keys(override):
    key, value = override.split("=")
    stored = _stored()
    given = apply_overrides(stored, [override])
    old = _flat_get(stored, key)
    with pytest.raises(ValueError) as info:
        check_resume(stored, given, 1000)
    msg = str(info.value)
    assert f"{key}: " in msg and repr(old) in msg and repr(_flat_get(given, key)) in msg, msg


def _flat_get(cfg: RunConfig, key: str):
    node = cfg.to_dict()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _UNSHOWN
        node = node[part]
    return node


class _Unshown:
    def __repr__(self) -> str:
        return "(unset)"


_UNSHOWN = _Unshown()


def test_resume_names_every_differing_key_and_unset_ones():
    stored = _stored()
    given = apply_overrides(stored, ["train.seed=7", "data.n_train=100", "sample.n=3"])
    with pytest.raises(ValueError) as info:
        check_resume(stored, given, 10)
    msg = str(info.value)
    assert "train.seed: 0 -> 7" in msg and "data.n_train: (unset) -> 100" in msg and "sample.n" not in msg


def test_resume_steps_never_below_the_step_reached():
    stored = _stored()  # 2500 steps
    with pytest.raises(ValueError, match=r"train\.steps=1000 is below the step the run has reached \(2000\)"):
        check_resume(stored, apply_overrides(stored, ["train.steps=1000"]), 2000)
    assert check_resume(stored, apply_overrides(stored, ["train.steps=2000"]), 2000) == [
        "train.steps: 2500 -> 2000",
        f"note: the cosine learning-rate decay is spread over 2000 steps now, so the learning rate at step 2000 goes "
        f"from {_lr(stored, 2000):.3g} to {_lr(apply_overrides(stored, ['train.steps=2000']), 2000):.3g}"]


def _lr(cfg: RunConfig, step: int) -> float:
    from unidm.train import lr_at

    return lr_at(step, cfg.train)


def test_resume_reports_the_learning_rate_jump_only_when_there_is_one():
    stored = _stored()
    longer = apply_overrides(stored, ["train.steps=5000"])
    notes = [c for c in check_resume(stored, longer, 2000) if c.startswith("note:")]
    assert len(notes) == 1 and f"{_lr(stored, 2000):.3g} to {_lr(longer, 2000):.3g}" in notes[0]
    assert _lr(longer, 2000) > _lr(stored, 2000)
    flat = apply_overrides(stored, ["train.decay=none"])
    assert check_resume(flat, apply_overrides(flat, ["train.steps=5000"]), 2000) == ["train.steps: 2500 -> 5000"]
    # still in the warm-up (100 steps): the decay has not started, nothing jumps
    assert check_resume(stored, longer, 50) == ["train.steps: 2500 -> 5000"]
