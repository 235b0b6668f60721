"""Batches carry every per-example tensor of the dataset (``Dataset.extras``), and frozen sub-models stay out of
the optimizer, the EMA, the exported weights and the checkpoints, while training and resume stay exact.

The family here is test-only: a small MLP student regressed on ``teacher(x) + z``, where ``teacher`` is a frozen
MLP attached with ``add_frozen`` and ``z`` a second per-example tensor paired with ``x`` (like a reflow
coupling). The two-process test imports this module from its ``torchrun`` workers.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn

from _checks import logged_losses, same_checkpoints
from unidm.data import BatchOrder, Dataset
from unidm.methods.base import TrainableModel
from unidm.train import EMA, TrainConfig, list_checkpoints, load_checkpoint, param_digest, train
from unidm.train.runfolder import LOCK_NAME

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"log": lambda s: None}
HERE = os.path.dirname(os.path.abspath(__file__))


def _mlp(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))


class PairedDistill(TrainableModel):
    """Student ``s`` learns ``teacher(x) + z`` from ``x`` plus a little noise drawn from the shard's generator."""

    family = "paired-distill-test"

    def __init__(self, dim: int = 2, hidden: int = 16):
        super().__init__((dim,))
        self.student = _mlp(dim, hidden)

    def loss(self, batch, generator=None):
        x = batch["x"]
        x_in = x + 0.1 * torch.randn(x.shape, generator=generator, device=x.device)
        target = batch["z"] + (self.teacher(x) if "teacher" in self.frozen else 0.0)
        return ((self.student(x_in) - target) ** 2).mean(1)


def build_model(student_seed: int = 0, teacher_seed: int | None = 1) -> PairedDistill:
    """The student from ``student_seed``; the frozen teacher (None: no teacher) from ``teacher_seed``."""
    torch.manual_seed(student_seed)
    model = PairedDistill()
    if teacher_seed is not None:
        torch.manual_seed(teacher_seed)
        model.add_frozen("teacher", _mlp(2, 16))
    return model


def paired_data(n: int = 256) -> Dataset:
    """``x ~ N(0, I)`` and its partner ``z = sin(3 x)``: a row of ``z`` belongs to the same row of ``x``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    return Dataset("paired", x, torch.randn(32, 2, generator=g), extras={"z": torch.sin(3 * x)})


def train_config(**kw) -> TrainConfig:
    base = dict(steps=12, batch_size=32, lr=1e-2, warmup=2, ckpt_every=4, keep_last=0, log_every=1,
                progress=False, num_threads=1, device="cpu")
    return TrainConfig(**{**base, **kw})


def _final(run_dir):
    return load_checkpoint(list_checkpoints(run_dir)[-1])


def _count_lines(path):
    """Whole lines in ``path`` so far (0 while it does not exist)."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return f.read().count("\n")


# --- batches ------------------------------------------------------------------------------------------------------

def test_batch_holds_every_training_tensor_and_extras_are_checked():
    x, y, z = torch.randn(10, 2), torch.arange(10) % 3, torch.randn(10, 4, 4)
    plain = Dataset("d", x, x[:2], train_labels=y, num_classes=3)
    idx = torch.tensor([7, 0, 7, 3])
    b = plain.batch(idx)
    assert list(b) == ["x", "y"] and torch.equal(b["x"], x[idx]) and torch.equal(b["y"], y[idx])
    assert list(Dataset("d", x, x[:2]).batch(idx)) == ["x"]

    paired = Dataset("d", x, x[:2], train_labels=y, num_classes=3, extras={"z": z})
    assert list(paired.train_tensors()) == ["x", "y", "z"] and paired.train_tensors()["z"] is z
    b = paired.batch(idx)
    assert torch.equal(b["z"], z[idx]) and torch.equal(b["x"], x[idx])

    with pytest.raises(ValueError, match="'z' must be a tensor with one row per training example \\(10\\)"):
        Dataset("d", x, x[:2], extras={"z": z[:9]})
    with pytest.raises(ValueError, match="'z' must be a tensor"):
        Dataset("d", x, x[:2], extras={"z": [1.0] * 10})
    with pytest.raises(ValueError, match="'x' would shadow"):
        Dataset("d", x, x[:2], extras={"x": x})


def test_trainer_passes_extras_through_sharding_and_accumulation(tmp_path):
    data = paired_data()
    cfg = train_config(steps=3, grad_accum=2)
    model = build_model(teacher_seed=None)
    seen = []
    loss = model.loss

    def recording(batch, generator=None):
        seen.append({k: v.clone() for k, v in batch.items()})
        return loss(batch, generator)

    model.loss = recording
    train(model, data, cfg, str(tmp_path / "run"), **QUIET)
    order = BatchOrder(len(data.train), cfg.batch_size, cfg.seed)
    assert len(seen) == cfg.steps * cfg.grad_accum
    for step in range(cfg.steps):
        idx = order.indices(step)
        for m in range(cfg.grad_accum):  # micro-batch m holds positions m, m + 2, ... of the global batch
            b = seen[step * cfg.grad_accum + m]
            assert sorted(b) == ["x", "z"]
            assert torch.equal(b["x"], data.train[idx[m::2]]) and torch.equal(b["z"], data.extras["z"][idx[m::2]])


# --- frozen sub-models --------------------------------------------------------------------------------------------

