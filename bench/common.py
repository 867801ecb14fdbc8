"""Helpers shared by the benchmarks: latency summaries, result files, the target table and a
dedicated embedded Postgres."""

import json
import os
import platform
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from fastapi import FastAPI

from app.core.config import Settings
from app.core.db import EmbeddedPostgres, create_engine, session_factory, transaction
from app.core.runtime import Runtime
from app.embeddings import InProcessEmbedder
from app.llm.bundled import BUNDLED_MODEL_NAME, ensure_bundled_gguf
from app.llm.inprocess import InProcessBackend
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
    """The API in process over ``settings``' database, with the bundled model, ingestion
    sent to real Celery workers, and the headers of a new tenant's memory key."""
    assert settings.database_url
    model_dir = ensure_bundled_gguf(settings.data_dir, settings.llm.weights)
    engine = create_engine(settings.database_url)
    celery = create_celery(settings)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        embedder=InProcessEmbedder(),
        llm=InProcessBackend(
            model_dir, BUNDLED_MODEL_NAME, max_batch_size=max_batch_size, max_lora_rank=64
        ),
        enqueue_ingestion=lambda job_id: send(celery, INGEST_TASK, job_id),
    )
    async with transaction(runtime.sessions) as db:
        issued = await tenants.create_key(
            db, tenant_id=None, name="bench", scopes=[Scope.memory], tenant_name="bench"
        )
    app = create_app(settings, runtime)
    app.state.runtime = runtime
    return runtime, app, {"Authorization": f"Bearer {issued.plaintext}"}
