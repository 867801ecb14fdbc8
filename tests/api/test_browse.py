"""The read routes the console browses: users, a user's ingestion jobs, a job's turns, and
one logged episode. Each is tenant-scoped: another tenant's ids answer 404."""

import json
import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from tests.api.helpers import Stored, add_op, assert_error, assert_unauthorised, populate
from tests.conftest import TenantKeys
from tests.fixtures.fake_llm import FakeLLM


class TestListUsers:
    async def test_unauthorised(self, client: httpx.AsyncClient, bad_auth: dict[str, str]) -> None:
        assert_unauthorised(await client.get("/users", headers=bad_auth))

    async def test_invalid_limit(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.get("/users", params={"limit": 0}, headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "limit")

    async def test_lists_own_users_with_live_memory_counts(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        tenant_b: TenantKeys,
        fake_llm: FakeLLM,
        db: AsyncSession,
    ) -> None:
        alice = await populate(client, tenant_a, fake_llm, db, "alice")
        await populate(client, tenant_b, fake_llm, db, "bob")
        r = await client.delete(f"/memories/{alice.memory_ids[1]}", headers=tenant_a.memory)
        assert r.status_code == 204, r.text

        r = await client.get("/users", headers=tenant_a.memory)

        assert r.status_code == 200, r.text
        body = r.json()
        assert [(u["user_id"], u["memory_count"]) for u in body["items"]] == [("alice", 1)]
        assert body["next_offset"] is None

    async def test_pages(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        for user in ("u1", "u2", "u3"):
            r = await client.post(
                f"/users/{user}/memories", json={"text": "x"}, headers=tenant_a.memory
            )
            assert r.status_code == 201, r.text
        first = (await client.get("/users?limit=2", headers=tenant_a.memory)).json()
        rest = (await client.get("/users?limit=2&offset=2", headers=tenant_a.memory)).json()
        assert [u["user_id"] for u in first["items"]] == ["u1", "u2"]
        assert first["next_offset"] == 2
        assert [u["user_id"] for u in rest["items"]] == ["u3"]


async def _alice(
    client: httpx.AsyncClient, tenant: TenantKeys, fake_llm: FakeLLM, db: AsyncSession
) -> Stored:
    return await populate(client, tenant, fake_llm, db, "alice")


class TestListIngestions:
    async def test_unauthorised(self, client: httpx.AsyncClient, bad_auth: dict[str, str]) -> None:
        assert_unauthorised(await client.get("/users/alice/ingestions", headers=bad_auth))

    async def test_unknown_user(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.get("/users/nobody/ingestions", headers=tenant_a.memory)
        assert_error(r, 404, "not_found", "nobody")

    async def test_newest_first_with_progress(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, fake_llm: FakeLLM, db: AsyncSession
    ) -> None:
        alice = await _alice(client, tenant_a, fake_llm, db)

        r = await client.get("/users/alice/ingestions", headers=tenant_a.memory)

        assert r.status_code == 200, r.text
        jobs = r.json()["items"]
        assert [j["id"] for j in jobs] == alice.job_ids[::-1]
        assert [(j["status"], j["processed_turns"], j["turn_count"]) for j in jobs] == [
            ("queued", 0, 1),
            ("succeeded", 1, 1),
        ]

    async def test_other_tenant_sees_no_user(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        tenant_b: TenantKeys,
        fake_llm: FakeLLM,
        db: AsyncSession,
    ) -> None:
        await _alice(client, tenant_a, fake_llm, db)
        r = await client.get("/users/alice/ingestions", headers=tenant_b.memory)
        assert_error(r, 404, "not_found", "alice")


class TestIngestionTurns:
    async def test_unauthorised(self, client: httpx.AsyncClient, bad_auth: dict[str, str]) -> None:
        r = await client.get(f"/ingestions/{uuid.uuid4()}/turns", headers=bad_auth)
        assert_unauthorised(r)

    async def test_unknown_job(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        missing = uuid.uuid4()
        r = await client.get(f"/ingestions/{missing}/turns", headers=tenant_a.memory)
        assert_error(r, 404, "not_found", str(missing))

    async def test_the_turns_a_job_came_from(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        tenant_b: TenantKeys,
        fake_llm: FakeLLM,
        db: AsyncSession,
    ) -> None:
        alice = await _alice(client, tenant_a, fake_llm, db)
        inline, queued = alice.job_ids

        r = await client.get(f"/ingestions/{inline}/turns", headers=tenant_a.memory)
        assert r.status_code == 200, r.text
        assert [t["text"] for t in r.json()] == ["I adopted a puppy."]
        r = await client.get(f"/ingestions/{queued}/turns", headers=tenant_a.memory)
        assert [t["text"] for t in r.json()] == ["Later."]
        r = await client.get(f"/ingestions/{inline}/turns", headers=tenant_b.memory)
        assert_error(r, 404, "not_found", inline)


class TestGetEpisode:
    async def test_unauthorised(self, client: httpx.AsyncClient, bad_auth: dict[str, str]) -> None:
        assert_unauthorised(await client.get(f"/episodes/{uuid.uuid4()}", headers=bad_auth))

    async def test_invalid_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.get("/episodes/e1", headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "episode_id")

    async def test_the_decision_behind_a_history_event(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        tenant_b: TenantKeys,
        fake_llm: FakeLLM,
        db: AsyncSession,
    ) -> None:
        alice = await _alice(client, tenant_a, fake_llm, db)
        history = await client.get(
            f"/memories/{alice.memory_ids[0]}/history", headers=tenant_a.memory
        )
        episode_id = history.json()[0]["episode_id"]

        r = await client.get(f"/episodes/{episode_id}", headers=tenant_a.memory)

        assert r.status_code == 200, r.text
        episode = r.json()
        assert episode["agent"] == "manager" and episode["user_id"] == "alice"
        assert episode["raw_output"] == json.dumps(add_op())
        [added] = episode["parsed"]["operations"]
        assert added["op"] == "ADD" and added["text"].endswith("alice adopted a puppy.")
        assert episode["feedback"] == []
        r = await client.get(f"/episodes/{episode_id}", headers=tenant_b.memory)
        assert_error(r, 404, "not_found", episode_id)

    async def test_an_answer_with_its_feedback(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, fake_llm: FakeLLM, db: AsyncSession
    ) -> None:
        alice = await _alice(client, tenant_a, fake_llm, db)
        answers = []
        for episode_id in alice.episode_ids:
            body = (await client.get(f"/episodes/{episode_id}", headers=tenant_a.memory)).json()
            if body["agent"] == "answer":
                answers.append(body)
        assert len(answers) == 1
        assert [f["gold_answer"] for f in answers[0]["feedback"]] == ["a puppy"]
