"""diffusers model folders as unidm runs, and unidm runs as diffusers pipelines, from local folders only.

**Import** (:func:`read_diffusers`, :func:`load_diffusers`, :func:`import_diffusers`): a ``UNet2DModel`` folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``, with a ``scheduler_config.json`` beside it or given) or a
pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``) becomes a ``gaussian`` run whose network is
``model.arch=diffusers-unet2d`` (:class:`unidm.nn.diffusers_unet.DiffusersUNet2D`):

| diffusers | unidm |
|---|---|
| ``prediction_type`` ``epsilon`` / ``v_prediction`` / ``sample`` | ``parameterization`` ``eps`` / ``v`` / ``x0`` |
| DDPM-family scheduler, ``beta_schedule="linear"`` | ``process="vp-discrete"`` with the same ``beta_start``, ``beta_end``, ``num_steps = num_train_timesteps``: DDPM's ``abar_{k+1}`` at ``t = (k+1)/T`` |
| ``FlowMatchEulerDiscreteScheduler`` | ``process="flow"`` (``x_t = (1-t) x0 + t eps``), ``parameterization="velocity"``; ``timestep = T t`` |
| ``num_class_embeds = K`` | ``method.conditional=true`` with ``K`` classes (``K - 1`` and a null label with ``num_classes=K-1``) |

``sigma_data = 1``, so ``c_in x = x / sqrt(1 + sigma^2)`` is exactly DDPM's ``x_t``. Weights are read only from
safetensors files; a pickled ``.bin`` is refused, never opened. Nothing is fetched from the network.

**Export** (:func:`export_diffusers`): a run whose network is ``diffusers-unet2d`` on ``vp-discrete`` with ``eps``,
``v`` or ``x0`` is written as a ``DDPMPipeline`` folder (``model_index.json``, ``unet/`` in safetensors,
``scheduler/`` a ``DDPMScheduler`` with ``clip_sample=False``), which ``DDIMPipeline`` loads too.

See ``docs/interop.md`` for the mappings, the timestep map and the limits.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import RunConfig, apply_overrides, resolve_data_paths
from ..methods import DenoisingModel
from ..nn.diffusers_unet import DiffusersUNet2D, diffusers_module
from ..processes import VPDiscrete
from ..run import Run, StoredData, build_data, build_model, data_info, load_run
from ..train.checkpoint import (atomic_save_safetensors, atomic_write_bytes, load_safetensors, temporary_name)
from ..utils import valid_kwargs

__all__ = ["DiffusersFolder", "DiffusersExport", "read_diffusers", "load_diffusers", "import_diffusers",
           "export_diffusers", "PARAMETERIZATION_OF", "VP_SCHEDULERS", "FLOW_SCHEDULERS"]

#: diffusers' ``prediction_type`` -> unidm's parameterization
PARAMETERIZATION_OF = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_PREDICTION_OF = {v: k for k, v in PARAMETERIZATION_OF.items()}
#: schedulers of a model trained on DDPM's discrete betas (they differ only in how they sample)
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                 "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "EulerDiscreteScheduler",
                 "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
                 "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "UniPCMultistepScheduler",
                 "DEISMultistepScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler")
#: schedulers of a rectified-flow model
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
_WEIGHTS = "diffusion_pytorch_model.safetensors"
_INDEX = "diffusion_pytorch_model.safetensors.index.json"
_PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_UNET_DERIVED = ("in_channels", "out_channels", "num_class_embeds")
#: scheduler settings that change only how diffusers samples (unidm picks its own sampler and grid)
_SAMPLING_ONLY = {"timestep_spacing", "steps_offset", "set_alpha_to_one", "skip_prk_steps", "use_karras_sigmas",
                  "use_exponential_sigmas", "use_beta_sigmas", "solver_order", "algorithm_type", "solver_type",
                  "lower_order_final", "euler_at_final", "final_sigmas_type", "shift", "use_dynamic_shifting",
                  "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "shift_terminal",
                  "time_shift_type", "stochastic_sampling", "interpolation_type", "sample_max_value"}


@dataclass
class DiffusersFolder:
    """A diffusers model folder, read and checked (:func:`read_diffusers`).

    Attributes:
        path: the folder given.
        unet_config: the ``UNet2DModel`` ``config.json`` as stored.
        scheduler_class: the scheduler's ``_class_name``; ``scheduler_config`` its config with the class's defaults.
        state: the UNet's weights, from safetensors.
        config: a unidm run config that rebuilds the model (``family="gaussian"``, ``model.arch=diffusers-unet2d``).
        notes: scheduler settings unidm does not carry over (e.g. ``clip_sample``), one line each.
    """

    path: str
    unet_config: dict
    scheduler_class: str
    scheduler_config: dict
    state: dict[str, Tensor]
    config: RunConfig
    notes: list[str] = field(default_factory=list)


@dataclass
class DiffusersExport:
    """What :func:`export_diffusers` wrote: the pipeline folder, its scheduler class and notes for the user."""

    path: str
    scheduler_class: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- reading
def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} ({what}) is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} ({what}) is not a JSON object")
    return value


def _locate(folder: str, scheduler: str | None) -> tuple[str, str | None]:
    """``(unet folder, scheduler config file or None)`` of a pipeline or a bare UNet folder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such folder: {folder}")
    index_path = os.path.join(folder, "model_index.json")
    if os.path.isfile(index_path):
        index = _read_json(index_path, "a diffusers pipeline index")
        pipeline = index.get("_class_name", "?")
        latent = [k for k in ("vae", "vqvae", "text_encoder", "transformer") if index.get(k)]
        if latent:
            raise ValueError(f"{folder} is a {pipeline} with {', '.join(latent)}: unidm imports pixel-space "
                             "UNet2DModel pipelines (DDPMPipeline, DDIMPipeline) only")
        unet = index.get("unet")
        if not (isinstance(unet, list) and len(unet) == 2):
            raise ValueError(f"{folder} is a {pipeline} without a unet component; unidm imports UNet2DModel models")
        if unet[1] != "UNet2DModel":
            raise ValueError(f"{folder}: unsupported network class {unet[1]!r}; supported: UNet2DModel")
        unet_dir = os.path.join(folder, "unet")
        candidates = [os.path.join(folder, "scheduler", "scheduler_config.json")]
    elif os.path.isfile(os.path.join(folder, "config.json")):
        unet_dir = folder
        candidates = [os.path.join(folder, "scheduler_config.json"),
                      os.path.join(os.path.dirname(os.path.abspath(folder)), "scheduler", "scheduler_config.json")]
    else:
        raise ValueError(f"{folder} is not a diffusers model folder: it has neither model_index.json (a pipeline) "
                         "nor config.json (a UNet2DModel)")
    if scheduler is not None:
        path = os.path.join(scheduler, "scheduler_config.json") if os.path.isdir(scheduler) else scheduler
        if not os.path.isfile(path):
            raise FileNotFoundError(f"scheduler config not found: {path}")
        return unet_dir, path
    return unet_dir, next((c for c in candidates if os.path.isfile(c)), None)


