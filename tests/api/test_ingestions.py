"""GET /ingestions/{id}: the state of a background ingestion job."""

import uuid
from typing import Any

import httpx
import pytest

from app.core.db import transaction
from app.core.runtime import Runtime
from app.ingestion import repository
from app.models import JobStatus
from tests.api.helpers import assert_error, assert_forbidden, assert_unauthorised, turns_body
from tests.conftest import TenantKeys


@pytest.fixture
async def accepted(client: httpx.AsyncClient, tenant_a: TenantKeys) -> dict[str, Any]:
    r = await client.post(
        "/sessions/s1/turns", json=turns_body("alice", "one", "two"), headers=tenant_a.memory
    )
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


class TestGetIngestion:
    async def test_unauthorised(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str], accepted: dict[str, Any]
    ) -> None:
        r = await client.get(f"/ingestions/{accepted['ingestion_job_id']}", headers=bad_auth)
        assert_unauthorised(r)

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, accepted: dict[str, Any]
    ) -> None:
        r = await client.get(
            f"/ingestions/{accepted['ingestion_job_id']}", headers=tenant_a.admin_only
        )
        assert_forbidden(r)

    async def test_invalid_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.get("/ingestions/job-1", headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "job_id", "UUID")

    async def test_unknown_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        missing = uuid.uuid4()
        r = await client.get(f"/ingestions/{missing}", headers=tenant_a.memory)
        assert_error(r, 404, "not_found", str(missing))

    async def test_reads_a_queued_job(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, accepted: dict[str, Any]
    ) -> None:
        r = await client.get(f"/ingestions/{accepted['ingestion_job_id']}", headers=tenant_a.memory)

        assert r.status_code == 200, r.text
        job = r.json()
        assert job["id"] == accepted["ingestion_job_id"]
        assert job["status"] == "queued"
        assert job["attempts"] == 0 and job["error"] is None
        assert job["turn_count"] == 2 and job["processed_turns"] == 0
        assert job["operations"] == []
        assert job["started_at"] is None and job["finished_at"] is None
        assert job["created_at"] is not None


class TestRetryIngestion:
    async def _failed(self, runtime: Runtime, job_id: str) -> None:
        async with transaction(runtime.sessions) as db:
            await repository.claim(db, uuid.UUID(job_id))
            await repository.finish(db, uuid.UUID(job_id), JobStatus.failed, "model said no")

    async def test_a_failed_job_is_queued_again_and_sent(
        self,
        client: httpx.AsyncClient,
        runtime: Runtime,
        queued: Any,
        tenant_a: TenantKeys,
        accepted: dict[str, Any],
    ) -> None:
        job_id = accepted["ingestion_job_id"]
        await self._failed(runtime, job_id)
        queued.ingestion.clear()
        r = await client.post(f"/ingestions/{job_id}/retry", headers=tenant_a.memory)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued" and r.json()["attempts"] == 0
        assert queued.ingestion == [uuid.UUID(job_id)]

    async def test_only_a_failed_job(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, accepted: dict[str, Any]
    ) -> None:
        r = await client.post(
            f"/ingestions/{accepted['ingestion_job_id']}/retry", headers=tenant_a.memory
        )
        assert_error(r, 409, "conflict", "queued", "only a failed job")

    async def test_another_tenants_job_is_not_found(
        self,
        client: httpx.AsyncClient,
        runtime: Runtime,
        tenant_a: TenantKeys,
        tenant_b: TenantKeys,
        accepted: dict[str, Any],
    ) -> None:
        job_id = accepted["ingestion_job_id"]
        await self._failed(runtime, job_id)
        r = await client.post(f"/ingestions/{job_id}/retry", headers=tenant_b.memory)
        assert_error(r, 404, "not_found", job_id)
