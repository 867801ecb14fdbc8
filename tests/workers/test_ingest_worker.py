"""Ingestion through real Celery workers: Redis broker with the model endpoint down (also
traced, the worker continuing the trace of the request that queued the job), and the embedded
default (broker on Postgres) with the real bundled model end to end."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.core.db import create_engine, session_factory
from app.core.runtime import Runtime
from app.embeddings import InProcessEmbedder
from app.llm.backend import LLMBackend
from app.llm.bundled import BUNDLED_MODEL_NAME, ensure_bundled_gguf
from app.llm.inprocess import InProcessBackend
from app.main import create_app
from tests.fixtures.fake_llm import FakeLLM
from tests.fixtures.otlp import Traced, otlp_collector
from tests.workers.conftest import (
    committed_tenant,
    wait_for_job,
    wait_until_consuming,
    worker_process,
)
from workers.celery_app import INGEST_TASK, create_celery, send

REDIS_URL = "redis://127.0.0.1:6379/15"

CONVERSATION = [
    {
        "speaker": "Andrew",
        "text": "I adopted a dog named Buddy last week!",
        "occurred_at": "2023-05-08T13:56:00+00:00",
    },
    {
        "speaker": "Andrew",
        "text": "I went hiking with Buddy on Mount Tam.",
        "occurred_at": "2023-05-20T10:00:00+00:00",
    },
    {
        "speaker": "Andrew",
        "text": "I also adopted another dog, Scout.",
        "occurred_at": "2023-06-02T09:30:00+00:00",
    },
]


async def _committed_client(
    settings: Settings, embedder: InProcessEmbedder, llm: LLMBackend
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    engine = create_engine(settings.database_url or "", pool_size=4)
    celery = create_celery(settings)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        embedder=embedder,
        llm=llm,
        enqueue_ingestion=lambda job_id: send(celery, INGEST_TASK, job_id),
    )
    app = create_app(settings, runtime)
    app.state.runtime = runtime
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
        yield c, runtime
    await engine.dispose()


@pytest.fixture
async def redis_client(
    settings: Settings, embedder: InProcessEmbedder
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    redis_settings = settings.model_copy(update={"broker_url": REDIS_URL})
    async for pair in _committed_client(redis_settings, embedder, FakeLLM()):
        yield pair


def model_down_env(settings: Settings, data_dir: Path, **settings_env: str) -> dict[str, str]:
    """A worker's environment: Redis broker, and a model endpoint nothing listens on."""
    return {
        "MEMR1_DATABASE_URL": settings.database_url or "",
        "MEMR1_BROKER_URL": REDIS_URL,
        "MEMR1_DATA_DIR": str(data_dir),
        "MEMR1_LLM__BACKEND": "openai",
        "MEMR1_LLM__BASE_URL": "http://127.0.0.1:9/v1",  # nothing listens on the discard port
        "MEMR1_LLM__MAX_RETRIES": "0",
        "MEMR1_LLM__TIMEOUT_S": "2",
        **settings_env,
    }


