"""The run folder is safe: a folder that is not a unidm run is refused untouched, one writer holds the lock at a
time (a dead writer's lock is taken over), only our own temporaries are ever deleted, Ctrl-C leaves a checkpoint
of the step reached that resumes bitwise, and impossible settings are refused before anything is written."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from test_batches_frozen import _count_lines, build_model, paired_data, train_config
from unidm.train import (RunLock, RunLocked, TrainingDiverged, TrainingInterrupted, list_checkpoints,
                         load_checkpoint, param_digest, train, verify_checkpoint)
from unidm.train.checkpoint import checkpoint_path, clean_temporaries, temporary_name
from unidm.train.runfolder import LOCK_NAME, is_run_folder

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"log": lambda s: None}
HERE = os.path.dirname(os.path.abspath(__file__))


def _tree_digest(folder):
    """SHA-256 over every path, file's bytes and modification time under ``folder``."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(root, name)
            h.update(f"{os.path.relpath(p, folder)}|{os.stat(p).st_mtime_ns}|".encode())
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def _user_folder(path):
    os.makedirs(os.path.join(path, "data"))
    files = {"config.json": '{"mine": true}', "metrics.jsonl": '{"step": 99}\n', ".tmp-x": "scratch",
             "data/points.csv": "1,2\n"}
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    return path


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_that_is_not_a_run_is_refused_and_left_untouched(tmp_path, resume):
    folder = _user_folder(str(tmp_path / "mine"))
    before = _tree_digest(folder)
    with pytest.raises(FileExistsError, match=f"{folder} is not empty and is not a unidm run folder.*new --out"):
        train(build_model(), paired_data(), train_config(), folder, resume=resume,
              config_dict={"would": "overwrite"}, **QUIET)
    assert _tree_digest(folder) == before
    assert sorted(os.listdir(folder)) == [".tmp-x", "config.json", "data", "metrics.jsonl"]