def test_a_frozen_teacher_is_in_no_optimizer_ema_export_or_checkpoint_and_never_changes(tmp_path, monkeypatch):
    model = build_model()
    teacher = model.teacher
    teacher_digest = param_digest(teacher.state_dict())
    student_keys = set(model.student.state_dict())
    assert set(model.state_dict()) == {f"student.{k}" for k in student_keys}

    optimizers, emas = [], []
    adamw = torch.optim.AdamW

    class RecordingAdamW(adamw):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    run = str(tmp_path / "run")
    train(model, paired_data(), train_config(), run, callback=lambda step, m, ema, rec: emas.append(ema), **QUIET)

    (opt,) = optimizers
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.student.parameters()}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert set(emas[-1].state_dict()) == set(model.state_dict())

    with safe_open(os.path.join(run, "model.safetensors"), "pt") as f:
        exported = set(f.keys())
    assert exported == {f"{w}.student.{k}" for w in ("model", "ema") for k in student_keys}
    ck = _final(run)
    assert ck.step == 12 and set(ck.model) == set(ck.ema) == set(model.state_dict())
    assert ck.extra["param_digests"] == [param_digest(model.state_dict())] == [param_digest(ck.model)]
    assert len(ck.optimizer["param_groups"][0]["params"]) == len(list(model.student.parameters()))

    # the teacher took no step and stayed frozen; the student did learn
    assert param_digest(teacher.state_dict()) == teacher_digest
    assert model.teacher is teacher and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert param_digest(ck.model) != param_digest(load_checkpoint(list_checkpoints(run)[0]).model)


def test_the_teacher_shapes_training(tmp_path):
    """Another teacher gives other weights: the frozen model is really used by the loss the trainer calls."""
    digests = []
    for teacher_seed in (1, 2):
        run = str(tmp_path / f"t{teacher_seed}")
        train(build_model(teacher_seed=teacher_seed), paired_data(), train_config(steps=4), run, **QUIET)
        digests.append(param_digest(_final(run).model))
    assert digests[0] != digests[1]


def test_resume_with_a_frozen_teacher_is_bitwise(tmp_path):
    data, cfg = paired_data(), train_config()
    ref = str(tmp_path / "ref")
    train(build_model(), data, cfg, ref, **QUIET)

    run = str(tmp_path / "run")
    assert train(build_model(), data, cfg, run, max_seconds=0.0, **QUIET).step == 1  # a shorter run: 1 step
    model = build_model(student_seed=123)  # the student comes from the checkpoint, the teacher from its own seed
    teacher_digest = param_digest(model.teacher.state_dict())
    assert train(model, data, cfg, run, resume=True, **QUIET).step == 12
    same_checkpoints(_final(run), _final(ref))
    assert logged_losses(run) == logged_losses(ref)
    assert param_digest(model.teacher.state_dict()) == teacher_digest


def test_ema_of_a_model_with_a_teacher_holds_the_student_only():
    model = build_model()
    ema = EMA(model, 0.9)
    assert set(ema.state_dict()) == set(model.state_dict())
    ema.copy_to(model)  # loads strictly: would fail if a teacher key were missing or extra


# --- two processes, paired data, SIGKILL, resume --------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {here!r})
    import torch
    torch.set_num_threads(1)
    from test_batches_frozen import build_model, paired_data, train_config
    from unidm.train import train

    run, mode = sys.argv[1], sys.argv[2]
    with open(run + ".pids", "a") as f:
        f.write(f"{{os.environ['RANK']}} {{os.getpid()}}\\n")
    cfg = train_config(steps=20, ckpt_every=5, batch_size=64)
    model = build_model(student_seed=0 if mode == "fresh" else 99)
    train(model, paired_data(), cfg, run, resume=mode == "resume", log=lambda s: print(s, flush=True))
""")


def _torchrun(script, run, mode, env_extra=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, run, mode]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNIDM_BACKEND": "gloo", **(env_extra or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo")
def test_two_processes_with_paired_data_killed_and_resumed_match_an_uninterrupted_run(tmp_path):
    script = str(tmp_path / "worker.py")
    with open(script, "w") as f:
        f.write(WORKER.format(here=HERE))
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    reference = _torchrun(script, ref, "fresh")
    _finish(reference)

    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"kill-timing seed {seed}")
    proc = _torchrun(script, run, "fresh", {"UNIDM_FAULT_SLEEP": "step=0.04"})
    metrics, kill_after = os.path.join(run, "metrics.jsonl"), rng.randint(1, 14)
    t0 = time.monotonic()
    while _count_lines(metrics) < kill_after:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() - t0 < 120, "timed out waiting for the training processes"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.04))
    with open(run + ".pids") as f:
        pids = {int(r): int(p) for r, p in (line.split() for line in f)}
    assert sorted(pids) == [0, 1]
    for pid in pids.values():  # both workers die at once, as when their machine goes away
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not os.path.exists(os.path.join(run, "state", "step_00000020")), "the kill landed after the run ended"
    assert os.path.exists(os.path.join(run, LOCK_NAME))  # rank 0 died holding the lock

    out = _finish(_torchrun(script, run, "resume"))
    assert f"took over the lock of {run} left by pid {pids[0]}" in out
    assert not os.path.exists(os.path.join(run, LOCK_NAME))
    a, b = _final(run), _final(ref)
    assert a.step == 20 and a.extra["world_size"] == 2
    same_checkpoints(a, b)
    assert logged_losses(run) == logged_losses(ref) and [s for s, _ in logged_losses(run)] == list(range(1, 21))

