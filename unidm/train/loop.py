"""The training loop: any :class:`~unidm.methods.GenerativeModel`, any loss it owns, one readable function.

Exact resume by construction. Nothing random is carried from step to step, so nothing random needs saving:

* the data order of epoch ``e`` is a permutation drawn from ``(seed, "data", e)`` (:class:`~unidm.data.BatchOrder`),
  so global batch ``k`` is a pure function of ``(seed, k)``;
* global batch ``k`` is cut into ``S = world_size * grad_accum`` **shards** (shard ``j`` holds positions
  ``j, j + S, j + 2S, ...``); rank ``r`` evaluates shards ``r, r + W, ...`` one micro-batch each, and every
  random number of shard ``j`` (noise levels, noise, label dropout, dropout) comes from a generator seeded with
  ``(seed, "step", k, j)``.

So a checkpoint (weights, EMA, optimizer tensors, step) is all a resumed run needs to continue bitwise on CPU,
and a run's data and noise depend on the product ``S`` only, not on how it is split between processes and
accumulation: 2 processes x 1 micro-batch see exactly what 1 process x 2 micro-batches sees, and their losses and
weights agree up to floating-point reduction order.

Multi-process training uses DistributedDataParallel when launched by ``torchrun`` (gloo on CPU, NCCL on CUDA);
EMA, checkpoints, metrics and the exported weights live on rank 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..data import BatchOrder, Dataset, seed_for
from .checkpoint import (
    CheckpointError, atomic_save_safetensors, atomic_write_bytes, checkpoint_path, clean_temporaries, fault_point,
    last_good_checkpoint, latest_checkpoint, list_checkpoints, load_checkpoint, param_digest, save_checkpoint,
)
from .config import TrainConfig
from .distributed import DistInfo, resolve_device
from .ema import EMA
from .runfolder import RunLock, check_run_folder

__all__ = ["train", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "resolve_device", "lr_at",
           "shard_seed", "export_weights"]

DECAYS = ("cosine", "linear", "none")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite (or the ranks' weights stopped agreeing)."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) stopped training; the checkpoint of the step reached is written. The message names the step
    and the command that resumes the run."""

    def __init__(self, message: str, step: int, checkpoint: str):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainResult:
    run_dir: str
    step: int
    loss: float
    wall_time: float
    steps_per_sec: float


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine or linear decay to ``min_lr_ratio * lr``."""
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.decay == "none":
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.decay == "cosine" else 1 - frac
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The seed of every random number drawn for shard ``shard`` of global batch ``step`` (see the module doc)."""
    return seed_for(seed, "step", step, shard)


