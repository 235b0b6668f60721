"""The training loop: any :class:`~unidm.methods.GenerativeModel`, any loss it owns, one readable function.

Every random number of step ``k`` on rank ``r`` comes from a generator seeded by ``(seed, r, k)``, and the data
order from ``(seed, epoch)`` (:class:`~unidm.data.BatchOrder`), so a resumed run needs no saved RNG state and
continues exactly where it stopped. Multi-process training uses PyTorch's DistributedDataParallel when launched
by ``torchrun`` (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import TrainConfig
from ..data import BatchOrder, Dataset, seed_for
from .checkpoint import atomic_save_safetensors, atomic_write_bytes, latest_checkpoint, list_checkpoints, save_checkpoint
from .distributed import DistInfo
from .ema import EMA

__all__ = ["train", "TrainResult", "TrainingDiverged", "resolve_device", "lr_at"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: str
    step: int
    loss: float
    wall_time: float
    steps_per_sec: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine or linear decay to ``min_lr_ratio * lr``."""
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.decay == "none":
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.decay == "cosine" else 1 - frac
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


class _LossModule(nn.Module):
    """``forward(batch, generator) = model.loss(...)``, so DistributedDataParallel sees the loss as a forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.model.loss(batch, generator)


def _truncate_metrics(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_bytes(path, "".join(keep).encode())


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("precision 'fp16' needs CUDA; use 'bf16' on CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    raise ValueError(f"unknown precision {precision!r}; valid: fp32, bf16, fp16")


def export_weights(run_dir: str, model: nn.Module, ema: EMA, step: int) -> None:
    """Write ``model.safetensors`` (``model.*`` raw and ``ema.*`` weights) atomically."""
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"ema.{k}": v for k, v in ema.state_dict().items()}}
    atomic_save_safetensors(tensors, os.path.join(run_dir, "model.safetensors"),
                            metadata={"format": "unidm-weights-1", "step": str(step)})


def train(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    run_dir: str,
    *,
    resume: bool = False,
    config_dict: dict | None = None,
    callback: Callable[[int, nn.Module, EMA, dict], None] | None = None,
    max_seconds: float | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``model`` on ``data.train`` for ``cfg.steps`` optimizer steps, writing the run folder ``run_dir``.

    Args:
        model: a :class:`~unidm.methods.GenerativeModel` (``model.loss(batch, generator) -> [B]``).
        resume: continue from the newest whole checkpoint in ``run_dir`` (bitwise on CPU).
        config_dict: the resolved run config, written to ``config.json``.
        callback: called as ``callback(step, model, ema, record)`` at every log interval (rank 0).
        max_seconds: stop (with a checkpoint) after this much training time.
    Raises:
        TrainingDiverged: NaN/inf loss or gradients; the last good checkpoint is left in place.
    """
    dist = DistInfo.from_env()
    device = resolve_device(cfg.device) if dist.world_size == 1 else dist.device(cfg.device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    is_main = dist.rank == 0
    model.to(device)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                  weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    step = 0
    if resume:
        ck = latest_checkpoint(run_dir, device)
        if ck is None:
            raise FileNotFoundError(f"--resume: no whole checkpoint under {run_dir}/state")
        model.load_state_dict(ck.model)
        ema.load_state_dict(ck.ema)
        optimizer.load_state_dict(ck.optimizer)
        step = ck.step
        if is_main:
            _truncate_metrics(metrics_path, step)
            log(f"resumed from {ck.path} at step {step}")
    elif list_checkpoints(run_dir):
        raise FileExistsError(f"{run_dir} already holds checkpoints; pass --resume to continue it or pick a new --out")
    if is_main:
        os.makedirs(run_dir, exist_ok=True)
        if config_dict is not None:
            atomic_write_bytes(os.path.join(run_dir, "config.json"),
                               json.dumps(config_dict, indent=2, sort_keys=True).encode())

    loss_module: nn.Module = _LossModule(model)
    if dist.world_size > 1:
        loss_module = dist.wrap(loss_module, device)
    if cfg.compile:
        loss_module = torch.compile(loss_module)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None

    order = BatchOrder(len(data.train), cfg.batch_size, cfg.seed, dist.rank, dist.world_size)
    train_tensors = {"x": data.train.to(device)}
    if data.train_labels is not None:
        train_tensors["y"] = data.train_labels.to(device)
    params = [p for p in model.parameters() if p.requires_grad]

    start_step, window_loss, window_n = step, 0.0, 0
    t_start = time.perf_counter()
    t_window, steps_window = t_start, 0
    progress = None
    if is_main and cfg.progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        progress = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True, leave=False)
    text_every = max(cfg.log_every, cfg.steps // 10)  # without a terminal: a log line every tenth of the run

    def checkpoint(at: int) -> None:
        if is_main:
            save_checkpoint(run_dir, at, model.state_dict(), ema.state_dict(), optimizer.state_dict(),
                            extra={"rank_count": dist.world_size}, keep_last=cfg.keep_last)
            export_weights(run_dir, model, ema, at)
        dist.barrier()

    model.train()
    loss_value = float("nan")
    try:
        while step < cfg.steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            idx = order.indices(step).to(device)
            micro = idx.chunk(cfg.grad_accum)
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for m, mi in enumerate(micro):
                seed = seed_for(cfg.seed, "step", dist.rank, step, m)
                gen = torch.Generator(device).manual_seed(seed)
                torch.manual_seed(seed)
                batch = {k: v[mi] for k, v in train_tensors.items()}
                sync = dist.no_sync(loss_module) if (m < len(micro) - 1) else contextlib.nullcontext()
                with sync, _autocast(device, cfg.precision):
                    loss = loss_module(batch, gen).float().mean() / len(micro)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(_diverged_message("loss", float(loss), step, run_dir))
                (scaler.scale(loss) if scaler else loss).backward()
                step_loss += float(loss.detach())
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if not torch.isfinite(grad_norm):
                raise TrainingDiverged(_diverged_message("gradient norm", float(grad_norm), step, run_dir))
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            step += 1
            ema.update(model, step)
            loss_value = dist.mean(step_loss)
            window_loss, window_n, steps_window = window_loss + loss_value, window_n + 1, steps_window + 1
            if progress is not None:
                progress.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rate = steps_window / max(now - t_window, 1e-9)
                record = {"step": step, "loss": window_loss / window_n, "lr": optimizer.param_groups[0]["lr"],
                          "grad_norm": float(grad_norm), "steps_per_sec": rate,
                          "examples_per_sec": rate * cfg.batch_size, "time": now - t_start}
                if is_main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if progress is not None:
                        progress.set_postfix(loss=f"{record['loss']:.4f}", it_s=f"{rate:.0f}")
                    elif cfg.progress and (step % text_every == 0 or step == cfg.steps):
                        log(f"step {step}/{cfg.steps}  loss {record['loss']:.4f}  {rate:.1f} steps/s  "
                            f"lr {record['lr']:.2e}")
                    if callback is not None:
                        callback(step, model, ema, record)
                window_loss, window_n, t_window, steps_window = 0.0, 0, now, 0
            out_of_time = max_seconds is not None and time.perf_counter() - t_start > max_seconds
            if step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time:
                checkpoint(step)
            if out_of_time:
                break
    finally:
        if progress is not None:
            progress.close()
    wall = time.perf_counter() - t_start
    return TrainResult(run_dir, step, loss_value, wall, (step - start_step) / max(wall, 1e-9))


def _diverged_message(what: str, value: float, step: int, run_dir: str) -> str:
    ckpts = list_checkpoints(run_dir)
    kept = f"the last good checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint had been written yet"
    return (f"training stopped: the {what} became {value} at step {step}; {kept}. "
            "Lower train.lr, raise train.warmup or set train.grad_clip, then `unidm train --resume`.")
