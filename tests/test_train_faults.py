"""Faults: SIGKILL at a random moment (during steps and inside a checkpoint write) then ``--resume`` ends bitwise
equal to an uninterrupted run; resume after a normal stop; NaN/inf stops the run naming the last good checkpoint;
precision and gradient-accumulation settings."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from _checks import logged_losses, same_checkpoints
from unidm.config import RunConfig, apply_overrides
from unidm.presets import get_preset
from unidm.run import build_data, build_model
from unidm.train import (TrainingDiverged, latest_checkpoint, list_checkpoints, load_checkpoint, param_digest,
                         train)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model.hidden=32", "model.depth=1", "train.batch_size=64", "data.n_train=2000", "data.n_test=500",
        "train.progress=false", "train.num_threads=1", "train.warmup=5"]
QUIET = {"log": lambda s: None}


def _build(*overrides, seed=0):
    cfg = apply_overrides(get_preset("moons-edm"), [*TINY, *overrides])
    data = build_data(cfg)
    torch.manual_seed(seed)
    return cfg, data, build_model(cfg, data)


def _final(run_dir):
    return load_checkpoint(list_checkpoints(run_dir)[-1])


def _wait_for(predicate, proc, timeout=120.0):
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with code {proc.returncode}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.01)


def _cli(out, *args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "unidm", "train", *args, "--out", out, "--device", "cpu"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_during_steps_and_during_a_checkpoint_write_then_resume_is_bitwise(tmp_path):
    run = str(tmp_path / "run")
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"kill-timing seed {seed}")
    overrides = [*TINY, "train.steps=40", "train.ckpt_every=10", "train.keep_last=0", "train.log_every=1",
                 "sample.n=16", "sample.steps=2"]

    # 1. a fresh run, slowed to >= 25 ms a step, killed at a random moment among its 40 steps
    proc = _cli(run, "moons-edm", *overrides, env_extra={"UNIDM_FAULT_SLEEP": "step=0.025"})
    _wait_for(lambda: os.path.isdir(os.path.join(run, "state", "step_00000000")), proc)
    time.sleep(rng.uniform(0.0, 0.8))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not os.path.exists(os.path.join(run, "state", "step_00000040")), "the kill landed after the run ended"
    init = str(tmp_path / "init")
    shutil.copytree(os.path.join(run, "state", "step_00000000"), os.path.join(init, "state", "step_00000000"))

    # 2. `--resume`, killed while it sits inside its next checkpoint write (weights written, state.json not yet)
    proc = _cli(run, "--resume", env_extra={"UNIDM_FAULT_SLEEP": "checkpoint=60"})
    state = os.path.join(run, "state")

    def writing():
        tmp = [n for n in os.listdir(state) if n.startswith(".unidm-tmp-")]
        return bool(tmp) and os.path.exists(os.path.join(state, tmp[0], "model.safetensors"))

    _wait_for(writing, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert any(n.startswith(".unidm-tmp-") for n in os.listdir(state))  # the half-written checkpoint is left behind

    # 3. resume to the end (in this process), and 4. the uninterrupted reference from the same initial weights
    with open(os.path.join(run, "config.json")) as f:
        cfg = RunConfig.from_dict(json.load(f))
    data = build_data(cfg)
    train(build_model(cfg, data), data, cfg.train, run, resume=True, **QUIET)
    train(build_model(cfg, data), data, cfg.train, init, resume=True, **QUIET)
    assert not any(n.startswith((".unidm-tmp", ".tmp")) for n in os.listdir(state))
    same_checkpoints(_final(run), _final(init))
    assert logged_losses(run) == logged_losses(init) and [s for s, _ in logged_losses(run)] == list(range(1, 41))


def test_resume_after_a_normal_stop_and_after_the_end(tmp_path):
    cfg, data, model = _build("train.steps=20", "train.ckpt_every=10")
    ref = str(tmp_path / "ref")
    train(model, data, cfg.train, ref, **QUIET)

    run = str(tmp_path / "run")
    cfg, data, model = _build("train.steps=20", "train.ckpt_every=10")
    stopped = train(model, data, cfg.train, run, max_seconds=0.0, **QUIET)  # stops cleanly after one step
    assert stopped.step == 1 and _final(run).step == 1
    cfg, data, model = _build("train.steps=20", "train.ckpt_every=10", seed=123)  # init is overwritten by resume
    assert train(model, data, cfg.train, run, resume=True, **QUIET).step == 20
    same_checkpoints(_final(run), _final(ref))
    before = param_digest(_final(run).model)
    assert train(model, data, cfg.train, run, resume=True, **QUIET).step == 20  # nothing left to do
    assert param_digest(_final(run).model) == before


def _poison_after(model, n_calls, kind):
    """Make the loss NaN, or the gradients infinite, from the ``n_calls``-th loss evaluation on."""
    calls = {"n": 0}
    loss = model.loss

    def poisoned(batch, generator=None):
        calls["n"] += 1
        out = loss(batch, generator)
        if calls["n"] < n_calls:
            return out
        if kind == "loss":
            return out * float("nan")
        return _inf_grad(out)

    model.loss = poisoned


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def _inf_grad(x):
    return _InfGrad.apply(x)


@pytest.mark.parametrize("kind, what", [("loss", "loss"), ("grad", "gradient norm")])
def test_nan_or_inf_stops_the_run_naming_the_last_good_checkpoint(tmp_path, kind, what):
    cfg, data, model = _build("train.steps=30", "train.ckpt_every=5")
    _poison_after(model, 13, kind)
    run = str(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match=f"the {what} became (nan|inf) in step 13") as e:
        train(model, data, cfg.train, run, **QUIET)
    good = os.path.join(run, "state", "step_00000010")
    assert good in str(e.value)
    assert [os.path.basename(p) for p in list_checkpoints(run)][-1] == "step_00000010"
    ck = load_checkpoint(good)
    assert all(torch.isfinite(v).all() for v in [*ck.model.values(), *ck.ema.values()])


def test_huge_learning_rate_stops_with_an_intact_checkpoint(tmp_path):
    cfg, data, model = _build("train.steps=20", "train.ckpt_every=1", "train.lr=1e30", "train.warmup=0")
    run = str(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match="last good checkpoint is .*step_0000000") as e:
        train(model, data, cfg.train, run, **QUIET)
    named = str(e.value).split("last good checkpoint is ")[1].split(" ")[0]
    ck = latest_checkpoint(run, warn=pytest.fail)
    assert ck.path == named
    assert all(torch.isfinite(v).all() for v in ck.model.values())


def test_bf16_runs_on_cpu_and_fp16_is_refused_before_anything_is_written(tmp_path):
    cfg, data, model = _build("train.steps=3", "train.precision=bf16")
    result = train(model, data, cfg.train, str(tmp_path / "bf16"), **QUIET)
    assert result.step == 3 and torch.isfinite(torch.tensor(result.loss))
    assert all(v.dtype == torch.float32 for v in _final(str(tmp_path / "bf16")).model.values())

    cfg, data, model = _build("train.steps=3", "train.precision=fp16")
    with pytest.raises(ValueError, match="fp16.*needs CUDA.*bf16"):
        train(model, data, cfg.train, str(tmp_path / "fp16"), **QUIET)
    assert not os.path.exists(tmp_path / "fp16")


def test_batch_must_split_into_world_size_times_grad_accum_shards(tmp_path):
    cfg, data, model = _build("train.batch_size=63", "train.grad_accum=2")
    with pytest.raises(ValueError, match="divisible by world_size x grad_accum"):
        train(model, data, cfg.train, str(tmp_path / "r"), **QUIET)


def test_gradient_accumulation_equals_one_big_batch_for_the_same_per_examplelogged_losses(tmp_path):
    """With noise fixed per example, 2 accumulated micro-batches and 1 whole batch give the same training (the
    real noise is fixed per shard instead, so there the equal pairs are (processes x micro-batches) with the same
    product: see test_distributed.py)."""
    finals = []
    for accum in (1, 2):
        cfg, data, model = _build("train.steps=10", "train.ckpt_every=10", f"train.grad_accum={accum}")

        def per_example_loss(batch, generator=None, model=model):
            x0 = batch["x"]
            eps, sigma = torch.sin(1000.0 * x0), 0.5 + 0.4 * torch.cos(100.0 * x0[:, 0])
            return ((model.denoiser(x0 + sigma[:, None] * eps, sigma) - x0) ** 2).mean(1)

        model.loss = per_example_loss
        train(model, data, cfg.train, str(tmp_path / f"a{accum}"), **QUIET)
        finals.append(_final(str(tmp_path / f"a{accum}")))
    for k, v in finals[0].model.items():
        torch.testing.assert_close(finals[1].model[k], v, rtol=1e-5, atol=1e-6)
    l1, l2 = logged_losses(str(tmp_path / "a1")), logged_losses(str(tmp_path / "a2"))
    assert [s for s, _ in l1] == [s for s, _ in l2]
    torch.testing.assert_close(torch.tensor([x for _, x in l2]), torch.tensor([x for _, x in l1]), rtol=1e-5,
                               atol=1e-7)