class _LossModule(nn.Module):
    """``forward(batch, generator) = model.loss(...)``, so DistributedDataParallel sees the loss as a forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.model.loss(batch, generator)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.float16)


def _check_settings(cfg: TrainConfig, device: torch.device, dist: DistInfo) -> None:
    """Refuse impossible settings before anything is written."""
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {cfg.precision!r}; valid: fp32, bf16, fp16")
    if cfg.decay not in DECAYS:
        raise ValueError(f"unknown train.decay {cfg.decay!r}; valid: {', '.join(DECAYS)}")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs CUDA (autocast with a gradient scaler), but this run is on "
                         f"{device.type}; use train.precision=bf16 on CPU")
    if cfg.grad_accum < 1:
        raise ValueError(f"train.grad_accum must be >= 1, got {cfg.grad_accum}")
    shards = dist.world_size * cfg.grad_accum
    if cfg.batch_size % shards:
        raise ValueError(f"train.batch_size {cfg.batch_size} must be divisible by world_size x grad_accum = "
                         f"{dist.world_size} x {cfg.grad_accum} = {shards}")
    if cfg.ckpt_every < 1:
        raise ValueError(f"train.ckpt_every must be >= 1, got {cfg.ckpt_every}")


def _truncate_metrics(path: str, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint we resume from) and any half-written line."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, AttributeError):
                continue
    atomic_write_bytes(path, "".join(keep).encode())


def export_weights(run_dir: str, model: nn.Module, ema: EMA, step: int) -> None:
    """Write ``model.safetensors`` (``model.*`` raw and ``ema.*`` weights) atomically."""
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"ema.{k}": v for k, v in ema.state_dict().items()}}
    atomic_save_safetensors(tensors, os.path.join(run_dir, "model.safetensors"),
                            metadata={"format": "unidm-weights-1", "step": str(step)})


def _restore(run_dir: str, resume: bool, cfg: TrainConfig, dist: DistInfo, device: torch.device,
             model: nn.Module, ema: EMA | None, optimizer: torch.optim.Optimizer, scaler,
             log: Callable[[str], None]) -> int:
    """Load the newest whole checkpoint (``resume``) or check the folder is fresh; return the step to start at.

    Rank 0 chooses (skipping broken checkpoints with a warning naming the file) and broadcasts the step, so every
    rank loads the same one; the run folder must therefore be on a filesystem all ranks see.
    """
    chosen, ck = 0, None
    if dist.is_main:
        if resume:
            ck = latest_checkpoint(run_dir, device, warn=log)
            chosen = -1 if ck is None else ck.step
        elif list_checkpoints(run_dir):
            chosen = -2
    chosen = dist.broadcast_int(chosen)
    if chosen == -1:
        raise FileNotFoundError(f"--resume: no whole checkpoint under {run_dir}/state")
    if chosen == -2:
        raise FileExistsError(f"{run_dir} already holds checkpoints; pass --resume to continue it or pick a new --out")
    if not resume:
        return 0
    if chosen > cfg.steps:
        raise ValueError(f"train.steps={cfg.steps} is below step {chosen}, which the run already reached "
                         f"({checkpoint_path(run_dir, chosen)}); pass train.steps={chosen} or more to resume it")
    if ck is None:
        path = checkpoint_path(run_dir, chosen)
        try:
            ck = load_checkpoint(path, device)
        except CheckpointError as e:
            raise CheckpointError(f"rank {dist.rank} cannot load {path}, which rank 0 resumes from ({e}); the run "
                                  "folder must be on a filesystem shared by all nodes") from e
    model.load_state_dict(ck.model)
    if ema is not None:
        ema.load_state_dict(ck.ema)
    optimizer.load_state_dict(ck.optimizer)
    if scaler is not None and "scaler" in ck.extra:
        scaler.load_state_dict(ck.extra["scaler"])
    if dist.is_main:
        log(f"resumed from {ck.path} at step {ck.step}")
        saved = ck.extra.get("shards")
        if saved is not None and saved != dist.world_size * cfg.grad_accum:
            log(f"note: the checkpoint was written with {saved} shards per batch (world_size x grad_accum), this run "
                f"uses {dist.world_size * cfg.grad_accum}; training continues with a different noise stream")
    return ck.step


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

    The batches are :meth:`Dataset.train_tensors <unidm.data.Dataset.train_tensors>` (``"x"``, ``"y"``, the
    dataset's extras) cut by the same indices. Only ``model.parameters()`` that require gradients are optimized;
    frozen sub-models (:meth:`~unidm.methods.base.TrainableModel.add_frozen`) are in no checkpoint.

    The run folder must be new, empty or a unidm run (:func:`~unidm.train.runfolder.check_run_folder`); rank 0
    holds its lock (:class:`~unidm.train.runfolder.RunLock`) while training. Ctrl-C (SIGINT, in the main thread)
    finishes the step, writes its checkpoint on every rank's agreement and raises :class:`TrainingInterrupted`;
    further Ctrl-C are ignored until then.

    Raises:
        TrainingDiverged: NaN/inf loss or gradients; the last good checkpoint is left in place and named.
        TrainingInterrupted: Ctrl-C; the checkpoint of the step reached is written.
        FileExistsError: the folder is not a unidm run, holds checkpoints (without ``resume``), or another
            process trains it (:class:`~unidm.train.runfolder.RunLocked`).
        FileNotFoundError: ``resume`` and no whole checkpoint.
        ValueError: impossible settings, or ``cfg.steps`` below the step the resumed run reached.
    """
    dist = DistInfo.from_env(cfg.device)
    device = dist.device(cfg.device)
    _check_settings(cfg, device, dist)
    lock = _open_run_folder(run_dir, resume, dist, log)
    try:
        result, interrupted = _train(model, data, cfg, run_dir, dist, device, resume, config_dict, callback,
                                     max_seconds, log)
    finally:
        if lock is not None:
            lock.release()
    dist.close()  # only on success: after an error other ranks may sit in a collective, and the process ends anyway
    if interrupted:
        path = checkpoint_path(run_dir, result.step)
        raise TrainingInterrupted(f"training interrupted at step {result.step} of {cfg.steps}; checkpoint {path} is "
                                  f"written. Resume with: unidm train --out {run_dir} --resume", result.step, path)
    return result


