"""GET /healthz, /readyz and /metrics: public, for orchestrators and Prometheus."""

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from app.core.db import create_engine, head_revision, session_factory
from app.core.runtime import Runtime
from app.main import create_app
from tests.api.helpers import assert_error
from tests.conftest import TenantKeys
from tests.fixtures.database import fresh_database
from tests.migrations.helpers import drop_database


@asynccontextmanager
async def client_on(runtime: Runtime, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose runtime talks to another database."""
    engine = create_engine(database_url, pool_size=1)
    other = Runtime(
        settings=runtime.settings,
        engine=engine,
        sessions=session_factory(engine),
        embedder=runtime.embedder,
        llm=runtime.llm,
    )
    app = create_app(other.settings, other)
    app.state.runtime = other
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            yield http
    finally:
        await engine.dispose()


@pytest.fixture
async def unmigrated_client(runtime: Runtime, pg_server: str) -> AsyncIterator[httpx.AsyncClient]:
    url = fresh_database(pg_server)
    async with client_on(runtime, url) as http:
        yield http
    drop_database(pg_server, url)


@pytest.fixture
async def unreachable_client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with client_on(runtime, "postgresql://nobody@127.0.0.1:9/nothing") as http:
        yield http


class TestHealthz:
    async def test_public_and_up(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/healthz")
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ok"}

    async def test_ignores_credentials(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str]
    ) -> None:
        assert (await client.get("/healthz", headers=bad_auth)).status_code == 200

    async def test_wrong_method(self, client: httpx.AsyncClient) -> None:
        assert_error(await client.post("/healthz"), 405, "method_not_allowed")


class TestReadyz:
    async def test_ready_at_head(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ready", "schema": head_revision()}

    async def test_ignores_credentials(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str]
    ) -> None:
        assert (await client.get("/readyz", headers=bad_auth)).status_code == 200

    async def test_not_ready_without_schema(self, unmigrated_client: httpx.AsyncClient) -> None:
        r = await unmigrated_client.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "unavailable"
        assert f"expected {head_revision()}" in body["detail"] and "migrate" in body["detail"]

    async def test_not_ready_without_database(self, unreachable_client: httpx.AsyncClient) -> None:
        r = await unreachable_client.get("/readyz")
        assert r.status_code == 503, r.text
        assert r.json()["status"] == "unavailable"
        assert "database unreachable" in r.json()["detail"]


class TestMetrics:
    async def test_public_prometheus_text(self, client: httpx.AsyncClient) -> None:
        await client.get("/healthz")
        r = await client.get("/metrics")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        assert "# TYPE memr1_http_requests_total counter" in r.text
        assert "memr1_http_request_seconds_bucket" in r.text

    async def test_ignores_credentials(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str]
    ) -> None:
        assert (await client.get("/metrics", headers=bad_auth)).status_code == 200

    async def test_counts_requests_by_route_template(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        r = await client.post(
            "/users/alice/memories", json={"text": "Alice likes tea"}, headers=tenant_a.memory
        )
        memory_id = r.json()["id"]
        before = _count(await _metrics(client), "GET", "/memories/{memory_id}", "200")
        assert (
            await client.get(f"/memories/{memory_id}", headers=tenant_a.memory)
        ).status_code == 200
        missing = uuid.uuid4()
        assert (
            await client.get(f"/memories/{missing}", headers=tenant_a.memory)
        ).status_code == 404

        text = await _metrics(client)

        assert _count(text, "GET", "/memories/{memory_id}", "200") == before + 1
        assert _count(text, "GET", "/memories/{memory_id}", "404") >= 1
        assert _count(text, "POST", "/users/{user_id}/memories", "201") >= 1
        assert memory_id not in text and str(missing) not in text
        assert "alice" not in text


async def _metrics(client: httpx.AsyncClient) -> str:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    return r.text


def _count(text: str, method: str, route: str, status: str) -> float:
    labels = f'method="{method}",route="{route}",status="{status}"'
    match = re.search(rf"^memr1_http_requests_total\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0