async def test_model_down_job_retries_then_fails_and_turns_survive(
    redis_client: tuple[httpx.AsyncClient, Runtime], settings: Settings, tmp_path: Path
) -> None:
    client, _ = redis_client
    _, headers = await committed_tenant(settings, f"redis-{uuid.uuid4().hex[:6]}")
    env = model_down_env(
        settings,
        tmp_path,
        MEMR1_PIPELINE__INGEST_MAX_ATTEMPTS="2",
        MEMR1_PIPELINE__INGEST_RETRY_BACKOFF_S="0.5",
    )
    log = tmp_path / "worker.log"
    with worker_process(env, "ingest", log) as worker:
        response = await client.post(
            "/sessions/redis-s1/turns",
            json={"user_id": "andrew", "turns": CONVERSATION[:1]},
            headers=headers,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["ingestion_job_id"]
        job = await wait_for_job(
            client, f"/ingestions/{job_id}", headers, {"failed", "succeeded"}, 180, log, worker
        )
    assert job["status"] == "failed"
    assert job["attempts"] == 2
    assert "127.0.0.1:9" in job["error"]
    turns = await client.get("/sessions/redis-s1/turns", headers=headers)
    assert [t["text"] for t in turns.json()["items"]] == [CONVERSATION[0]["text"]]
    memories = await client.get("/users/andrew/memories", headers=headers)
    assert memories.json()["items"] == []


async def test_the_worker_continues_the_trace_of_the_request_that_queued_the_job(
    redis_client: tuple[httpx.AsyncClient, Runtime],
    settings: Settings,
    traced: Traced,
    tmp_path: Path,
) -> None:
    client, _ = redis_client
    _, headers = await committed_tenant(settings, f"traced-{uuid.uuid4().hex[:6]}")
    with otlp_collector() as collector:
        env = model_down_env(  # the job fails, traced
            settings,
            tmp_path,
            MEMR1_PIPELINE__INGEST_MAX_ATTEMPTS="1",
            MEMR1_TRACING__ENABLED="true",
            MEMR1_TRACING__ENDPOINT=collector.endpoint,
            MEMR1_TRACING__SERVICE_NAME="memory-r1-worker",
        )
        log = tmp_path / "worker.log"
        with worker_process(env, "ingest", log) as worker:
            wait_until_consuming(log, worker)
            traced.take()
            response = await client.post(
                "/sessions/traced-s1/turns",
                json={"user_id": "andrew", "turns": CONVERSATION[:1]},
                headers=headers,
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["ingestion_job_id"]
            await wait_for_job(
                client, f"/ingestions/{job_id}", headers, {"failed"}, 120, log, worker
            )
            [request] = [s for s in traced.take() if s.name == "POST /sessions/{session_id}/turns"]
            trace_id = request.context.trace_id.to_bytes(16, "big")
            deadline = time.monotonic() + 30  # the worker exports in batches, every 5 s
            names: set[str] = set()
            while time.monotonic() < deadline and "ingestion.job" not in names:
                await asyncio.sleep(0.5)
                names = {
                    span.name
                    for resource, span in collector.spans()
                    if span.trace_id == trace_id and resource["service.name"] == "memory-r1-worker"
                }
    assert "ingestion.job" in names, (names, log.read_text()[-3000:])
    assert "run/memr1.ingest" in names  # Celery's span for the task, under the request's trace
    assert "memory.extract" in names


@pytest.fixture(scope="module")
def real_llm(settings: Settings) -> InProcessBackend:
    return InProcessBackend(
        ensure_bundled_gguf(settings.data_dir, settings.llm.weights),
        base_model=BUNDLED_MODEL_NAME,
        max_batch_size=4,
        max_lora_rank=64,
    )


@pytest.mark.model
async def test_real_model_ingests_through_postgres_broker_and_answers(
    settings: Settings, embedder: InProcessEmbedder, real_llm: InProcessBackend, tmp_path: Path
) -> None:
    _, headers = await committed_tenant(settings, f"e2e-{uuid.uuid4().hex[:6]}")
    env = {
        "MEMR1_DATABASE_URL": settings.database_url or "",
        "MEMR1_DATA_DIR": str(settings.data_dir),  # the model prepared once by real_llm
    }
    log = tmp_path / "worker.log"
    async for client, _ in _committed_client(settings, embedder, real_llm):
        with worker_process(env, "ingest", log) as worker:
            response = await client.post(
                "/sessions/e2e-s1/turns",
                json={"user_id": "andrew", "turns": CONVERSATION},
                headers=headers,
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["ingestion_job_id"]
            job = await wait_for_job(
                client, f"/ingestions/{job_id}", headers, {"failed", "succeeded"}, 600, log, worker
            )
        assert job["status"] == "succeeded", job
        assert job["processed_turns"] == 3
        memories = (await client.get("/users/andrew/memories", headers=headers)).json()["items"]
        assert memories, job
        for memory in memories:
            history = (
                await client.get(f"/memories/{memory['id']}/history", headers=headers)
            ).json()
            assert history[0]["op"] == "ADD"
            assert history[0]["actor"] == "manager"
            assert history[0]["episode_id"] is not None
        answer = await client.post(
            "/ask",
            json={"user_id": "andrew", "question": "What is the name of Andrew's dog?"},
            headers=headers,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["answer"]
        assert body["model"] == BUNDLED_MODEL_NAME
        known = {m["id"] for m in memories}
        assert {m["id"] for m in body["memories"]} <= known
