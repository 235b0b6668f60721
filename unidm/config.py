"""Run configuration: dataclasses that round-trip to plain dicts and JSON, with ``key=value`` overrides.

A run config has six sections::

    family: "gaussian"                 # which trainable family (unidm.methods.FAMILIES)
    data:   {"name": "moons", ...}     # DATASETS[name](**rest)
    model:  {"arch": "mlp", ...}       # NETWORKS[arch](**rest), data-derived sizes filled in
    method: {"process": "edm", ...}    # the family's own options (e.g. GaussianDiffusion's)
    train:  TrainConfig                # the training loop
    sample: SampleConfig               # how samples.png / eval / `unidm sample` draw samples

Unknown keys fail with a message that lists the valid ones. Before any work starts, :func:`validate_config` checks
every value of the resolved config (types, ranges, names) and :func:`check_resume` checks that a resumed run is the
run that was started; every refusal is a one-line ``ValueError`` naming the key, the value and what is allowed
(``docs/errors.md`` lists them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable

from .train.config import TrainConfig  # re-exported: ``from unidm.config import TrainConfig`` keeps working

__all__ = ["TrainConfig", "SampleConfig", "RunConfig", "parse_value", "apply_overrides", "validate_config",
           "check_resume", "safe_run_name", "resolve_data_paths", "RESUMABLE_KEYS"]


@dataclass
class SampleConfig:
    """Defaults for drawing samples from a trained run. ``sampler``, ``steps`` and ``grid`` left ``None`` take the
    family's own defaults (``GenerativeModel.default_sampling``); ``unidm train`` stores the resolved values."""

    sampler: str | None = None
    steps: int | None = None
    grid: str | None = None
    n: int = 2000
    seed: int = 0


