"""Checkpoints that cannot run code and cannot be half-written.

A checkpoint is a folder ``state/step_XXXXXXXX/`` holding exactly three files:

* ``model.safetensors``: ``model.*`` raw and ``ema.*`` weights;
* ``optimizer.safetensors``: the optimizer's tensors (Adam moments, step counts);
* ``state.json``: the step, the optimizer's hyper-parameters and scalars, extra run state (world size, loss
  scaler, per-rank parameter digests) and a SHA-256 of each of the two weight files.

It is written into a temporary folder, every file fsynced, then renamed into place, so a crash at any moment
leaves either the previous checkpoints alone or the new one whole. A folder whose ``state.json`` does not parse,
whose files do not match their SHA-256, or which holds any other file is refused with a message naming the file.

Nothing is ever unpickled: weights come only from safetensors (a Rust parser that cannot execute code) and
everything else from JSON, so a checkpoint handed over by a stranger cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file

__all__ = [
    "CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints",
    "verify_checkpoint", "last_good_checkpoint", "checkpoint_path", "clean_temporaries", "param_digest",
    "atomic_write_bytes", "atomic_save_safetensors", "load_safetensors", "fault_point", "FORMAT", "TMP_PREFIX",
    "RUN_FILES", "temporary_name", "is_temporary",
]

FORMAT = "unidm-checkpoint-1"
WEIGHT_FILES = ("model.safetensors", "optimizer.safetensors")
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Every temporary file or folder our atomic writers create is named ``.unidm-tmp-<16 hex>-<final name>``, and
# clean_temporaries deletes nothing else: a user's own ``.tmp-*`` (or anything) in a run folder is never touched.
TMP_PREFIX = ".unidm-tmp-"
_TMP_NAME = re.compile(r"^\.unidm-tmp-[0-9a-f]{16}-(?P<final>.+)$")
# what the atomic writers of earlier versions named a checkpoint being written (tempfile.mkdtemp in state/)
_LEGACY_TMP_STEP = re.compile(r"^\.tmp-step_[a-z0-9_]{8}$")
# the files the loop replaces atomically in the run folder itself
RUN_FILES = ("model.safetensors", "config.json", "metrics.jsonl")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or not a unidm safetensors/JSON file."""


def fault_point(name: str) -> None:
    """Sleep here if ``UNIDM_FAULT_SLEEP`` asks for it (``"checkpoint=2,step=0.05"``, seconds per point).

    A testing hook: it widens the window in which a test's SIGKILL lands inside a checkpoint write or a step.
    Points: ``checkpoint`` (inside a checkpoint write, after the weights, before ``state.json`` and the rename)
    and ``step`` (after each optimizer step). Unset, it costs one environment lookup.
    """
    spec = os.environ.get("UNIDM_FAULT_SLEEP")
    if not spec:
        return
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key.strip() == name:
            time.sleep(float(value))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: str, directory: bool = False) -> None:
    """Give a temporary file or folder the permissions a plain ``open``/``mkdir`` would (mkstemp makes them 0600)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def temporary_name(final: str) -> str:
    """The name our atomic writers give the temporary copy of ``final`` (a file or folder name) while writing it:
    ``.unidm-tmp-<16 hex>-<final>``, which nothing else is called."""
    return f"{TMP_PREFIX}{secrets.token_hex(8)}-{final}"


def _make_temporary(folder: str, final: str, directory: bool = False) -> str:
    """Create (exclusively, private to us) a new temporary file or folder in ``folder`` for ``final``."""
    for _ in range(100):
        tmp = os.path.join(folder, temporary_name(final))
        try:
            if directory:
                os.mkdir(tmp, 0o700)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary name for {final} in {folder}")


def _atomic_replace(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder; on any
    error the temporary file is removed and ``path`` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _make_temporary(folder, os.path.basename(path))
    try:
        write(tmp)
        _publish_mode(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, rename."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _atomic_replace(path, write)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict | None = None) -> None:
    """Save tensors (moved to CPU) as safetensors at ``path`` via a temporary file, fsync, rename."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_replace(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def _check_safetensors_header(head: bytes, size: int, path: str) -> None:
    """Refuse, with a clear message, anything whose first bytes are not a safetensors header.

    The safetensors parser would refuse such a file too (it never unpickles); this only names the usual culprits:
    a ``torch.save`` zip archive or a raw pickle renamed to ``.safetensors``.
    """
    # a safetensors header first: its 8-byte length may itself start with the bytes of another format's signature
    # (a length of 128 + 256 k begins with 0x80, a pickle's first byte)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return
    if head[:2] == b"PK":
        raise CheckpointError(f"{path} is a zip archive (torch.save output), not safetensors; refusing to load it")
    if head[:1] == b"\x80":
        raise CheckpointError(f"{path} is a pickle, not safetensors; refusing to load it")
    if len(head) < 9:
        raise CheckpointError(f"{path} is truncated ({size} bytes; not a safetensors file)")
    raise CheckpointError(f"{path} is not a safetensors file (bad or truncated header); refusing to load it")


