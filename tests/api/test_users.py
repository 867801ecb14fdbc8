"""DELETE /users/{id}: erasure of everything stored about a user."""

import uuid
from pathlib import Path

import httpx
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters import repository as adapters_repository
from app.adapters import service as adapters
from app.core.db import transaction
from app.core.runtime import Runtime
from app.models import Base, Feedback, TrainingJob, User
from tests.api.helpers import Stored, assert_error, assert_forbidden, assert_unauthorised, populate
from tests.conftest import TenantKeys
from tests.fixtures.fake_llm import FakeLLM

# Every table holding a user's rows, by its user_id column; feedback is reached via episodes.
USER_TABLES = {"sessions", "turns", "memories", "memory_events", "episodes", "ingestion_jobs"}


async def rows_of(db: AsyncSession, stored: Stored) -> dict[str, int]:
    """How many rows of each table belong to the user."""
    tables: list[Table] = [t for t in Base.metadata.tables.values() if "user_id" in t.c]
    assert {t.name for t in tables} == USER_TABLES
    counts = {
        table.name: int(
            await db.scalar(
                select(func.count()).select_from(table).where(table.c.user_id == stored.user_id)
            )
            or 0
        )
        for table in tables
    }
    counts["users"] = int(
        await db.scalar(select(func.count()).select_from(User).where(User.id == stored.user_id))
        or 0
    )
    counts["feedback"] = int(
        await db.scalar(
            select(func.count())
            .select_from(Feedback)
            .where(Feedback.episode_id.in_(stored.episode_ids))
        )
        or 0
    )
    return counts


