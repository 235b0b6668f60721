"""Checkpoints that cannot run code and cannot be half-written.

A checkpoint is a folder ``state/step_XXXXXXXX/`` holding ``model.safetensors`` (``model.*`` raw and ``ema.*``
weights), ``optimizer.safetensors`` (the optimizer's tensors) and ``state.json`` (step, optimizer hyper-parameters
and a SHA-256 of each file). It is written under a temporary name, fsynced and renamed, so a crash leaves the
previous one whole; a file whose hash does not match is refused. Nothing is ever unpickled: weights come only from
safetensors, everything else from JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints",
    "atomic_write_bytes", "atomic_save_safetensors", "load_safetensors", "FORMAT",
]

FORMAT = "unidm-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or not a unidm safetensors/JSON file."""


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict | None = None) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_safetensors(path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle, a truncated or foreign file) is refused, never run."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise CheckpointError(f"{path} is truncated (not a safetensors file)")
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(f"{path} is a pickle or zip archive, not safetensors; refusing to load it")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from e


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in opt_state["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = v
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, loaded."""

    path: str
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict
    extra: dict


def save_checkpoint(run_dir: str, step: int, model_state: dict, ema_state: dict, optimizer_state: dict,
                    extra: dict | None = None, keep_last: int = 3) -> str:
    """Write ``state/step_<step>/`` atomically (temporary folder, fsync, rename), then prune to ``keep_last``."""
    root = os.path.join(run_dir, "state")
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step_{step:08d}")
    tmp = tempfile.mkdtemp(dir=root, prefix=".tmp-step_")
    try:
        weights = {**{f"model.{k}": v for k, v in model_state.items()},
                   **{f"ema.{k}": v for k, v in ema_state.items()}}
        atomic_save_safetensors(weights, os.path.join(tmp, "model.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        atomic_save_safetensors(opt_tensors, os.path.join(tmp, "optimizer.safetensors"))
        state = {
            "format": FORMAT, "step": step, "optimizer": opt_meta, "extra": extra or {},
            "sha256": {f: _sha256(os.path.join(tmp, f)) for f in ("model.safetensors", "optimizer.safetensors")},
        }
        atomic_write_bytes(os.path.join(tmp, "state.json"), json.dumps(state).encode())
        _fsync_dir(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str) -> list[str]:
    """Checkpoint folders of a run, oldest first (temporary folders of interrupted writes are ignored)."""
    root = os.path.join(run_dir, "state")
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step_") and os.path.isdir(os.path.join(root, n)))
    return [os.path.join(root, n) for n in names]


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify one checkpoint folder; raise :class:`CheckpointError` naming the bad file."""
    state_path = os.path.join(path, "state.json")
    try:
        with open(state_path) as f:
            state = json.load(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"{state_path} is missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_path} is not valid JSON: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{state_path} is not a {FORMAT} checkpoint")
    extra_files = sorted(set(os.listdir(path)) - {"state.json", "model.safetensors", "optimizer.safetensors"})
    if extra_files:
        raise CheckpointError(f"{path} holds unexpected files {extra_files}; refusing it")
    for name, digest in state["sha256"].items():
        fp = os.path.join(path, name)
        if not os.path.isfile(fp):
            raise CheckpointError(f"{fp} is missing")
        if _sha256(fp) != digest:
            raise CheckpointError(f"{fp} is corrupt (its SHA-256 does not match state.json)")
    weights = load_safetensors(os.path.join(path, "model.safetensors"), device)
    model = {k[6:]: v for k, v in weights.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in weights.items() if k.startswith("ema.")}
    opt = _unflatten_optimizer(load_safetensors(os.path.join(path, "optimizer.safetensors"), device),
                               state["optimizer"])
    return Checkpoint(path, int(state["step"]), model, ema, opt, state.get("extra", {}))


def latest_checkpoint(run_dir: str, device: str | torch.device = "cpu", warn=print) -> Checkpoint | None:
    """The newest checkpoint that loads and verifies; broken ones are reported (naming the file) and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, device)
        except CheckpointError as e:
            warn(f"warning: skipping checkpoint {path}: {e}")
    return None
