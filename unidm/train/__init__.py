"""Training: one loop (:func:`train`), EMA, safe atomic checkpoints, multi-process via torchrun."""

from .checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint, load_safetensors
from .ema import EMA
from .loop import TrainingDiverged, TrainResult, lr_at, resolve_device, train

__all__ = ["train", "TrainResult", "TrainingDiverged", "EMA", "CheckpointError", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "load_safetensors", "lr_at", "resolve_device"]
