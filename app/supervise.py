"""Child processes that live and die with the process that started them.

``Supervisor`` keeps `memory-r1 serve`'s workers running: a worker that exits is started again
after a backoff that doubles up to a limit and resets once a worker has run a while. Each child
leads a process group of its own, so a Ctrl-C at the terminal reaches only ``serve``, and
stopping kills the whole group (a worker's training process included): SIGTERM first, SIGKILL
after a grace period.

``exit_with_parent`` is for spawned processes (a training run): it ends the process when the
parent that spawned it is gone, so that a worker killed with SIGKILL leaves nothing behind."""

import logging
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Child:
    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = 0.0
    restart_at: float = 0.0


class Supervisor:
    def __init__(
        self,
        commands: dict[str, Sequence[str]],
        env: dict[str, str],
        *,
        first_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 60.0,
        poll_s: float = 0.5,
    ) -> None:
        self.children = [_Child(name, argv) for name, argv in commands.items()]
        self.env = env
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_after_s = healthy_after_s
        self.poll_s = poll_s
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> None:
        with self._lock:
            for child in self.children:
                self._spawn(child)
        self._thread.start()

    def pids(self) -> dict[str, int | None]:
        with self._lock:
            return {c.name: c.process.pid if c.process else None for c in self.children}

    def _spawn(self, child: _Child) -> None:
        child.process = subprocess.Popen(child.argv, env=self.env, start_new_session=True)
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_s):
            with self._lock:
                if self._stopping.is_set():
                    return
                for child in self.children:
                    self._check(child)

    def _check(self, child: _Child) -> None:
        now = time.monotonic()
        if child.process is not None:
            code = child.process.poll()
            if code is None:
                return
            _kill_group(child.process.pid, signal.SIGKILL)  # whatever it left running
            ran = now - child.started_at
            child.backoff_s = (
                self.first_backoff_s
                if ran >= self.healthy_after_s or not child.backoff_s
                else min(child.backoff_s * 2, self.max_backoff_s)
            )
            child.restart_at = now + child.backoff_s
            child.process = None
            log.warning(
                "%s exited with code %s after %.0f s; starting it again in %.0f s",
                child.name,
                code,
                ran,
                child.backoff_s,
            )
        if now >= child.restart_at:
            self.restarts += 1
            self._spawn(child)

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM every child's group, then SIGKILL what is left after ``grace_s``."""
        self._stopping.set()
        with self._lock:
            running = [c.process for c in self.children if c.process is not None]
        for process in running:
            _kill_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %.0f s; killing it", process.pid, grace_s)
            _kill_group(process.pid, signal.SIGKILL)
            process.wait()
        if self._thread.is_alive():
            self._thread.join()


def _kill_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exit_with_parent() -> None:
    """In a process started by multiprocessing: end it (from a daemon thread) as soon as the
    parent that started it is gone, even when the parent died before this was called."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent's end of their pipe closes
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
