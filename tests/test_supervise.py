"""Supervision with real processes: a worker that dies is started again, stopping leaves no
process behind (grandchildren and children that ignore SIGTERM included), a spawned training
process ends with its parent, and `memory-r1 serve` does all of that for its workers."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.supervise import Supervisor

PY = sys.executable


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def script(tmp_path: Path, name: str, body: str) -> list[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return [PY, str(path)]


def test_a_worker_that_dies_is_started_again_with_backoff(tmp_path: Path) -> None:
    supervisor = Supervisor(
        {"sleeper": [PY, "-c", "import time; time.sleep(60)"]},
        dict(os.environ),
        first_backoff_s=0.2,
        poll_s=0.05,
    )
    supervisor.start()
    try:
        first = supervisor.pids()["sleeper"]
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: supervisor.pids()["sleeper"] not in (None, first))
        second = supervisor.pids()["sleeper"]
        assert second is not None
        killed_at = time.monotonic()
        os.kill(second, signal.SIGKILL)
        # Died at once again: the second wait is twice the first.
        assert wait_for(lambda: supervisor.pids()["sleeper"] not in (None, second))
        assert time.monotonic() - killed_at >= 0.4
        assert supervisor.restarts == 2
    finally:
        supervisor.stop(grace_s=1)


def test_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    pids = tmp_path / "grandchild.pid"
    parent = script(
        tmp_path,
        "parent.py",
        f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker stuck in a task
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pids)!r}, "w").write(str(child.pid))
        time.sleep(60)
        """,
    )
    supervisor = Supervisor({"stubborn": parent}, dict(os.environ), poll_s=0.05)
    supervisor.start()
    assert wait_for(lambda: pids.exists() and pids.read_text() != "")
    worker = supervisor.pids()["stubborn"]
    grandchild = int(pids.read_text())
    started = time.monotonic()
    supervisor.stop(grace_s=1)
    assert time.monotonic() - started < 3
    assert worker is not None and not alive(worker)
    assert wait_for(lambda: not alive(grandchild), timeout=2)


def test_a_spawned_process_ends_with_its_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "orphan.pid"
    parent = script(
        tmp_path,
        "spawner.py",
        f"""
        import multiprocessing, os, time
        from app.supervise import exit_with_parent

        def run():
            exit_with_parent()
            time.sleep(60)

        if __name__ == "__main__":
            child = multiprocessing.get_context("spawn").Process(target=run)
            child.start()
            open({str(pid_file)!r}, "w").write(str(child.pid))
            time.sleep(60)
        """,
    )
    spawner = subprocess.Popen(parent, cwd=Path(__file__).resolve().parents[1])
    try:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", timeout=30)
        orphan = int(pid_file.read_text())
        assert alive(orphan)
        spawner.kill()  # SIGKILL: no chance to clean up
        spawner.wait()
        assert wait_for(lambda: not alive(orphan), timeout=5)
    finally:
        spawner.kill()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # ppid
            child = int(stat.parent.name)
            found |= {child} | descendants(child)
    return found


@pytest.mark.model
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_serve_restarts_a_killed_worker_and_stops_everything(
    settings: Settings, serving_model_dir: Path, stop_signal: signal.Signals
) -> None:
    port = free_port()
    assert settings.database_url
    env = {
        **os.environ,
        "MEMR1_DATABASE_URL": settings.database_url,
        "MEMR1_DATA_DIR": str(settings.data_dir),
        "MEMR1_BOOTSTRAP_ADMIN": "false",
        # Global adapters it registered would serve every later test on this database.
        "MEMR1_DEFAULT_ADAPTERS": "false",
        "MEMR1_PORT": str(port),
        "MEMR1_LOG_LEVEL": "WARNING",
    }
    serve = subprocess.Popen([PY, "-m", "app.cli", "serve"], env=env)
    seen: set[int] = set()
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(healthy, timeout=120)
        assert wait_for(lambda: len(descendants(serve.pid)) >= 2, timeout=30)
        workers = {p for p in descendants(serve.pid) if b"worker" in _cmdline(p)}
        assert len(workers) == 2, workers
        seen |= workers
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(
            lambda: (
                len({p for p in descendants(serve.pid) if b"worker" in _cmdline(p)} - workers) == 1
            ),
            timeout=15,
        ), "the killed worker was not started again"
        everything = descendants(serve.pid)
        seen |= everything
        started = time.monotonic()
        serve.send_signal(stop_signal)
        serve.wait(timeout=30)
        took = time.monotonic() - started
        assert took < 10, f"serve took {took:.1f} s to stop"
        assert wait_for(lambda: not any(alive(p) for p in everything), timeout=5), [
            _cmdline(p) for p in everything if alive(p)
        ]
    finally:
        serve.kill()
        for pid in seen:  # workers lead their own process groups
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