def test_which_folders_a_run_may_use(tmp_path):
    cfg, data = train_config(steps=2), paired_data()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(build_model(), data, cfg, str(empty), **QUIET).step == 2  # an existing empty folder is fine
    assert is_run_folder(str(empty)) and not is_run_folder(_user_folder(str(tmp_path / "user")))
    with pytest.raises(FileExistsError, match="already holds checkpoints; pass --resume"):  # as before
        train(build_model(), data, cfg, str(empty), **QUIET)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        train(build_model(), data, cfg, str(afile), **QUIET)
    with pytest.raises(FileNotFoundError, match="no whole checkpoint"):
        train(build_model(), data, cfg, str(tmp_path / "nothing"), resume=True, **QUIET)
    assert not os.path.exists(tmp_path / "nothing")
    # a run killed while starting (only our lock, state/ and a log are there) may start again, with a new log
    started = tmp_path / "started"
    (started / "state").mkdir(parents=True)
    (started / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}))
    (started / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    assert train(build_model(), data, cfg, str(started), **QUIET).step == 2
    with open(started / "metrics.jsonl") as f:
        assert [json.loads(ln)["step"] for ln in f] == [1, 2]


def test_only_our_own_temporaries_are_deleted(tmp_path):
    run = tmp_path / "run"
    (run / "state" / "step_00000000").mkdir(parents=True)
    ours = [run / temporary_name("model.safetensors"), run / temporary_name("config.json"),
            run / temporary_name("metrics.jsonl")]
    for p in ours:
        p.write_text("half-written")
    our_dirs = [run / "state" / temporary_name("step_00000010"), run / "state" / ".tmp-step_k2_x0q9z"]
    foreign = [run / ".tmp-x", run / ".tmp-abcd1234.safetensors", run / temporary_name("notes.txt"),
               run / ".unidm-tmp-model.safetensors", run / "state" / ".tmp-x"]
    for p in [*our_dirs, run / "state" / ".tmp-step_mine", run / temporary_name("data")]:
        p.mkdir()
    for p in foreign:
        p.write_text("user's")
    removed = clean_temporaries(str(run))
    assert sorted(removed) == sorted(map(str, ours + our_dirs))
    assert all(p.exists() for p in foreign)
    assert (run / "state" / ".tmp-step_mine").is_dir() and (run / "state" / "step_00000000").is_dir()


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    run = str(tmp_path / "run")
    cfg, data = train_config(steps=2), paired_data()
    with RunLock(run):
        with open(os.path.join(run, LOCK_NAME)) as f:
            holder = json.load(f)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(RunLocked, match=f"in use by another training process \\(pid {os.getpid()},"):
            train(build_model(), data, cfg, run, **QUIET)
        with pytest.raises(RunLocked):
            RunLock(run).acquire()
    assert not os.path.exists(os.path.join(run, LOCK_NAME))
    with open(os.path.join(run, LOCK_NAME), "w") as f:  # a live writer on another machine sharing the folder
        json.dump({"pid": _dead_pid(), "host": "elsewhere.example", "started": time.time()}, f)
    with pytest.raises(RunLocked, match="on host elsewhere.example"):
        train(build_model(), data, cfg, run, **QUIET)
    with open(os.path.join(run, LOCK_NAME), "w") as f:
        f.write("not ours")
    with pytest.raises(RunLocked, match="is not a unidm lock file"):
        train(build_model(), data, cfg, run, **QUIET)


def test_a_dead_writers_lock_is_taken_over_and_every_exit_releases_the_lock(tmp_path):
    run = str(tmp_path / "run")
    cfg, data = train_config(steps=4), paired_data()
    train(build_model(), data, cfg, run, **QUIET)
    lock = os.path.join(run, LOCK_NAME)
    assert not os.path.exists(lock)
    dead = _dead_pid()
    with open(lock, "w") as f:
        json.dump({"pid": dead, "host": socket.gethostname(), "started": time.time()}, f)
    lines = []
    assert train(build_model(), data, train_config(steps=6), run, resume=True, log=lines.append).step == 6
    assert sum(f"took over the lock of {run} left by pid {dead}" in ln for ln in lines) == 1
    assert not os.path.exists(lock)

    with pytest.raises(FileExistsError):  # refused: still released
        train(build_model(), data, cfg, run, **QUIET)
    assert not os.path.exists(lock)
    model = build_model()
    model.loss = lambda batch, generator=None: torch.full((len(batch["x"]),), float("nan"), requires_grad=True)
    with pytest.raises(TrainingDiverged):  # failed while training: released
        train(model, data, train_config(steps=8), run, resume=True, **QUIET)
    assert not os.path.exists(lock)


def test_settings_refused_before_anything_is_written(tmp_path):
    run = str(tmp_path / "run")
    cfg, data = train_config(steps=8), paired_data()
    with pytest.raises(ValueError, match="unknown train.decay 'cosin'; valid: cosine, linear, none"):
        train(build_model(), data, train_config(decay="cosin"), run, **QUIET)
    assert not os.path.exists(run)
    train(build_model(), data, cfg, run, **QUIET)
    before = _tree_digest(run)
    with pytest.raises(ValueError, match=r"train.steps=5 is below step 8, which the run already reached .*"
                                         r"step_00000008.*train.steps=8 or more"):
        train(build_model(), data, train_config(steps=5), run, resume=True, **QUIET)
    assert _tree_digest(run) == before
    assert train(build_model(), data, cfg, run, resume=True, **QUIET).step == 8  # equal: nothing to do


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import torch
    torch.set_num_threads(1)
    from test_batches_frozen import _count_lines, build_model, paired_data, train_config
    from unidm.train import TrainingInterrupted, train

    try:
        train(build_model(), paired_data(), train_config(steps=400, ckpt_every=1000), sys.argv[1],
              log=lambda s: print(s, flush=True))
    except TrainingInterrupted as e:
        print("INTERRUPTED", e.step, e, flush=True)
        sys.exit(130)
    print("FINISHED", flush=True)
""")


def test_ctrl_c_writes_the_checkpoint_of_the_step_reached_and_resumes_bitwise(tmp_path):
    script, run = str(tmp_path / "script.py"), str(tmp_path / "run")
    with open(script, "w") as f:
        f.write(SCRIPT.format(here=HERE))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNIDM_FAULT_SLEEP": "step=0.02,checkpoint=0.5"}
    proc = subprocess.Popen([sys.executable, script, run], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics, t0 = os.path.join(run, "metrics.jsonl"), time.monotonic()
    while _count_lines(metrics) < 5:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() - t0 < 120, "timed out waiting for the training process"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.25)  # inside the checkpoint write (slowed to 0.5 s): a second Ctrl-C changes nothing
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    line = next(ln for ln in out.splitlines() if ln.startswith("INTERRUPTED"))
    step = int(line.split()[1])
    assert 5 <= step < 400
    assert f"training interrupted at step {step} of 400" in line
    assert f"Resume with: unidm train --out {run} --resume" in line
    path = checkpoint_path(run, step)
    assert verify_checkpoint(path)["step"] == step
    assert [os.path.basename(p) for p in list_checkpoints(run)] == ["step_00000000", os.path.basename(path)]
    assert not os.path.exists(os.path.join(run, LOCK_NAME))
    with open(metrics) as f:
        assert [json.loads(ln)["step"] for ln in f] == list(range(1, step + 1))

    cfg, data = train_config(steps=400, ckpt_every=1000), paired_data()
    assert train(build_model(student_seed=5), data, cfg, run, resume=True, **QUIET).step == 400
    ref = str(tmp_path / "ref")
    train(build_model(), data, cfg, ref, **QUIET)
    a, b = load_checkpoint(list_checkpoints(run)[-1]), load_checkpoint(list_checkpoints(ref)[-1])
    assert a.step == b.step == 400
    assert param_digest(a.model) == param_digest(b.model) and param_digest(a.ema) == param_digest(b.ema)


def test_ctrl_c_handler_is_restored_and_a_finished_run_is_not_an_interruption(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    calls = []

    def interrupt_at_last_step(step, model, ema, record):
        calls.append(step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(build_model(), paired_data(), train_config(steps=3), str(tmp_path / "r"),
                   callback=interrupt_at_last_step, **QUIET)
    assert result.step == 3 and calls == [1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is before

    def interrupt_at_step_1(step, model, ema, record):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="interrupted at step 2 of 6") as e:
        train(build_model(), paired_data(), train_config(steps=6), str(tmp_path / "s"),
              callback=interrupt_at_step_1, **QUIET)
    assert e.value.step == 2 and verify_checkpoint(e.value.checkpoint)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before