class TestEraseUser:
    async def test_unauthorised(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str], tenant_a: TenantKeys
    ) -> None:
        await client.post("/users/alice/memories", json={"text": "t"}, headers=tenant_a.memory)
        assert_unauthorised(await client.delete("/users/alice", headers=bad_auth))
        r = await client.get("/users/alice/memories", headers=tenant_a.memory)
        assert len(r.json()["items"]) == 1

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        await client.post("/users/alice/memories", json={"text": "t"}, headers=tenant_a.memory)
        assert_forbidden(await client.delete("/users/alice", headers=tenant_a.admin_only))
        r = await client.get("/users/alice/memories", headers=tenant_a.memory)
        assert len(r.json()["items"]) == 1

    async def test_invalid_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.delete("/users/alice%20smith", headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "user_id")
        r = await client.delete(f"/users/{'a' * 201}", headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "user_id")

    async def test_unknown_user(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.delete("/users/nobody", headers=tenant_a.memory)
        assert_error(r, 404, "not_found", "'nobody'")

    async def test_erases_every_row_of_the_user(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        tenant_b: TenantKeys,
        fake_llm: FakeLLM,
        db: AsyncSession,
    ) -> None:
        alice = await populate(client, tenant_a, fake_llm, db, "alice")
        bob = await populate(client, tenant_a, fake_llm, db, "bob")
        other_alice = await populate(client, tenant_b, fake_llm, db, "alice")
        before = {s.user_id: await rows_of(db, s) for s in (alice, bob, other_alice)}
        assert all(count > 0 for counts in before.values() for count in counts.values()), before

        r = await client.delete("/users/alice", headers=tenant_a.memory)

        assert r.status_code == 204, r.text
        assert r.content == b""
        after = await rows_of(db, alice)
        assert after == dict.fromkeys(after, 0)
        assert await rows_of(db, bob) == before[bob.user_id]
        assert await rows_of(db, other_alice) == before[other_alice.user_id]

        assert_error(await client.delete("/users/alice", headers=tenant_a.memory), 404, "not_found")
        r = await client.get("/users/alice/memories", headers=tenant_a.memory)
        assert_error(r, 404, "not_found")
        r = await client.get("/sessions/alice-s1/turns", headers=tenant_a.memory)
        assert_error(r, 404, "not_found")
        for memory_id in alice.memory_ids:
            r = await client.get(f"/memories/{memory_id}", headers=tenant_a.memory)
            assert_error(r, 404, "not_found")
            r = await client.get(f"/memories/{memory_id}/history", headers=tenant_a.memory)
            assert_error(r, 404, "not_found")
        for job_id in alice.job_ids:
            r = await client.get(f"/ingestions/{job_id}", headers=tenant_a.memory)
            assert_error(r, 404, "not_found")
        for episode_id in alice.episode_ids:
            r = await client.post(
                "/feedback",
                json={"episode_id": str(episode_id), "rating": 1},
                headers=tenant_a.memory,
            )
            assert_error(r, 404, "not_found")

        r = await client.get("/users/bob/memories", headers=tenant_a.memory)
        assert {m["id"] for m in r.json()["items"]} == set(bob.memory_ids)
        r = await client.get("/users/alice/memories", headers=tenant_b.memory)
        assert {m["id"] for m in r.json()["items"]} == set(other_alice.memory_ids)

    async def test_the_id_can_be_used_again(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        await client.post("/users/alice/memories", json={"text": "old"}, headers=tenant_a.memory)
        assert (await client.delete("/users/alice", headers=tenant_a.memory)).status_code == 204

        r = await client.post(
            "/users/alice/memories", json={"text": "new"}, headers=tenant_a.memory
        )

        assert r.status_code == 201, r.text
        page = (await client.get("/users/alice/memories", headers=tenant_a.memory)).json()
        assert [m["text"] for m in page["items"]] == ["new"]

    async def test_adapters_trained_on_the_user_are_withdrawn(
        self,
        client: httpx.AsyncClient,
        runtime: Runtime,
        tenant_a: TenantKeys,
        fake_llm: FakeLLM,
        db: AsyncSession,
        tmp_path: Path,
    ) -> None:
        alice = await populate(client, tenant_a, fake_llm, db, "alice")
        bob = await populate(client, tenant_a, fake_llm, db, "bob")

        async def trained_on(name: str, users: list[uuid.UUID], active: bool) -> uuid.UUID:
            path = tmp_path / name
            path.mkdir()
            (path / "adapter_config.json").write_text("{}")
            async with transaction(runtime.sessions) as session:
                job = TrainingJob(
                    tenant_id=tenant_a.tenant_id,
                    agent="answer",
                    algorithm="grpo",
                    source="episodes",
                    params={},
                    activate="always",
                    status="succeeded",
                    cancel_requested=False,
                    trained_on_users=users,
                    logs="",
                )
                session.add(job)
                await session.flush()
                adapter = await adapters.register_candidate(
                    session,
                    tenant_id=tenant_a.tenant_id,
                    agent="answer",
                    name=name,
                    base_model="fake-model",
                    path=str(path),
                    rank=8,
                    validation_metrics=None,
                    training_job_id=job.id,
                )
                if active:
                    await adapters.set_active(session, adapter)
                return adapter.id

        with_alice = await trained_on("with-alice", [alice.user_id, bob.user_id], active=True)
        bob_only = await trained_on("bob-only", [bob.user_id], active=False)

        assert (await client.delete("/users/alice", headers=tenant_a.admin)).status_code == 204

        listed = (await client.get("/admin/adapters", headers=tenant_a.admin)).json()
        status = {a["id"]: a["status"] for a in listed}
        assert status[str(with_alice)] == "withdrawn" and status[str(bob_only)] == "candidate"
        async with transaction(runtime.sessions) as session:  # the agent is on the base model
            assert (
                await adapters_repository.get_active(session, tenant_a.tenant_id, "answer") is None
            )
        r = await client.post(f"/admin/adapters/{with_alice}/activate", headers=tenant_a.admin)
        assert_error(r, 409, "conflict", "withdrawn", "erased user")
        fake_llm.push({"selected": [], "answer": "?"})
        r = await client.post(
            "/ask",
            json={"user_id": "bob", "question": "Pets?", "answer_adapter": str(with_alice)},
            headers=tenant_a.memory,
        )
        assert_error(r, 409, "conflict", "withdrawn")