def _weights(unet_dir: str) -> dict[str, Tensor]:
    """The UNet's weights from ``diffusion_pytorch_model.safetensors`` (or its shards); a pickle is refused."""
    single, index = os.path.join(unet_dir, _WEIGHTS), os.path.join(unet_dir, _INDEX)
    if os.path.isfile(single):
        return load_safetensors(single)
    if os.path.isfile(index):
        weight_map = _read_json(index, "a safetensors shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no weight_map")
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not isinstance(shard, str) or os.path.basename(shard) != shard or not shard.endswith(".safetensors"):
                raise ValueError(f"{index} names a shard {shard!r} that is not a .safetensors file in {unet_dir}")
            state.update(load_safetensors(os.path.join(unet_dir, shard)))
        return state
    pickled = sorted(f for f in os.listdir(unet_dir) if f.lower().endswith(_PICKLED))
    if pickled:
        raise ValueError(f"{os.path.join(unet_dir, pickled[0])} is a pickled PyTorch file, which can run code when "
                         f"loaded; unidm never unpickles. Use the model's {_WEIGHTS} (convert the file to "
                         "safetensors only where you trust it)")
    raise FileNotFoundError(f"{unet_dir} has no {_WEIGHTS}")


def _check_unet(cfg: dict, path: str, num_classes: int | None) -> tuple[dict, int, bool, list[str]]:
    """The ``model.unet`` options, the class count, whether the last class embedding is a null label, notes."""
    name = cfg.get("_class_name")
    if name != "UNet2DModel":
        raise ValueError(f"{path}: unsupported network class {name!r}; supported: UNet2DModel")
    if cfg.get("class_embed_type") is not None:
        raise ValueError(f"{path}: class-conditional through class_embed_type={cfg['class_embed_type']!r}, which "
                         "gives no class count; unidm takes a table of num_class_embeds classes")
    if cfg.get("time_embedding_type", "positional") != "positional":
        raise ValueError(f"{path}: time_embedding_type={cfg['time_embedding_type']!r} is not supported (a score-SDE "
                         "model); supported: positional, the DDPM timestep embedding")
    c_in, c_out = cfg.get("in_channels", 3), cfg.get("out_channels", 3)
    if c_out != c_in:
        raise ValueError(f"{path}: out_channels={c_out} but in_channels={c_in} (a learned-variance model); unidm "
                         "takes a UNet that predicts one image (eps, v or x0)")
    embeds = cfg.get("num_class_embeds")
    if embeds is None:
        if num_classes:
            raise ValueError(f"num_classes={num_classes} given, but {path} is not class-conditional "
                             "(num_class_embeds is null)")
        classes, null = 0, False
    elif num_classes is None or num_classes == embeds:
        classes, null = int(embeds), False
    elif num_classes == embeds - 1:
        classes, null = int(num_classes), True
    else:
        raise ValueError(f"num_classes={num_classes} does not fit {path}'s num_class_embeds={embeds}: give "
                         f"{embeds} (no null label) or {embeds - 1} (the last embedding is the null label)")
    UNet2DModel = diffusers_module().UNet2DModel
    accepted = set(valid_kwargs(UNet2DModel)) - set(_UNET_DERIVED)
    options = {k: v for k, v in cfg.items() if k in accepted}
    dropped = sorted(k for k in cfg if not k.startswith("_") and k not in accepted and k not in _UNET_DERIVED)
    notes = [f"UNet config keys this diffusers does not take, ignored: {', '.join(dropped)}"] if dropped else []
    return options, classes, null, notes