def _open_run_folder(run_dir: str, resume: bool, dist: DistInfo, log: Callable[[str], None]) -> RunLock | None:
    """On rank 0: refuse a folder that is not ours, then take its lock (held while training). Every rank learns
    whether that worked, so none waits in a collective for a rank 0 that has stopped."""
    lock, error = None, None
    if dist.is_main:
        try:
            check_run_folder(run_dir, resume)
            os.makedirs(os.path.join(run_dir, "state"), exist_ok=True)
            lock = RunLock(run_dir, log)
            lock.acquire()
        except OSError as e:
            error = e
    if dist.broadcast_int(0 if error is None else 1):
        if error is not None:
            raise error
        raise RuntimeError(f"rank 0 could not open the run folder {run_dir} (its message says why)")
    return lock


class _Sigint:
    """While active (in the main thread only), Ctrl-C sets :attr:`raised` instead of raising KeyboardInterrupt, so
    the loop can finish the step and write its checkpoint; further Ctrl-C change nothing. The previous handler is
    put back on exit."""

    def __init__(self):
        self.raised, self._previous, self._installed = False, None, False

    def _handle(self, signum, frame) -> None:
        self.raised = True  # nothing else: a signal handler must not write to a stream the loop may be writing

    def __enter__(self) -> "_Sigint":
        # not in other threads (Python allows handlers only in the main one), nor where SIGINT is ignored
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler if self._previous is None else self._previous)
            self._installed = False


