"""Run configuration: dataclasses that round-trip to plain dicts and JSON, with ``key=value`` overrides.

A run config has six sections::

    family: "gaussian"                 # which trainable family (unidm.methods.FAMILIES)
    data:   {"name": "moons", ...}     # DATASETS[name](**rest)
    model:  {"arch": "mlp", ...}       # NETWORKS[arch](**rest), data-derived sizes filled in
    method: {"process": "edm", ...}    # the family's own options (e.g. GaussianDiffusion's)
    train:  TrainConfig                # the training loop
    sample: SampleConfig               # how samples.png / eval / `unidm sample` draw samples

Unknown keys fail with a message that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig", "SampleConfig", "RunConfig", "parse_value", "apply_overrides"]


@dataclass
class TrainConfig:
    """The training loop's settings (see :func:`unidm.train.train`)."""

    steps: int = 4000
    batch_size: int = 512  # global: split over processes x grad_accum
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 200
    decay: str = "cosine"  # "cosine", "linear" or "none"
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 3  # 0 keeps all
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0  # 0: leave torch's default
    precision: str = "fp32"  # "fp32", "bf16" (autocast) or "fp16" (autocast + scaler, CUDA only)
    grad_accum: int = 1  # noise is fixed per shard (world_size x grad_accum)
    compile: bool = False
    progress: bool = True


@dataclass
class SampleConfig:
    """Defaults for drawing samples from a trained run."""

    sampler: str = "heun"
    steps: int = 32
    grid: str = "karras"
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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(d["train"]["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        _check_keys(d, [f.name for f in dataclasses.fields(cls)], "config section")
        train = d.pop("train", {}) or {}
        sample = d.pop("sample", {}) or {}
        _check_keys(train, [f.name for f in dataclasses.fields(TrainConfig)], "train option")
        _check_keys(sample, [f.name for f in dataclasses.fields(SampleConfig)], "sample option")
        if "betas" in train:
            train["betas"] = tuple(train["betas"])
        for k in ("data", "model", "method"):
            if k in d and not isinstance(d[k], dict):
                raise ValueError(f"config section {k!r} must be a mapping, got {type(d[k]).__name__}")
        return cls(train=TrainConfig(**train), sample=SampleConfig(**sample), **d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))


def _check_keys(d: dict, valid: list[str], what: str) -> None:
    bad = [k for k in d if k not in valid]
    if bad:
        raise ValueError(f"unknown {what}: {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"true"`` -> True, ``"null"`` -> None, JSON lists/dicts; else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` (or ``family=...``/``name=...``) overrides and return a new config.

    ``section.key.subkey=value`` sets one entry of a nested mapping (``method.noise_options.p_mean=-0.8``) and
    keeps its other entries; ``section.key='{"a": 1}'`` (JSON) replaces the whole mapping.

    Keys of ``train`` and ``sample`` are checked here; keys of ``data``, ``model`` and ``method`` are checked
    against the constructor they feed when the run is built.
    """
    d = cfg.to_dict()
    top = [f.name for f in dataclasses.fields(RunConfig)]
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. train.steps=1000)")
        key, value = item.split("=", 1)
        parts = key.split(".")
        if parts[0] not in top:
            raise ValueError(f"unknown config section {parts[0]!r}; valid: {', '.join(top)}")
        if len(parts) == 1:
            if isinstance(d[parts[0]], dict):
                raise ValueError(f"{parts[0]!r} is a section; set one of its keys, e.g. {parts[0]}.name=...")
            d[parts[0]] = parse_value(value)
            continue
        if not isinstance(d[parts[0]], dict):
            raise ValueError(f"{parts[0]!r} is not a section")
        node = d[parts[0]]
        for i, sub in enumerate(parts[1:-1], start=1):  # section.key.subkey sets one entry of a nested mapping
            if node.get(sub) is None:
                node[sub] = {}
            elif not isinstance(node[sub], dict):
                raise ValueError(f"override {key!r}: {'.'.join(parts[:i + 1])} is {node[sub]!r}, not a mapping")
            node = node[sub]  # to_dict's copy, so it can be edited in place
        node[parts[-1]] = parse_value(value)
    return RunConfig.from_dict(d)