@dataclass
class RunConfig:
    family: str = "gaussian"
    data: dict = field(default_factory=lambda: {"name": "moons"})
    model: dict = field(default_factory=lambda: {"arch": "mlp"})
    method: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    name: str = ""
    #: written by ``unidm train``: what the model needs to know of the data (shape, kind, std, class counts, ...),
    #: so a run on the user's own file loads and samples after the file is gone (:func:`unidm.run.load_run`)
    data_info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(d["train"]["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> "RunConfig":
        """The config of mapping ``d``; unknown keys and sections that are not mappings are refused with a
        ``ValueError`` that starts with ``source`` (e.g. the config file's path) when given. Values are checked by
        :func:`validate_config`, not here."""
        try:
            return cls._from_dict(d)
        except ValueError as e:
            raise ValueError(f"{source}: {e}" if source else str(e)) from e

    @classmethod
    def _from_dict(cls, d: dict) -> "RunConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a mapping of sections (a JSON object), got {type(d).__name__}")
        d = dict(d)
        _check_keys(d, [f.name for f in dataclasses.fields(cls)], "config section")
        for k in ("data", "model", "method", "train", "sample", "data_info"):
            if k in d and (d[k] is not None or k in ("data", "model", "method")) and not isinstance(d[k], dict):
                raise ValueError(f"config section {k!r} must be a mapping, got {type(d[k]).__name__} {d[k]!r}")
        train = dict(d.pop("train", {}) or {})
        sample = dict(d.pop("sample", {}) or {})
        _check_keys(train, [f.name for f in dataclasses.fields(TrainConfig)], "train option")
        _check_keys(sample, [f.name for f in dataclasses.fields(SampleConfig)], "sample option")
        if "betas" in train:
            if not isinstance(train["betas"], (list, tuple)):
                raise ValueError(f"train.betas must be a list of two numbers, e.g. [0.9, 0.99], got {train['betas']!r}")
            train["betas"] = tuple(train["betas"])
        return cls(train=TrainConfig(**train), sample=SampleConfig(**sample), **d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str | None = None) -> "RunConfig":
        """Parse JSON ``text``; malformed JSON is refused with ``source`` (the file), the line and the column."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source or 'config'} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
                             ) from e
        return cls.from_dict(d, source)


def _check_keys(d: dict, valid: list[str], what: str) -> None:
    bad = [k for k in d if k not in valid]
    if bad:
        raise ValueError(f"unknown {what}: {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")


def parse_value(text: str, key: str | None = None) -> Any:
    """``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"true"`` -> True, ``"null"`` -> None, JSON lists/dicts; else the string.

    Only ``null`` is None: ``"none"`` stays the string (``train.decay=none`` is the decay named "none"). Text that
    starts with ``[`` or ``{`` must be valid JSON; ``[1,2`` is refused with a ``ValueError`` naming ``key``, not
    kept as a string. (``1e400`` parses to inf and ``NaN`` to nan; :func:`validate_config` refuses both.)

        >>> parse_value("none"), parse_value("null"), parse_value("[1, 2]"), parse_value("heun")
        ('none', None, [1, 2], 'heun')
    """
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "null":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip()[:1] in ("[", "{"):
            raise ValueError(f"{key or 'value'}={text!r} looks like JSON but does not parse ({e.msg} at character "
                             f"{e.pos}); write a JSON list or mapping, e.g. [1, 2] or {{\"a\": 1}}") from e
        return text


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` (or ``family=...``/``name=...``) overrides and return a new config.

    ``section.key.subkey=value`` sets one entry of a nested mapping (``method.noise_options.p_mean=-0.8``) and
    keeps its other entries; ``section.key='{"a": 1}'`` (JSON) replaces the whole mapping.

    Keys of ``train`` and ``sample`` are checked here; keys of ``data``, ``model`` and ``method`` are checked
    against the constructor they feed when the run is built, and every value by :func:`validate_config`. Every
    error names the override's key.
    """
    d = cfg.to_dict()
    top = [f.name for f in dataclasses.fields(RunConfig)]
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. train.steps=1000)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ValueError(f"override {item!r}: key {key!r} has an empty part; write section.key=value")
        if parts[0] not in top:
            raise ValueError(f"override {key!r}: unknown config section {parts[0]!r}; valid: {', '.join(top)}")
        if len(parts) == 1:
            if isinstance(d[parts[0]], dict):
                raise ValueError(f"override {key!r}: {parts[0]!r} is a section; set one of its keys, "
                                 f"e.g. {parts[0]}.name=...")
            d[parts[0]] = parse_value(value, key)
            continue
        if not isinstance(d[parts[0]], dict):
            raise ValueError(f"override {key!r}: {parts[0]!r} is not a section; write {parts[0]}=VALUE")
        node = d[parts[0]]
        for i, sub in enumerate(parts[1:-1], start=1):  # section.key.subkey sets one entry of a nested mapping
            if node.get(sub) is None:
                node[sub] = {}
            elif not isinstance(node[sub], dict):
                raise ValueError(f"override {key!r}: {'.'.join(parts[:i + 1])} is {node[sub]!r}, not a mapping")
            node = node[sub]  # to_dict's copy, so it can be edited in place
        node[parts[-1]] = parse_value(value, key)
    return RunConfig.from_dict(d)


# --------------------------------------------------------------------------------------------- validation

#: seeds must fit a torch generator together with the offsets the samplers add (``seed + i + 1_000_003``)
SEED_LIMIT = 2**63

#: ``model.*`` integers that may be 0 (every other integer in the model section is a size and must be >= 1):
#: ``num_classes`` = 0 means unconditional.
MODEL_INTS_MAY_BE_ZERO = ("num_classes",)

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _show(value: Any) -> str:
    kind = {bool: "a boolean", str: "a string", type(None): "null"}.get(type(value))
    return f"{value!r} ({kind})" if kind else repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(key: str, value: Any, low: int, high: int | None = None) -> None:
    """``value`` must be an int (not a bool, not a float) in ``[low, high)``."""
    if _is_int(value) and value >= low and (high is None or value < high):
        return
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high})"
    hint = f" (write {int(value)})" if isinstance(value, float) and value.is_integer() else ""
    raise ValueError(f"{key} must be {allowed}, got {_show(value)}{hint}")


def _check_number(key: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False,
                  high_open: bool = False) -> None:
    """``value`` must be a finite int or float in the interval given (``high=None``: no upper bound)."""
    ok = _is_number(value) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
    if not ok:
        if high is None:
            allowed = f"{'>' if low_open else '>='} {low:g}"
        else:
            allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{key} must be a finite number {allowed}, got {_show(value)}")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {_show(value)}")


