"""Real Celery workers, started as `memory-r1 worker` subprocesses, over a real broker.

These tests commit their data (a worker in another process must see it), each in a tenant of
its own, so they never interfere with the rolled-back API tests."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.core.config import Settings
from app.core.db import create_engine, session_factory, transaction
from app.models import Scope
from app.tenants import service as tenants

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def worker_process(env: dict[str, str], queues: str, log_path: Path) -> Iterator[subprocess.Popen]:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--queues", queues],
            env=full_env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_until_consuming(log_path: Path, worker: subprocess.Popen, timeout_s: float = 120) -> None:
    """Wait for Celery's "ready." line: the worker has re-sent the jobs it found queued at
    start and consumes from the broker. A job posted before then may also be sent by that
    start-up pass, outside the request's trace, and run from that message."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and worker.poll() is None:
        if " ready." in log_path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"the worker never became ready; its log:\n{log_path.read_text()[-4000:]}")


async def committed_tenant(settings: Settings, name: str) -> tuple[str, dict[str, str]]:
    engine = create_engine(settings.database_url or "", pool_size=1)
    try:
        async with transaction(session_factory(engine)) as db:
            issued = await tenants.create_key(
                db, tenant_id=None, name=name, scopes=[Scope.memory, Scope.admin], tenant_name=name
            )
    finally:
        await engine.dispose()
    return str(issued.tenant_id), {"Authorization": f"Bearer {issued.plaintext}"}


async def wait_for_job(
    client: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    done: set[str],
    timeout_s: float,
    log_path: Path | None = None,
    worker: subprocess.Popen | None = None,
) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline and (worker is None or worker.poll() is None):
        response = await client.get(path, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in done:
            return body
        await _sleep(1.0)
    log = log_path.read_text()[-4000:] if log_path and log_path.exists() else ""
    raise AssertionError(f"{path} ended {body.get('status')}; worker log:\n{log}")


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