def _parse_safetensors(data: bytes, path: str, device: str | torch.device) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes already in memory (no mmap: a file changed later cannot fault the tensors)."""
    _check_safetensors_header(data[:9], len(data), path)
    try:
        tensors = safetensors_load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from e
    return {k: v.to(device) for k, v in tensors.items()} if str(device) != "cpu" else tensors


def load_safetensors(path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle, a truncated or foreign file) is refused, never run."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    return _parse_safetensors(data, path, device)


def param_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict: equal digests mean bitwise-equal weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able rest."""
    tensors, scalars = {}, {}
    for idx, st in opt_state["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = v
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict, where: str) -> dict:
    try:
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
        for key, v in meta.get("scalars", {}).items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = v
        return {"state": state, "param_groups": list(meta["param_groups"])}
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{where}: malformed optimizer state ({e!r})") from e


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, loaded."""

    path: str
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict
    extra: dict


def checkpoint_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "state", f"step_{step:08d}")


def save_checkpoint(run_dir: str, step: int, model_state: dict, ema_state: dict, optimizer_state: dict,
                    extra: dict | None = None, keep_last: int = 3) -> str:
    """Write ``state/step_<step>/`` atomically (temporary folder, fsync, rename), then prune to ``keep_last``.

    ``keep_last <= 0`` keeps every checkpoint. Pruning runs only after the new checkpoint is in place, so there is
    always at least one whole checkpoint on disk once the first has been written.
    """
    root = os.path.join(run_dir, "state")
    os.makedirs(root, exist_ok=True)
    final = checkpoint_path(run_dir, step)
    tmp = _make_temporary(root, os.path.basename(final), directory=True)
    try:
        _publish_mode(tmp, directory=True)
        weights = {**{f"model.{k}": v for k, v in model_state.items()},
                   **{f"ema.{k}": v for k, v in ema_state.items()}}
        atomic_save_safetensors(weights, os.path.join(tmp, "model.safetensors"))
        fault_point("checkpoint")
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        atomic_save_safetensors(opt_tensors, os.path.join(tmp, "optimizer.safetensors"))
        state = {
            "format": FORMAT, "step": step, "optimizer": opt_meta, "extra": extra or {},
            "sha256": {f: _sha256(os.path.join(tmp, f)) for f in WEIGHT_FILES},
        }
        atomic_write_bytes(os.path.join(tmp, "state.json"), json.dumps(state).encode())
        _fsync_dir(tmp)
        if os.path.exists(final):  # rewriting a step (e.g. after resuming past a corrupt copy of it)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str) -> list[str]:
    """Checkpoint folders of a run, oldest first by step (temporary folders of interrupted writes are ignored)."""
    root = os.path.join(run_dir, "state")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        if m and os.path.isdir(os.path.join(root, name)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return [p for _, p in sorted(found)]


def is_temporary(name: str, folder: str = "run") -> bool:
    """Whether ``name`` is one our writers give a temporary in the run folder (``folder="run"``: a file being
    written as one of :data:`RUN_FILES`) or in ``state/`` (``folder="state"``: a checkpoint folder being written,
    also under the name earlier versions used)."""
    m = _TMP_NAME.match(name)
    if folder == "state":
        return bool(m and _STEP_DIR.match(m.group("final"))) or bool(_LEGACY_TMP_STEP.match(name))
    return bool(m and m.group("final") in RUN_FILES)


def clean_temporaries(run_dir: str) -> list[str]:
    """Delete what interrupted writes left behind, and nothing else: files named as our temporaries of
    :data:`RUN_FILES` in the run folder, folders named as our temporary checkpoints in ``state/``.

    Only call this when no other process is writing the run (the loop does it on rank 0, holding the run's lock).
    """
    removed = []
    for folder, where, is_dir in ((run_dir, "run", False), (os.path.join(run_dir, "state"), "state", True)):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            p = os.path.join(folder, name)
            if not is_temporary(name, where) or os.path.islink(p) or os.path.isdir(p) != is_dir:
                continue
            shutil.rmtree(p, ignore_errors=True) if is_dir else os.unlink(p)
            removed.append(p)
    return removed


def _read_state(path: str) -> dict:
    """Parse and check ``state.json`` and the folder's listing (no weight file is read)."""
    state_path = os.path.join(path, "state.json")
    try:
        with open(state_path, "rb") as f:
            state = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{state_path} is missing (checkpoint incomplete)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_path} is not valid JSON (truncated or corrupt): {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{state_path} is not a {FORMAT} checkpoint")
    digests = state.get("sha256")
    if not isinstance(digests, dict) or sorted(digests) != sorted(WEIGHT_FILES) \
            or not isinstance(state.get("step"), int) or not isinstance(state.get("optimizer"), dict):
        raise CheckpointError(f"{state_path} is malformed (needs step, optimizer and sha256 of {WEIGHT_FILES})")
    unexpected = sorted(set(os.listdir(path)) - {"state.json", *WEIGHT_FILES})
    if unexpected:
        raise CheckpointError(f"{path} holds unexpected files {unexpected}; a checkpoint holds only state.json and "
                              f"{', '.join(WEIGHT_FILES)}, so refusing it")
    return state


def _read_verified(path: str, digest: str) -> bytes:
    """The bytes of ``path`` if their SHA-256 is ``digest``: what is hashed is exactly what gets parsed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is missing") from e
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{path} is corrupt or truncated (its SHA-256 does not match state.json)")
    return data


def verify_checkpoint(path: str) -> dict:
    """Check a checkpoint folder without parsing tensors: ``state.json`` parses and holds the expected fields,
    every weight file matches its SHA-256, no other file is present. Returns the parsed ``state.json``.

    Raises :class:`CheckpointError` naming the offending file.
    """
    state = _read_state(path)
    for name in WEIGHT_FILES:
        fp = os.path.join(path, name)
        if not os.path.isfile(fp):
            raise CheckpointError(f"{fp} is missing")
        if _sha256(fp) != state["sha256"][name]:
            raise CheckpointError(f"{fp} is corrupt or truncated (its SHA-256 does not match state.json)")
    return state


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify one checkpoint folder; raise :class:`CheckpointError` naming the bad file.

    Weights go to ``device``; the optimizer's tensors stay on CPU (``optimizer.load_state_dict`` moves moments to
    their parameters' device and must keep Adam's ``step`` counts on CPU).
    """
    state = _read_state(path)
    model_path, opt_path = (os.path.join(path, n) for n in WEIGHT_FILES)
    weights = _parse_safetensors(_read_verified(model_path, state["sha256"]["model.safetensors"]), model_path,
                                 device)
    opt_tensors = _parse_safetensors(_read_verified(opt_path, state["sha256"]["optimizer.safetensors"]), opt_path,
                                     "cpu")
    model = {k[6:]: v for k, v in weights.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in weights.items() if k.startswith("ema.")}
    opt = _unflatten_optimizer(opt_tensors, state["optimizer"], opt_path)
    return Checkpoint(path, int(state["step"]), model, ema, opt, state.get("extra", {}))


def latest_checkpoint(run_dir: str, device: str | torch.device = "cpu",
                      warn: Callable[[str], None] = print) -> Checkpoint | None:
    """The newest checkpoint that loads and verifies; broken ones are reported (naming the file) and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, device)
        except CheckpointError as e:
            warn(f"warning: skipping checkpoint {path}: {e}")
    return None


def last_good_checkpoint(run_dir: str) -> str | None:
    """Path of the newest checkpoint that verifies (hashes only; no tensors loaded), or None."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError:
            continue
    return None