def _scheduler(path: str) -> tuple[str, dict, list[str]]:
    """The scheduler class and its config with the class's defaults filled in (built by diffusers itself)."""
    raw = _read_json(path, "a diffusers scheduler config")
    name = raw.get("_class_name")
    if name not in VP_SCHEDULERS + FLOW_SCHEDULERS:
        raise ValueError(f"{path}: unsupported scheduler {name!r}; supported: DDPM-family schedulers on discrete "
                         f"betas ({', '.join(VP_SCHEDULERS[:3])}, ...) and {', '.join(FLOW_SCHEDULERS)}")
    cls = getattr(diffusers_module(), name, None)
    if cls is None:
        raise ValueError(f"{path}: scheduler {name!r} is not in the installed diffusers")
    try:
        config = dict(cls.from_config(raw).config)
    except Exception as e:  # diffusers raises NotImplementedError, ValueError, ... for a config it cannot build
        raise ValueError(f"{path}: diffusers cannot build {name} from it: {type(e).__name__}: {e}") from None
    notes = []
    if config.get("clip_sample"):
        notes.append(f"clip_sample=true: {name} clips its x0 prediction to [-{config.get('clip_sample_range', 1.0)}, "
                     f"{config.get('clip_sample_range', 1.0)}]; unidm's samplers do not clip")
    if config.get("thresholding"):
        notes.append("thresholding=true: unidm's samplers do not apply dynamic thresholding")
    if config.get("variance_type") in ("fixed_large", "fixed_large_log"):
        notes.append(f"variance_type={config['variance_type']}: unidm's ddpm sampler uses the posterior variance "
                     "(fixed_small)")
    changed = sorted(k for k in _SAMPLING_ONLY if k in raw and raw[k] != cls().config.get(k, raw[k]))
    if changed:
        notes.append(f"sampling settings of {name} not carried over (pick a unidm sampler and grid): "
                     f"{', '.join(changed)}")
    return name, config, notes


