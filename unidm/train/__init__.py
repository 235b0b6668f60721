"""Training: one loop (:func:`train`), EMA, safe atomic checkpoints, multi-process via torchrun."""

from .checkpoint import (
    Checkpoint, CheckpointError, last_good_checkpoint, latest_checkpoint, list_checkpoints, load_checkpoint,
    load_safetensors, param_digest, verify_checkpoint,
)
from .config import TrainConfig
from .distributed import DistInfo
from .ema import EMA
from .loop import TrainingDiverged, TrainingInterrupted, TrainResult, lr_at, resolve_device, shard_seed, train
from .runfolder import RunLock, RunLocked, check_run_folder, is_run_folder

__all__ = ["train", "TrainConfig", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "EMA", "DistInfo",
           "Checkpoint", "CheckpointError", "latest_checkpoint", "last_good_checkpoint", "list_checkpoints",
           "load_checkpoint", "load_safetensors", "verify_checkpoint", "param_digest", "lr_at", "resolve_device",
           "shard_seed", "RunLock", "RunLocked", "check_run_folder", "is_run_folder"]