def _check_name(key: str, value: Any, valid) -> None:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{key} must be one of {', '.join(map(str, valid))}; got {_show(value)}")


def _walk(node: Any, key: str):
    """Yield ``(dotted key, leaf value)`` for every leaf of nested dicts and lists (list items as ``key[i]``)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{key}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}[{i}]")
    else:
        yield key, node


def _leaf_name(key: str) -> str:
    return key.split(".")[-1].split("[")[0]


def _check_train(t: TrainConfig) -> None:
    for k in ("steps", "batch_size", "log_every", "ckpt_every", "grad_accum"):
        _check_int(f"train.{k}", getattr(t, k), 1)
    for k in ("keep_last", "num_threads", "warmup"):
        _check_int(f"train.{k}", getattr(t, k), 0)
    _check_int("train.seed", t.seed, 0, SEED_LIMIT)
    if t.batch_size % t.grad_accum:
        raise ValueError(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
    _check_number("train.lr", t.lr, 0, low_open=True)
    _check_number("train.weight_decay", t.weight_decay, 0)
    _check_number("train.grad_clip", t.grad_clip, 0)
    _check_number("train.ema_decay", t.ema_decay, 0, 1, high_open=True)
    _check_number("train.min_lr_ratio", t.min_lr_ratio, 0, 1)
    if not isinstance(t.betas, (list, tuple)) or len(t.betas) != 2:
        raise ValueError(f"train.betas must be two numbers in [0, 1), e.g. [0.9, 0.99], got {_show(t.betas)}")
    for i, b in enumerate(t.betas):
        _check_number(f"train.betas[{i}]", b, 0, 1, high_open=True)
    for k in ("ema_warmup", "compile", "progress"):
        _check_bool(f"train.{k}", getattr(t, k))
    _check_name("train.decay", t.decay, ("cosine", "linear", "none"))
    _check_name("train.precision", t.precision, ("fp32", "bf16", "fp16"))
    if not isinstance(t.device, str) or not _DEVICE.fullmatch(t.device):
        raise ValueError(f"train.device must be auto, cpu, cuda, cuda:N or mps; got {_show(t.device)}")
    if t.precision == "fp16" and t.device in ("cpu", "mps"):
        raise ValueError(f"train.precision=fp16 needs CUDA (autocast with a gradient scaler), but train.device="
                         f"{t.device}; use train.precision=bf16 there")


def _check_sample(s: SampleConfig) -> None:
    for k in ("sampler", "grid"):
        if getattr(s, k) is not None and (not isinstance(getattr(s, k), str) or not getattr(s, k)):
            raise ValueError(f"sample.{k} must be a name (or null for the family's default), got "
                             f"{_show(getattr(s, k))}")
    if s.steps is not None:
        _check_int("sample.steps", s.steps, 1)
    _check_int("sample.n", s.n, 1)
    _check_int("sample.seed", s.seed, 0, SEED_LIMIT)


def _check_sections(cfg: RunConfig) -> None:
    """data, model and method: finite numbers everywhere, probabilities where the key's name says so, positive
    sizes in the model, and the dataset's name and options."""
    for section in ("data", "model", "method"):
        if not isinstance(getattr(cfg, section), dict):
            raise ValueError(f"config section {section!r} must be a mapping, got {_show(getattr(cfg, section))}")
        for key, value in _walk(getattr(cfg, section), section):
            leaf = _leaf_name(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
            if leaf == "dropout":
                _check_number(key, value, 0, 1, high_open=True)
            elif leaf == "label_dropout" or (leaf.endswith("_fraction") and leaf != "test_fraction"):
                _check_number(key, value, 0, 1)
            elif leaf == "test_fraction":
                _check_number(key, value, 0, 1, low_open=True, high_open=True)
            elif section == "model" and _is_int(value) and value <= 0 and leaf not in MODEL_INTS_MAY_BE_ZERO:
                raise ValueError(f"{key} must be an integer >= 1 (a size), got {value!r}")
            elif section == "data" and (leaf == "path" or leaf.endswith("_path")) and (
                    not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{key} must be the path of a file or folder, got {_show(value)}")
    from .data import DATASETS, check_data_options

    options = dict(cfg.data)
    name = options.pop("name", None)
    if name is None:
        raise ValueError("data.name is missing; set it, e.g. data.name=moons")
    _check_name("data.name", name, sorted(DATASETS))
    check_data_options(name, options)


def validate_config(cfg: RunConfig, check_sample: Callable[[SampleConfig], None] | None = None) -> None:
    """Check every value of the resolved config before any work starts; the first bad one is refused with a
    one-line ``ValueError`` naming the key, the value and what is allowed.

    Checked here: every ``train`` and ``sample`` value (integers are ints, never floats, bools or strings; floats
    may be written as ints; every number finite; ranges; the names of ``decay``, ``precision``, ``device``);
    ``family`` against :data:`unidm.methods.FAMILIES`; ``name`` by :func:`safe_run_name` (empty is allowed: the
    caller picks a default); ``data.name`` and the data option names, with the builder's required options
    (``data.path``); in ``data``, ``model`` and ``method`` at any depth: no NaN or inf, ``dropout`` in [0, 1),
    ``label_dropout`` and ``*_fraction`` in [0, 1] (``test_fraction`` in (0, 1)), and every integer under
    ``model`` >= 1 (sizes: ``hidden``, ``width``, ``depth``, ``channels``, list entries such as ``channel_mult``)
    except :data:`MODEL_INTS_MAY_BE_ZERO`.

    Left to the constructors (they raise ``ValueError`` when the run is built): the other keys and values of
    ``model`` and ``method``, which only the family knows (``p_mean`` is a mean, not a probability, so no rule on
    key names can tell). The names of ``sample.sampler`` and ``sample.grid`` depend on the family:
    ``check_sample(cfg.sample)``, when given, checks them.

        >>> validate_config(RunConfig())
        >>> validate_config(apply_overrides(RunConfig(), ["train.ema_decay=2"]))
        Traceback (most recent call last):
        ...
        ValueError: train.ema_decay must be a finite number in [0, 1), got 2
    """
    from .methods import FAMILIES

    _check_name("family", cfg.family, sorted(FAMILIES))
    if not isinstance(cfg.name, str):
        raise ValueError(f"name must be a string, got {_show(cfg.name)}")
    if cfg.name:
        safe_run_name(cfg.name)
    _check_train(cfg.train)
    _check_sample(cfg.sample)
    _check_sections(cfg)
    if check_sample is not None:
        check_sample(cfg.sample)


def safe_run_name(name: str) -> str:
    """``name`` without surrounding whitespace, when it can name one folder ``runs/<name>``; otherwise a
    ``ValueError`` naming the value and the rule it breaks: empty, a path separator (``/``, ``\\``, or ``:`` which
    is a drive on Windows), ``..`` anywhere, ``.``, a control or other non-printing character, longer than 200
    bytes.

        >>> safe_run_name(" moons-edm ")
        'moons-edm'
    """
    if not isinstance(name, str):
        raise ValueError(f"run name must be a string, got {_show(name)}")
    s = name.strip()
    if not s:
        rule = "it is empty"
    elif any(unicodedata.category(c).startswith("C") for c in s):
        rule = "it contains a control character"
    elif any(sep in s for sep in ("/", "\\", ":", os.sep, os.altsep or "/")):
        rule = "it contains a path separator (/, \\ or :)"
    elif ".." in s or s == ".":
        rule = "it contains '..' or is '.'"
    elif len(s.encode()) > 200:
        rule = "it is longer than 200 bytes"
    else:
        return s
    raise ValueError(f"run name {name!r} is refused: {rule}; a run name is one folder under runs/, "
                     "e.g. name=moons-edm")


def resolve_data_paths(cfg: RunConfig, base_dir: str | None = None) -> RunConfig:
    """A copy of ``cfg`` whose data file paths (``data.path`` and any ``data.*_path``) are absolute, with ``~``
    expanded, relative to ``base_dir`` (default: the working directory), so the stored config works from any
    directory. A path that is not a non-empty string is refused (``ValueError``), a missing one with
    ``FileNotFoundError``; both name the key and the path."""
    out = RunConfig.from_dict(cfg.to_dict())
    for key, value in list(out.data.items()):
        if key != "path" and not key.endswith("_path"):
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"data.{key} must be the path of a file or folder, got {_show(value)}")
        path = os.path.expanduser(value)
        path = os.path.abspath(os.path.join(base_dir, path) if base_dir else path)
        if not os.path.exists(path):
            shown = path if path == value else f"{path} (given as {value})"
            raise FileNotFoundError(f"data.{key}: no such file or folder: {shown}")
        out.data[key] = path
    return out


# ------------------------------------------------------------------------------------------------- resume

#: keys that may differ between the stored config of a run and the one given to resume it: how long to train
#: (``train.steps``, never below the step reached), how often to log and save, where and how fast to run, and how to
#: sample afterwards. None of them changes the data, the noise or the updates of the steps to come, except
#: ``train.steps`` under a decaying learning rate (the decay is re-spread over the new total; :func:`check_resume`
#: reports the jump) and ``train.grad_accum``: the data and noise of a step depend on the number of shards
#: ``world_size x grad_accum`` (see :mod:`unidm.train.loop`), not on ``grad_accum`` alone, so 2 processes x 1
#: resumed as 1 process x 2 is the same run; only the training loop, which knows the world size and the shard
#: count stored in the checkpoint, can tell whether the product changed.
RESUMABLE_KEYS = frozenset({
    "train.steps", "train.log_every", "train.ckpt_every", "train.keep_last", "train.progress", "train.device",
    "train.num_threads", "train.compile", "train.grad_accum",
})


class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


_UNSET = _Unset()


def _flat(cfg: RunConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def visit(node: Any, key: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                visit(v, f"{key}.{k}" if key else k)
        else:
            out[key] = node

    visit(cfg.to_dict(), "")
    return out


def check_resume(stored: RunConfig, given: RunConfig, step: int) -> list[str]:
    """Refuse to resume a run at ``step`` with a config that would make it another run; return the allowed
    changes, one ``"key: old -> new"`` line each (empty when the configs agree).

    ``stored`` is the run's ``config.json``, ``given`` the config resolved from the command line (after
    :func:`resolve_data_paths`, so data paths compare as absolute paths). Any difference outside
    :data:`RESUMABLE_KEYS` and ``sample.*`` (``family``, ``name``, ``data``, ``model``, ``method``, and the train
    keys that decide the data order, the noise, the model's initial weights and the updates: ``seed``,
    ``batch_size``, ``lr``, ``betas``, ``weight_decay``, ``warmup``, ``decay``, ``min_lr_ratio``, ``grad_clip``,
    ``ema_decay``, ``ema_warmup``, ``precision``) is refused with one ``ValueError`` naming every differing key with
    both values; so is ``train.steps`` below ``step``, with ``step`` in the message.
    """
    a, b = _flat(stored), _flat(given)
    changed, refused = [], []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, _UNSET), b.get(key, _UNSET)
        if old == new and type(old) is type(new) or (_is_number(old) and _is_number(new) and old == new):
            continue
        line = f"{key}: {old!r} -> {new!r}"
        (changed if key in RESUMABLE_KEYS or key.startswith("sample.") else refused).append(line)
    if refused:
        raise ValueError(f"cannot resume: the run was started with a different config ({'; '.join(refused)}); only "
                         f"{', '.join(sorted(RESUMABLE_KEYS))} and sample.* may change on resume; start a new run "
                         "in another folder to change the others")
    if given.train.steps < step:
        raise ValueError(f"cannot resume: train.steps={given.train.steps} is below the step the run has reached "
                         f"({step}); set train.steps >= {step}")
    if stored.train.steps != given.train.steps and given.train.decay != "none" and step > given.train.warmup:
        from .train import lr_at

        before, after = lr_at(step, stored.train), lr_at(step, given.train)
        if before != after:
            changed.append(f"note: the {given.train.decay} learning-rate decay is spread over {given.train.steps} "
                           f"steps now, so the learning rate at step {step} goes from {before:.3g} to {after:.3g}")
    return changed
