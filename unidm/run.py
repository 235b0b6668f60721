"""Build a run from its config, and load a trained run folder back (weights only from safetensors)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from .config import RunConfig
from .data import Dataset, build_dataset, seed_for
from .methods import FAMILIES, TrainableModel
from .train.checkpoint import CheckpointError, latest_checkpoint, load_safetensors
from .utils import check_choice

__all__ = ["Run", "StoredData", "build_data", "build_model", "data_info", "gamma_for_run", "load_run",
           "load_tuned_grid", "load_weights", "require_examples", "tuned_grid_for_run"]


def build_data(cfg: RunConfig) -> Dataset:
    opts = dict(cfg.data)
    if "name" not in opts:
        raise ValueError("data section needs a name, e.g. data.name=moons")
    return build_dataset(opts.pop("name"), **opts)


def data_info(data: Dataset) -> dict:
    """What a model needs to know of its data, as JSON: kind, per-example shape, standard deviation (for
    ``sigma_data = "auto"``), classes with their training counts (the stratified labels of ``Dataset.draw_labels``
    depend on the counts alone), vocabulary, levels and split sizes. ``unidm train`` stores it in ``config.json``."""
    info = {"kind": data.kind, "shape": list(data.shape), "std": data.std, "num_classes": data.num_classes,
            "vocab_size": data.vocab_size, "n_train": len(data.train), "n_test": len(data.test),
            "dtype": str(data.train.dtype).replace("torch.", "")}
    if data.train_labels is not None and data.num_classes:
        info["class_counts"] = torch.bincount(data.train_labels.long().flatten(), minlength=data.num_classes).tolist()
    if data.meta.get("levels") is not None:
        info["levels"] = int(data.meta["levels"])
    return info


@dataclass
class StoredData(Dataset):
    """A run's data known only from its stored :func:`data_info`, for sampling when the data file is gone: no
    examples (``train`` and ``test`` are empty), but the shape, kind, standard deviation and class counts the model
    and its samplers use. ``meta["missing"]`` says what is missing, for the commands that need the examples."""

    stored_std: float = 1.0

    @property
    def std(self) -> float:
        return self.stored_std

    @classmethod
    def from_info(cls, name: str, info: dict, missing: str) -> "StoredData":
        dtype = getattr(torch, info.get("dtype", "float32"))
        empty = torch.zeros((0, *info["shape"]), dtype=dtype)
        labels = None
        if info.get("class_counts"):
            counts = torch.tensor(info["class_counts"])
            labels = torch.arange(len(counts)).repeat_interleave(counts)
        meta = {"missing": missing}
        if info.get("levels") is not None:
            meta["levels"] = info["levels"]
        return cls(name, empty, empty.clone(), kind=info["kind"], train_labels=labels, num_classes=info["num_classes"],
                   vocab_size=info["vocab_size"], meta=meta, stored_std=float(info["std"]))


def require_examples(run: "Run", what: str) -> None:
    """Refuse ``what`` (e.g. "eval") for a run whose data file is gone, naming the file."""
    missing = run.data.meta.get("missing")
    if missing:
        raise FileNotFoundError(f"{what} needs the run's data, and {missing}; put the file back at that path")


def build_model(cfg: RunConfig, data: Dataset) -> TrainableModel:
    """The family's model for ``data``; initial weights are drawn from ``(train.seed, "init")``, so the same config
    gives the same model in any process (every rank of a multi-process run starts identical).

    The method keys a family lists in ``frozen_keys`` hold run folders: each is loaded (its EMA weights) and handed
    to ``from_config`` as a frozen sub-model (:meth:`unidm.methods.TrainableModel.add_frozen`).
    """
    check_choice(cfg.family, FAMILIES, "family")
    family = FAMILIES[cfg.family]
    method = dict(cfg.method)
    frozen = {}
    for key in family.frozen_keys:
        path = method.pop(key, None)
        if not isinstance(path, str) or not path:
            raise ValueError(f"family {cfg.family!r} needs method.{key}=RUN_DIR, the folder of a trained run")
        frozen[key] = load_run(path).model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(cfg.train.seed, "init"))
        return family.from_config(cfg.model, method, data, frozen=frozen)


@dataclass
class Run:
    """A trained run: its config, its model (EMA weights unless asked otherwise), its data, its folder."""

    path: str
    config: RunConfig
    model: TrainableModel
    data: Dataset
    step: int


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, target: str) -> None:
    """Load ``state`` into ``model``; a state that does not match it key for key is refused with
    ``CheckpointError`` naming ``source`` (where the weights came from) and ``target`` (what they were meant for)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ: the config no longer describes these weights
        first = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{source} does not match {target}: {first}") from None
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match {target}: missing {missing[:4]}, unexpected {unexpected[:4]}")