def _train(model: nn.Module, data: Dataset, cfg: TrainConfig, run_dir: str, dist: DistInfo, device: torch.device,
           resume: bool, config_dict: dict | None, callback, max_seconds: float | None,
           log: Callable[[str], None]) -> tuple[TrainResult, bool]:
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    is_main = dist.is_main
    world, accum = dist.world_size, cfg.grad_accum
    model.to(device)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")

    params = [p for p in model.parameters() if p.requires_grad]  # frozen sub-models are not parameters at all
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup) if is_main else None
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    step = _restore(run_dir, resume, cfg, dist, device, model, ema, optimizer, scaler, log)
    if is_main:
        os.makedirs(run_dir, exist_ok=True)
        clean_temporaries(run_dir)  # what a killed write left behind; we hold the lock, nobody else writes here
        _truncate_metrics(metrics_path, step)  # a fresh run (step 0) in a run folder of ours starts a new log
        if resume:
            export_weights(run_dir, model, ema, step)  # a kill may have landed between checkpoint and export
        if config_dict is not None:
            atomic_write_bytes(os.path.join(run_dir, "config.json"),
                               json.dumps(config_dict, indent=2, sort_keys=True).encode())
    dist.barrier()

    loss_module = dist.wrap(_LossModule(model), device)  # DDP broadcasts rank 0's weights here
    if cfg.compile:
        loss_module = torch.compile(loss_module)

    train_tensors = {k: v.to(device) for k, v in data.train_tensors().items()}
    order = BatchOrder(len(train_tensors["x"]), cfg.batch_size, cfg.seed, dist.rank, world)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")

    def checkpoint(at: int) -> None:
        """Check every rank holds the same finite weights, then write the checkpoint on rank 0."""
        digests = dist.gather_strings(param_digest(model.state_dict()))
        if len(set(digests)) > 1:
            raise TrainingDiverged(f"after {at} steps the ranks hold different weights (digests {digests}); "
                                   f"{_last_good(run_dir)}")
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise TrainingDiverged(f"training stopped: the weights became non-finite after {at} steps; not saving "
                                   f"them. {_last_good(run_dir)}")
        if is_main:
            extra = {"world_size": world, "grad_accum": accum, "shards": world * accum, "param_digests": digests}
            if scaler is not None:
                extra["scaler"] = scaler.state_dict()
            save_checkpoint(run_dir, at, model.state_dict(), ema.state_dict(), optimizer.state_dict(),
                            extra=extra, keep_last=cfg.keep_last)
            export_weights(run_dir, model, ema, at)
        dist.barrier()

    start_step, window_loss, window_n = step, 0.0, 0
    t_start = time.perf_counter()
    t_window, steps_window = t_start, 0
    progress = None
    if is_main and cfg.progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        progress = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True, leave=False)
    text_every = max(cfg.log_every, cfg.steps // 10)  # without a terminal: a log line every tenth of the run

    model.train()
    loss_value, halt = float("nan"), False
    if not resume:
        # the initial weights: the run can be replayed from them, and an unwritable folder fails before any compute
        checkpoint(0)
    sigint = _Sigint()
    try:
        sigint.__enter__()
        while step < cfg.steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            idx = order.indices(step).to(device)  # this rank's share: positions rank, rank + W, ... of the batch
            optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device, dtype=torch.float64)
            for m in range(accum):
                seed = shard_seed(cfg.seed, step, dist.rank + world * m)
                gen = torch.Generator(device).manual_seed(seed)
                torch.manual_seed(seed)  # modules drawing from the global RNG (dropout) follow the shard too
                batch = {k: v[idx[m::accum]] for k, v in train_tensors.items()}
                sync = contextlib.nullcontext() if m == accum - 1 else dist.no_sync(loss_module)
                with sync:  # DDP all-reduces gradients on the last micro-batch only
                    with _autocast(device, cfg.precision):
                        loss = loss_module(batch, gen).float().mean() / accum
                    (scaler.scale(loss) if scaler else loss).backward()
                step_loss += loss.detach().double()  # float64: same sum however the shards are spread
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            out_of_time = max_seconds is not None and time.perf_counter() - t_start > max_seconds
            # one collective and one host sync per step: the mean loss, the norm, whether any rank is out of time and
            # whether any rank got Ctrl-C
            loss_sum, norm_sum, late, halt = dist.all_sum(torch.stack([
                step_loss, grad_norm.double(), torch.tensor(float(out_of_time), device=device).double(),
                torch.tensor(float(sigint.raised), device=device).double()]))
            loss_value, norm = loss_sum / world, norm_sum / world
            if not math.isfinite(loss_value):
                raise TrainingDiverged(_diverged_message("loss", loss_value, step, run_dir))
            if not math.isfinite(norm) and scaler is None:  # (with fp16 the scaler skips such a step instead)
                raise TrainingDiverged(_diverged_message("gradient norm", norm, step, run_dir))
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            step += 1
            if ema is not None:
                ema.update(model, step)
            fault_point("step")
            window_loss, window_n, steps_window = window_loss + loss_value, window_n + 1, steps_window + 1
            if progress is not None:
                progress.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rate = steps_window / max(now - t_window, 1e-9)
                record = {"step": step, "loss": window_loss / window_n, "lr": optimizer.param_groups[0]["lr"],
                          "grad_norm": norm, "steps_per_sec": rate,
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
            if halt and is_main:
                log(f"interrupted: writing the checkpoint of step {step} (further Ctrl-C are ignored until then)")
            if step % cfg.ckpt_every == 0 or step == cfg.steps or late or halt:
                checkpoint(step)
            if late or halt:
                break
    finally:
        sigint.__exit__()
        if progress is not None:
            progress.close()
    wall = time.perf_counter() - t_start
    result = TrainResult(run_dir, step, loss_value, wall, (step - start_step) / max(wall, 1e-9))
    return result, bool(halt) and step < cfg.steps


def _last_good(run_dir: str) -> str:
    path = last_good_checkpoint(run_dir)
    return (f"the last good checkpoint is {path} (resume from it with `unidm train --out {run_dir} --resume`)"
            if path else "no checkpoint had been written yet")


def _diverged_message(what: str, value: float, step: int, run_dir: str) -> str:
    return (f"training stopped: the {what} became {value} in step {step + 1} (after {step} good steps); "
            f"{_last_good(run_dir)}. To change train.lr, train.warmup or train.grad_clip, start a new run in "
            "another folder (--resume continues with the run's own settings).")