def _vp_process(config: dict, path: str) -> dict:
    """``vp-discrete`` process options with DDPM's discrete timesteps, or a refusal naming what is missing."""
    if config.get("variance_type") in ("learned", "learned_range"):
        raise ValueError(f"{path}: variance_type={config['variance_type']!r} (a learned-variance model) is not "
                         "supported")
    if config.get("timestep_type", "discrete") != "discrete":
        raise ValueError(f"{path}: timestep_type={config['timestep_type']!r} is not supported; supported: discrete")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(f"{path}: rescale_betas_zero_snr=true puts the last timestep at zero SNR (sigma = inf), "
                         "which unidm's vp-discrete process cannot represent")
    T = int(config["num_train_timesteps"])
    schedule = "explicit trained_betas" if config.get("trained_betas") is not None else config.get("beta_schedule")
    if schedule == "linear":
        return {"beta_start": float(config["beta_start"]), "beta_end": float(config["beta_end"]), "num_steps": T}
    # any other schedule (scaled_linear, squaredcos_cap_v2, trained_betas): diffusers' own betas, explicitly
    betas = diffusers_module().DDPMScheduler.from_config(config).betas
    return {"betas": [float(b) for b in betas]}


def _run_config(unet_options: dict, channels: int, classes: int, null: bool, scheduler_class: str, sched: dict,
                path: str, name: str) -> RunConfig:
    shape = unet_options.get("sample_size")
    size = [shape, shape] if isinstance(shape, int) else list(shape or [])
    if len(size) != 2:
        raise ValueError(f"{path}: sample_size={shape!r}; unidm needs the image size (an int or [H, W])")
    if scheduler_class in FLOW_SCHEDULERS:
        if sched.get("invert_sigmas"):
            raise ValueError(f"{path}: invert_sigmas=true reverses the time axis; not supported")
        process, popts, param, weighting, levels = "flow", {}, "velocity", "velocity", "uniform-t"
        topts = {"num_train_timesteps": int(sched["num_train_timesteps"])}
    else:
        prediction = sched.get("prediction_type", "epsilon")
        if prediction not in PARAMETERIZATION_OF:
            raise ValueError(f"{path}: prediction_type={prediction!r} is not supported; supported: "
                             f"{', '.join(PARAMETERIZATION_OF)}")
        process, popts = "vp-discrete", _vp_process(sched, path)
        param = PARAMETERIZATION_OF[prediction]
        weighting, levels, topts = param, "discrete-t", dict(popts)
    info = {"kind": "image", "shape": [channels, *size], "std": 1.0, "num_classes": classes, "vocab_size": 0,
            "n_train": 0, "n_test": 0, "dtype": "float32"}
    if classes:
        info["class_counts"] = [1] * classes  # the class prior is not in a diffusers folder: uniform
    return RunConfig(
        family="gaussian", name=name, data={},
        model={"arch": "diffusers-unet2d", "unet": unet_options, "null_label": null, "timesteps": process,
               "timestep_options": topts, "sigma_data": 1.0},
        method={"process": process, "process_options": popts, "parameterization": param, "noise_levels": levels,
                "weighting": weighting, "sigma_data": 1.0, "conditional": classes > 0},
        data_info=info)


def read_diffusers(folder: str, *, scheduler: str | None = None, num_classes: int | None = None) -> DiffusersFolder:
    """Read and check a local diffusers folder: a pipeline (``model_index.json``, ``unet/``, ``scheduler/``) or a
    ``UNet2DModel`` folder (``config.json``, ``diffusion_pytorch_model.safetensors``; the scheduler config beside it,
    in ``../scheduler/``, or ``scheduler``, a ``scheduler_config.json`` or its folder).

    ``num_classes`` for a class-conditional UNet with ``K = num_class_embeds``: ``K`` (the default; no null label)
    or ``K - 1`` (the last embedding is the null label of classifier-free guidance).

    Raises ``FileNotFoundError`` (a missing folder or file) or ``ValueError`` (anything unidm cannot represent), with
    one line naming the file and what is supported; a pickled weights file is refused without being opened.
    """
    unet_dir, sched_path = _locate(folder, scheduler)
    cfg_path = os.path.join(unet_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{folder}: no UNet config at {cfg_path}")
    unet_config = _read_json(cfg_path, "a diffusers model config")
    options, classes, null, notes = _check_unet(unet_config, cfg_path, num_classes)
    if sched_path is None:
        raise FileNotFoundError(f"{folder}: no scheduler config (scheduler/scheduler_config.json, or "
                                "scheduler_config.json beside config.json); the UNet alone does not say its noise "
                                "schedule: give one with --scheduler FILE")
    sched_class, sched, sched_notes = _scheduler(sched_path)
    name = os.path.basename(os.path.normpath(os.path.abspath(folder)))
    config = _run_config(options, int(unet_config.get("in_channels", 3)), classes, null, sched_class, sched,
                         sched_path, name)
    state = _weights(unet_dir)
    return DiffusersFolder(folder, unet_config, sched_class, sched, state, config, notes + sched_notes)


def _load_unet(model, state: dict[str, Tensor], source: str) -> None:
    unet = model.denoiser.net.unet
    state = dict(state)
    if hasattr(unet, "_convert_deprecated_attention_blocks"):  # old attention names (query/key/value/proj_attn)
        state = unet._convert_deprecated_attention_blocks(state)
    try:
        missing, unexpected = unet.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{source} does not match its config.json: {str(e).strip().splitlines()[-1].strip()}"
                         ) from None
    if missing or unexpected:
        raise ValueError(f"{source} does not match its config.json: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}")


