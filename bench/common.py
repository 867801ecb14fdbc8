"""Helpers shared by the benchmarks: latency summaries, result files, the target table, a
dedicated embedded Postgres, the API in process, and `memory-r1 serve` started as a user
starts it."""

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from fastapi import FastAPI

from app.core.config import Settings
from app.core.db import EmbeddedPostgres, create_engine, session_factory, transaction
from app.core.runtime import Runtime
from app.embeddings import InProcessEmbedder
from app.llm.factory import build_backend
from app.main import create_app
from app.models import Scope
from app.tenants import service as tenants
from workers.celery_app import INGEST_TASK, create_celery, send

OUT_DIR = Path(__file__).resolve().parent / "out"


def summarize_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """Latency samples in seconds -> milliseconds: p50, p95, p99, mean, max and the count."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"n": 0}
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    limit: float
    unit: str
    higher_is_better: bool = False

    @property
    def passed(self) -> bool:
        if self.higher_is_better:
            return self.measured >= self.limit
        return self.measured <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "limit": self.limit,
            "unit": self.unit,
            "comparison": ">=" if self.higher_is_better else "<=",
            "passed": self.passed,
        }


def print_targets(targets: Sequence[Target]) -> None:
    width = max(len(t.name) for t in targets)
    print(f"\n{'target':<{width}}  {'measured':>12}  {'limit':>12}  result")
    for t in targets:
        sign = ">=" if t.higher_is_better else "<="
        measured = f"{t.measured:.4g} {t.unit}"
        limit = f"{sign} {t.limit:g} {t.unit}"
        print(f"{t.name:<{width}}  {measured:>12}  {limit:>12}  {'PASS' if t.passed else 'FAIL'}")


def machine() -> dict[str, Any]:
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "loadavg_at_end": [float(x) for x in load],
    }


def write_json(name: str, payload: dict[str, Any], out_dir: Path = OUT_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    body = {"written_at": datetime.now(UTC).isoformat(), "machine": machine(), **payload}
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded_database(data_dir: Path, database: str) -> tuple[EmbeddedPostgres, str]:
    """Start (or join) the embedded Postgres in ``data_dir``; return it and the URL of
    ``database``, which is created when missing."""
    server = EmbeddedPostgres(data_dir)
    return server, server.start(database)


def recreate_database(url: str, database: str) -> None:
    """Drop ``database`` (closing its connections) and create it empty."""
    admin_url = url.replace(f"/{database}?", "/postgres?")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')


async def bench_api(
    settings: Settings, max_batch_size: int
) -> tuple[Runtime, FastAPI, dict[str, str]]:
    """The API in process over ``settings``' database, with the model backend serving builds
    (decoding ``max_batch_size`` requests together), ingestion sent to real Celery workers,
    and the headers of a new tenant's memory key."""
    llm = settings.llm.model_copy(update={"max_batch_size": max_batch_size})
    settings = settings.model_copy(update={"llm": llm})
    assert settings.database_url
    engine = create_engine(settings.database_url)
    celery = create_celery(settings)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        embedder=InProcessEmbedder(),
        llm=build_backend(settings),
        enqueue_ingestion=lambda job_id: send(celery, INGEST_TASK, job_id),
    )
    async with transaction(runtime.sessions) as db:
        issued = await tenants.create_key(
            db, tenant_id=None, name="bench", scopes=[Scope.memory], tenant_name="bench"
        )
    app = create_app(settings, runtime)
    app.state.runtime = runtime
    return runtime, app, {"Authorization": f"Bearer {issued.plaintext}"}


KEY_PATTERN = re.compile(r"\bmr1_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}")


@dataclass
class Server:
    url: str
    api_key: str
    database_url: str | None
    startup_s: float | None = None
    data_dir: Path | None = None  # the started server's (datasets go in its datasets/)


def wait_until(
    predicate: Any, timeout_s: float, what: str, process: subprocess.Popen[bytes]
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} while {what}")
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s {what}")


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def started_server(
    out: Path,
    name: str,
    *,
    workers: bool,
    startup_timeout_s: float = 600.0,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """``memory-r1 serve`` (with its ingestion and training workers, or ``--no-worker``) on
    a free port, with a fresh data directory (embedded Postgres, converted model) that is
    removed afterwards; its bootstrap key has the admin and memory scopes."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"memr1-{name}-bench-"))
    port = free_port()
    log_path = out / f"{name}-server.log"
    out.mkdir(parents=True, exist_ok=True)
    server_env = {**os.environ, "MEMR1_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    for variable in ("MEMR1_DATABASE_URL", "MEMR1_BROKER_URL"):
        server_env.pop(variable, None)
    server_env |= env or {}
    command = [str(Path(sys.executable).with_name("memory-r1")), "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += [] if workers else ["--no-worker"]
    started = time.monotonic()
    print(f"starting {' '.join(command)} on port {port} (log: {log_path})", flush=True)
    with log_path.open("wb") as log:
        # cwd: the data directory, so that no .env of the caller changes the server's settings
        process = subprocess.Popen(
            command, env=server_env, cwd=data_dir, stdout=log, stderr=subprocess.STDOUT
        )
    embedded: EmbeddedPostgres | None = None
    try:
        key_match = wait_until(
            lambda: KEY_PATTERN.search(log_path.read_text(errors="replace")),
            startup_timeout_s,
            "waiting for the bootstrap API key",
            process,
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: ready(url), startup_timeout_s, "waiting for /readyz", process)
        startup_s = time.monotonic() - started
        print(f"server ready after {startup_s:.1f} s", flush=True)
        # the same embedded server, shared with the API process, for checks of what it stored
        embedded = EmbeddedPostgres(data_dir / "pg")
        database_url = embedded.start()
        yield Server(url, key_match.group(0), database_url, startup_s, data_dir)
    finally:
        stop(process)
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGINT, 60), (signal.SIGTERM, 30)):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)