def load_run(path: str, device: str | torch.device = "cpu", weights: str = "ema") -> Run:
    """Load ``path/config.json`` and ``path/model.safetensors`` (falling back to the newest whole checkpoint).

    Raises ``CheckpointError`` for a corrupt or foreign weights file; nothing is ever unpickled.
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path} is not a run folder (no config.json)")
    with open(cfg_path) as f:
        try:
            cfg = RunConfig.from_dict(json.load(f))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
    try:
        data = build_data(cfg)
    except FileNotFoundError as e:
        if not cfg.data_info:
            raise
        data = StoredData.from_info(cfg.data.get("name", "data"), cfg.data_info, str(e))
    try:
        model = build_model(cfg, data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path} does not build a model: {e}") from None
    state, step = None, -1
    wpath = os.path.join(path, "model.safetensors")
    try:
        tensors = load_safetensors(wpath)
        state = {k[len(weights) + 1:]: v for k, v in tensors.items() if k.startswith(weights + ".")}
        from safetensors import safe_open

        with safe_open(wpath, "pt") as f:
            step = int((f.metadata() or {}).get("step", -1))
    except CheckpointError as e:
        ck = latest_checkpoint(path)
        if ck is None:
            raise CheckpointError(f"{e}; and no whole checkpoint under {path}/state to fall back on") from e
        print(f"warning: {e}; using {ck.path}")
        state, step = (ck.ema if weights == "ema" else ck.model), ck.step
    load_weights(model, state, wpath, f"the model of {cfg_path}")
    model.to(device).eval()
    return Run(path, cfg, model, data, step)


def gamma_for_run(run: Run, n: int = 500, seed: int = 0, batch_size: int = 500,
                  dtype: torch.dtype = torch.float64) -> tuple:
    """Analytic-DPM's Gamma statistics of a denoising run (:func:`unidm.likelihood.gamma_statistics` over ``n``
    training examples on its process's levels), cached in ``RUN/gamma/`` as safetensors keyed by the weights' digest,
    ``n`` and ``seed``: computed once, then read back (never unpickled). Returns ``(GammaStats, info)`` with
    ``info = {"n", "levels", "seconds", "cached", "path"}``. A run whose data file is gone and that has no cached
    statistics is refused, naming the file."""
    import time

    from .likelihood import gamma_statistics, statistics_sigmas
    from .methods import DenoisingModel
    from .samplers.variance import GammaStats
    from .train.checkpoint import atomic_save_safetensors, param_digest

    model = run.model
    if not isinstance(model, DenoisingModel):
        raise ValueError(f"the analytic variance needs a denoising (diffusion) run; {run.path} is a "
                         f"{run.config.family!r} run")
    digest = param_digest(model.state_dict())[:16]
    path = os.path.join(run.path, "gamma", f"{digest}-n{n}-seed{seed}.safetensors")
    t0 = time.perf_counter()
    if os.path.isfile(path):
        from safetensors import safe_open

        tensors = load_safetensors(path)
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        stats = GammaStats.from_state(tensors, meta)
        return stats, {"n": stats.n, "levels": len(stats.sigmas), "seconds": time.perf_counter() - t0,
                       "cached": True, "path": path}
    require_examples(run, "the Gamma statistics")
    x = run.data.train[:n].to(model.device)
    if x.is_floating_point():
        x = x.to(dtype)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial_path = path[: -len(".safetensors")] + ".partial.safetensors"  # what a killed computation had done
    partial, resumed = None, 0
    if os.path.isfile(partial_path):
        try:
            saved = load_safetensors(partial_path)
            partial = (saved["gamma"], saved["stderr"], saved["done"].bool())
            resumed = int(partial[2].sum())
        except (CheckpointError, KeyError):
            partial = None  # a damaged partial file: start over

    def save(gamma, stderr, done):
        atomic_save_safetensors({"gamma": gamma, "stderr": stderr, "done": done.to(torch.uint8)}, partial_path)

    with torch.no_grad(), model.evaluating():
        stats = gamma_statistics(model.denoiser, x, statistics_sigmas(model.process), batch_size=batch_size,
                                 generator=torch.Generator().manual_seed(seed), partial=partial, on_progress=save)
    tensors, meta = stats.state()
    atomic_save_safetensors(tensors, path, metadata={**meta, "digest": digest, "seed": str(seed)})
    os.remove(partial_path)
    return stats, {"n": len(x), "levels": len(stats.sigmas), "seconds": time.perf_counter() - t0, "cached": False,
                   "path": path, "resumed_levels": resumed}


def _tuned_grid_path(run: Run, sampler: str, nfe: int, conditioning: dict | None) -> str:
    import hashlib

    tag = ""
    if conditioning:
        tag = "-" + hashlib.sha256(json.dumps(conditioning, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(run.path, "tuned_grids", f"{sampler}-nfe{nfe}{tag}.json")


def tuned_grid_for_run(run: Run, sampler: str, nfe: int, *, samples: int = 256, seed: int = 0,
                       options: dict | None = None, denoiser=None, cond: dict | None = None,
                       conditioning: dict | None = None, progress: bool = True, **tune_options) -> tuple:
    """Fit the grid of ``sampler`` at ``nfe`` denoiser calls to a denoising run (:func:`unidm.samplers.tuning.
    tune_grid` on ``samples`` calibration noises from the process's prior, seed ``seed``) and store it as JSON in
    ``RUN/tuned_grids/<sampler>-nfe<NFE>[-<conditioning hash>].json`` with the weights' digest, written atomically.
    ``denoiser`` replaces the run's own (a guided wrapper), described by the JSON-able ``conditioning`` (which keys
    the file); ``cond`` is passed to every denoiser call. A stored grid with the same digest, options, samples,
    seed and conditioning is read back instead. Returns ``(TunedGrid, info)``, ``info = {"cached", "path",
    "digest"}``."""
    from .methods import DenoisingModel
    from .samplers import resolve_method
    from .samplers.tuning import TunedGrid, steps_for_nfe, nfe_of, tune_grid
    from .train.checkpoint import atomic_write_bytes, param_digest

    model = run.model
    if not isinstance(model, DenoisingModel):
        raise ValueError(f"grid tuning needs a denoising (diffusion) run; {run.path} is a {run.config.family!r} run")
    name, options = resolve_method(sampler), dict(options or {})
    used = nfe_of(name, steps_for_nfe(name, int(nfe), **options), **options)
    digest = param_digest(model.state_dict())[:16]
    conditioning = dict(conditioning or {})
    path = _tuned_grid_path(run, name, used, conditioning)
    want = {"digest": digest, "options": options, "samples": int(samples), "seed": int(seed),
            "conditioning": conditioning}
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        if all(stored.get(k) == v for k, v in want.items()):
            return TunedGrid.from_dict(stored), {"cached": True, "path": path, "digest": digest}
    D = denoiser if denoiser is not None else model.denoiser
    with torch.no_grad(), model.evaluating():
        tuned = tune_grid(D, name, int(nfe), shape=model.data_shape, process=model.process, samples=samples,
                          seed=seed, options=options, cond=cond, device=model.device, progress=progress,
                          dtype=next(model.parameters()).dtype, **tune_options)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_bytes(path, json.dumps({**tuned.to_dict(), **want}, indent=1).encode())
    return tuned, {"cached": False, "path": path, "digest": digest}


def load_tuned_grid(run: Run, sampler: str, steps: int, options: dict | None = None,
                    conditioning: dict | None = None):
    """The grid stored by :func:`tuned_grid_for_run` for ``sampler`` at ``steps`` steps (its NFE) and these
    ``options`` and ``conditioning``, as a :class:`~unidm.samplers.tuning.TunedGrid`.

    Raises:
        ValueError: one line, if no grid was tuned for that sampler and NFE (naming the command that tunes one
            and the grids that are there), or the run's weights changed since (digests differ), or the grid was
            tuned with other sampler options.
    """
    from .samplers import resolve_method
    from .samplers.tuning import TunedGrid, nfe_of
    from .train.checkpoint import param_digest

    name, options = resolve_method(sampler), dict(options or {})
    nfe = nfe_of(name, int(steps), **options)
    path = _tuned_grid_path(run, name, nfe, conditioning)
    cmd = f"unidm tune-grid {run.path} --sampler {name} --nfe {nfe}"
    if not os.path.isfile(path):
        folder = os.path.join(run.path, "tuned_grids")
        there = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
        raise ValueError(f"no grid tuned for sampler {name!r} at {nfe} NFE ({steps} steps)"
                         f"{' with this guidance' if conditioning else ''} in {run.path}; run `{cmd}` first "
                         f"(tuned: {', '.join(there) or 'none'})")
    with open(path) as f:
        stored = json.load(f)
    digest = param_digest(run.model.state_dict())[:16]
    if stored.get("digest") != digest:
        raise ValueError(f"the tuned grid {path} was fitted to other weights (digest {stored.get('digest')}, the "
                         f"run's are {digest}); tune again: `{cmd}`")
    if stored.get("options", {}) != options:
        raise ValueError(f"the tuned grid {path} was fitted with sampler options {stored.get('options')}, not "
                         f"{options}; tune again with those options")
    return TunedGrid.from_dict(stored)