def _build(src: DiffusersFolder, cfg: RunConfig, data, device) -> torch.nn.Module:
    model = build_model(cfg, data)
    _load_unet(model, src.state, os.path.join(src.path, _WEIGHTS))
    return model.to(device).eval()


def load_diffusers(folder: str, *, scheduler: str | None = None, num_classes: int | None = None,
                   device: str | torch.device = "cpu") -> Run:
    """A local diffusers folder as a :class:`unidm.run.Run` (as :func:`unidm.run.load_run` gives), in memory:
    ``run.model`` is a ``GaussianDiffusion`` that samples with every unidm sampler and grid and has the ODE
    likelihood (and DDPM's ELBO on ``vp-discrete``). ``run.data`` holds the image shape and classes only."""
    src = read_diffusers(folder, scheduler=scheduler, num_classes=num_classes)
    data = StoredData.from_info("diffusers", src.config.data_info,
                                f"{folder} is a diffusers model folder, which holds no data")
    return Run(folder, src.config, _build(src, src.config, data, device), data, 0)


def _check_out(out: str) -> None:
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; pick a new one")


def import_diffusers(folder: str, out: str, *, scheduler: str | None = None, num_classes: int | None = None,
                     overrides: list[str] | tuple[str, ...] = ()) -> tuple[Run, list[str]]:
    """Write a local diffusers folder as a unidm run folder ``out`` (``config.json``, ``model.safetensors`` with
    the same weights as ``model.*`` and ``ema.*``); return the loaded run and notes on what was not carried over.

    ``overrides`` are ``data.KEY=VALUE`` (the run's dataset, for ``eval`` and ``likelihood``; its images must have
    the UNet's shape) and ``sample.KEY=VALUE``. Without data, the run's data section points at ``out/data`` (an
    image folder, or ``out/data.npy`` for other channel counts), which does not exist: ``sample`` works, and
    ``eval`` / ``likelihood`` name the path to fill.
    """
    bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith(("data.", "sample.", "name"))]
    if bad:
        raise ValueError(f"import-diffusers takes data.KEY=VALUE, sample.KEY=VALUE and name=... overrides; got "
                         f"{bad[0]!r} (the model, method and process come from the diffusers folder)")
    _check_out(out)
    src = read_diffusers(folder, scheduler=scheduler, num_classes=num_classes)
    cfg = src.config
    info = cfg.data_info
    given = [o for o in overrides if o.strip().startswith("data.")]
    if given:
        cfg = resolve_data_paths(apply_overrides(cfg, list(overrides)))
        data = build_data(cfg)
        if list(data.shape) != info["shape"]:
            raise ValueError(f"the data ({cfg.data.get('name')}) have shape {list(data.shape)}, the UNet takes "
                             f"{info['shape']}")
        if info["num_classes"] and data.num_classes != info["num_classes"]:
            raise ValueError(f"the data have {data.num_classes} classes, the UNet {info['num_classes']}")
        cfg.data_info = {**data_info(data), "num_classes": info["num_classes"]}
    else:
        c, h, w = info["shape"]
        base = os.path.abspath(out)
        cfg.data = ({"name": "image-folder", "path": os.path.join(base, "data"), "image_size": w, "channels": c}
                    if c in (1, 3) and h == w else {"name": "image-array", "path": os.path.join(base, "data.npy")})
        cfg = apply_overrides(cfg, list(overrides))
        data = StoredData.from_info(cfg.data["name"], cfg.data_info,
                                    f"the run was imported from {folder} without data ({cfg.data['path']} is empty)")
    model = _build(src, cfg, data, "cpu")
    plan = model.check_sampling(cfg.sample.sampler, cfg.sample.steps, cfg.sample.grid)
    cfg.sample.sampler, cfg.sample.steps, cfg.sample.grid = plan.sampler, plan.steps, plan.grid
    os.makedirs(out, exist_ok=True)
    state = model.state_dict()
    tensors = {**{f"model.{k}": v for k, v in state.items()}, **{f"ema.{k}": v.clone() for k, v in state.items()}}
    atomic_save_safetensors(tensors, os.path.join(out, "model.safetensors"),
                            metadata={"format": "unidm-weights-1", "step": "0",
                                      "source": f"diffusers:{os.path.abspath(folder)}"})
    atomic_write_bytes(os.path.join(out, "config.json"), cfg.to_json().encode())
    return Run(out, cfg, model, data, 0), src.notes


