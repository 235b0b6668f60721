"""A run folder is ours alone: what :func:`unidm.train.train` may write into, and one writer at a time.

* :func:`check_run_folder` refuses, before anything is written, a folder that exists, holds something and is not a
  unidm run (so a user's ``config.json`` or ``metrics.jsonl`` is never touched), and a fresh run into a run that
  already holds checkpoints.
* :class:`RunLock` is an exclusive lock file ``.unidm.lock`` in the run folder, created atomically and holding the
  writer's pid, host and start time. A second writer is refused with a message naming the holder; a lock left by
  a process that died on this host is taken over with a one-line note.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from typing import Callable

from .checkpoint import _STEP_DIR, is_temporary

__all__ = ["LOCK_NAME", "RunLock", "RunLocked", "check_run_folder", "is_run_folder"]

LOCK_NAME = ".unidm.lock"


class RunLocked(FileExistsError):
    """Another process holds the run folder's lock."""


def _ours(name: str, folder: str) -> bool:
    """An entry our writers make: a checkpoint or a temporary in ``state/``; the lock or a temporary at the top."""
    if folder == "state":
        return bool(_STEP_DIR.match(name)) or is_temporary(name, "state")
    return name == LOCK_NAME or name.startswith(LOCK_NAME + ".") or is_temporary(name, "run")


def is_run_folder(run_dir: str) -> bool:
    """Whether ``run_dir`` is a unidm run: it has a ``state/`` folder holding a checkpoint, or nothing but what our
    writers put there. (Our own lock and temporaries alone, e.g. a run killed while starting, also count.)"""
    state = os.path.join(run_dir, "state")
    if os.path.isdir(state):
        names = os.listdir(state)
        return any(_STEP_DIR.match(n) for n in names) or all(_ours(n, "state") for n in names)
    return all(_ours(n, "run") for n in os.listdir(run_dir))


def check_run_folder(run_dir: str, resume: bool) -> None:
    """Refuse a run folder before anything is written to it. (That a fresh run finds no checkpoints is checked
    by the loop, holding the lock.)

    Raises:
        FileExistsError: ``run_dir`` is a file, or it holds files but is not a unidm run.
        FileNotFoundError: ``resume`` and the folder does not exist.
    """
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise FileExistsError(f"{run_dir} is a file, not a run folder; pick another --out")
    if not os.path.isdir(run_dir):
        if resume:
            raise FileNotFoundError(f"--resume: no whole checkpoint under {run_dir}/state ({run_dir} does not "
                                    "exist)")
        return
    if os.listdir(run_dir) and not is_run_folder(run_dir):
        raise FileExistsError(f"{run_dir} is not empty and is not a unidm run folder (it has no state/ of "
                              "checkpoints); refusing to write into it. Pick a new --out, or empty the folder")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder: the file ``<run_dir>/.unidm.lock`` (JSON: pid, host, start time).

    Taken with an atomic create-if-absent (a hard link of a fully written file, or ``O_CREAT | O_EXCL`` where the
    filesystem has no hard links), so the file always holds a whole record. Use as a context manager, or
    :meth:`acquire` and :meth:`release`; releasing removes the file only while it is still ours.
    """

    def __init__(self, run_dir: str, log: Callable[[str], None] = print):
        self.run_dir, self.log = run_dir, log
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                       "token": secrets.token_hex(8)}
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _create(self) -> bool:
        """Create the lock file holding our record; False if it already exists."""
        data = json.dumps(self.record).encode()
        tmp = f"{self.path}.{secrets.token_hex(8)}"
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network or FUSE filesystems): exclusive create instead
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        finally:
            os.unlink(tmp)

    def _read(self) -> dict | None:
        try:
            with open(self.path, "rb") as f:
                holder = json.loads(f.read().decode("utf-8"))
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunLocked` naming the process that holds it."""
        os.makedirs(self.run_dir, exist_ok=True)
        for _ in range(10):
            if self._create():
                self.held = True
                return
            holder = self._read()
            if holder is None:  # released between our attempt and the read: try again
                continue
            pid, host = holder.get("pid"), holder.get("host")
            if not isinstance(pid, int) or not isinstance(host, str):
                raise RunLocked(f"{self.path} exists but is not a unidm lock file; if no run is using {self.run_dir}, "
                                "delete it and start again")
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            if host != socket.gethostname() or _alive(pid):
                where = "" if host == socket.gethostname() else f" on host {host}"
                raise RunLocked(f"{self.run_dir} is in use by another training process (pid {pid}{where}, since "
                                f"{since}; lock file {self.path}); wait for it to finish, or if that process is "
                                "gone, delete the lock file")
            # a process of this host that no longer exists left it: take it over, unless it changed meanwhile
            stale = self.path + f".stale-{secrets.token_hex(4)}"
            if self._read() != holder:
                continue
            try:
                os.replace(self.path, stale)
            except FileNotFoundError:
                continue
            os.unlink(stale)
            self.log(f"note: took over the lock of {self.run_dir} left by pid {pid} (no longer running, since {since})")
        raise RunLocked(f"could not take the lock {self.path}: other processes keep taking it")

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if not self.held:
            return
        self.held = False
        holder = self._read()
        if holder and holder.get("token") == self.record["token"]:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