# --------------------------------------------------------------------------------------------------- export
def _exportable(run: Run) -> tuple[DiffusersUNet2D, dict, str]:
    """The run's UNet wrapper, its vp-discrete options and diffusers' prediction type; else a refusal."""
    model, cfg = run.model, run.config
    arch = cfg.model.get("arch")
    supported = ("export-diffusers takes gaussian runs whose network is a diffusers UNet2DModel "
                 "(model.arch=diffusers-unet2d) on process vp-discrete with parameterization eps, v or x0")
    if not isinstance(model, DenoisingModel) or not isinstance(model.denoiser.net, DiffusersUNet2D):
        raise ValueError(f"{run.path}: {supported}; this run has family {cfg.family!r}, model.arch={arch!r}")
    net, process = model.denoiser.net, model.process
    param = model.denoiser.parameterization.name
    if not isinstance(process, VPDiscrete) or param not in _PREDICTION_OF:
        raise ValueError(f"{run.path}: {supported}; this run has process {cfg.method.get('process')!r}, "
                         f"parameterization {param!r}")
    if net.timesteps != "vp-discrete" or net._vp.config() != process.config():
        raise ValueError(f"{run.path}: the UNet's timestep map (model.timesteps={net.timesteps!r}, "
                         f"model.timestep_options={net.timestep_options}) is not its process's "
                         f"({process.config()}); a DDPM scheduler would call it at other timesteps")
    if net.sigma_data != model.denoiser.sigma_data:
        raise ValueError(f"{run.path}: method.sigma_data={model.denoiser.sigma_data} but model.sigma_data="
                         f"{net.sigma_data}; the UNet then does not see DDPM's x_t (train with equal values)")
    return net, process.config(), _PREDICTION_OF[param]


def export_diffusers(run: str | Run, out: str, *, weights: str = "ema") -> DiffusersExport:
    """Write run ``run`` (a folder or a loaded :class:`unidm.run.Run`) as a ``DDPMPipeline`` folder ``out``:
    ``model_index.json``, ``unet/`` (``config.json``, ``diffusion_pytorch_model.safetensors``: the ``weights``,
    EMA by default) and ``scheduler/`` (a ``DDPMScheduler`` with the run's betas and prediction type, ``clip_sample``
    off as in unidm). ``DDPMPipeline.from_pretrained(out)`` and ``DDIMPipeline.from_pretrained(out)`` load it.

    Only runs whose network is ``diffusers-unet2d`` on ``vp-discrete`` (eps, v or x0) are taken; any other is
    refused with ``ValueError`` naming what is supported. ``out`` must be new or empty; it appears whole or not at all.
    """
    _check_out(out)
    loaded = load_run(run, weights=weights) if isinstance(run, str) else run
    net, process, prediction = _exportable(loaded)
    diffusers = diffusers_module()
    if set(process) == {"beta_start", "beta_end", "num_steps"}:
        schedule = {"beta_start": process["beta_start"], "beta_end": process["beta_end"], "beta_schedule": "linear"}
    else:
        schedule = {"trained_betas": [float(b) for b in loaded.model.process.betas]}
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=net.num_train_timesteps, prediction_type=prediction,
                                        clip_sample=False, variance_type="fixed_small", **schedule)
    notes = []
    if net.num_classes:
        null = f", null label {net.num_classes}" if net.null_label else ""
        notes.append(f"class-conditional ({net.num_classes} classes{null}): DDPMPipeline passes no class labels; "
                     "call the UNet with class_labels=")
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, temporary_name(os.path.basename(os.path.abspath(out))))
    unet = net.unet
    try:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return DiffusersExport(out, "DDPMScheduler", notes)
