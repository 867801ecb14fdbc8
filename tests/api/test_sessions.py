"""POST/GET /sessions/{id}/turns: turns are stored before anything else, then ingested in the
background or inline (``wait=true``)."""

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import Upstream
from app.ingestion import repository as ingestion_repository
from app.models import Episode, Session, Turn
from tests.api.helpers import (
    add_op,
    assert_error,
    assert_forbidden,
    assert_unauthorised,
    extracted,
    turns_body,
)
from tests.conftest import QueueRecorder, TenantKeys
from tests.fixtures.fake_llm import FakeLLM


async def post_turns(
    client: httpx.AsyncClient,
    tenant: TenantKeys,
    session_id: str,
    body: dict[str, Any],
    *,
    wait: bool = False,
) -> httpx.Response:
    params = {"wait": "true"} if wait else {}
    return await client.post(
        f"/sessions/{session_id}/turns", json=body, params=params, headers=tenant.memory
    )


class TestPostTurns:
    async def test_unauthorised(self, client: httpx.AsyncClient, bad_auth: dict[str, str]) -> None:
        r = await client.post(
            "/sessions/s1/turns", json=turns_body("alice", "hi"), headers=bad_auth
        )
        assert_unauthorised(r)

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, db: AsyncSession
    ) -> None:
        r = await client.post(
            "/sessions/s1/turns", json=turns_body("alice", "hi"), headers=tenant_a.admin_only
        )
        assert_forbidden(r)
        assert (
            await db.scalar(select(Session).where(Session.tenant_id == tenant_a.tenant_id)) is None
        )

    @pytest.mark.parametrize(
        ("session_id", "body", "where"),
        [
            ("s1", {"turns": [{"speaker": "Alice", "text": "hi"}]}, "user_id"),
            ("s1", {"user_id": "alice", "turns": []}, "turns"),
            ("s1", {"user_id": "alice"}, "turns"),
            ("s1", turns_body("alice", "   "), "turns.0.text"),
            ("s1", turns_body("alice", "hi", speaker=""), "turns.0.speaker"),
            ("s1", turns_body("alice", "hi", speaker="x" * 201), "turns.0.speaker"),
            ("s1", turns_body("has space", "hi"), "user_id"),
            ("s1", turns_body("x" * 201, "hi"), "user_id"),
            (
                "s1",
                {
                    "user_id": "alice",
                    "turns": [{"speaker": "A", "text": "hi", "occurred_at": "soon"}],
                },
                "turns.0.occurred_at",
            ),
            ("s1", {**turns_body("alice", "hi"), "manager_adapter": "latest"}, "manager_adapter"),
            (
                "s1",
                {**turns_body("alice", "hi"), "extractor_adapter": "add-only"},
                "extractor_adapter",
            ),
            ("-s1", turns_body("alice", "hi"), "session_id"),
        ],
    )
    async def test_invalid_input(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        session_id: str,
        body: dict[str, Any],
        where: str,
    ) -> None:
        r = await post_turns(client, tenant_a, session_id, body)
        assert_error(r, 422, "invalid_input", where)

    async def test_not_json(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.post(
            "/sessions/s1/turns",
            content=b"{not json",
            headers={**tenant_a.memory, "Content-Type": "application/json"},
        )
        assert_error(r, 422, "invalid_input", "JSON")

    async def test_too_many_turns(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, settings: Settings, db: AsyncSession
    ) -> None:
        limit = settings.limits.max_turns_per_request
        body = turns_body("alice", *(f"turn {i}" for i in range(limit + 1)))
        r = await post_turns(client, tenant_a, "s1", body)
        assert_error(r, 413, "payload_too_large", f"{limit + 1} turns", f"at most {limit}")
        assert await db.scalar(select(Turn).where(Turn.tenant_id == tenant_a.tenant_id)) is None

    async def test_as_many_turns_as_allowed(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, settings: Settings
    ) -> None:
        limit = settings.limits.max_turns_per_request
        r = await post_turns(client, tenant_a, "s1", turns_body("alice", *(["t"] * limit)))
        assert r.status_code == 202, r.text
        assert len(r.json()["turn_ids"]) == limit

    async def test_turn_too_long(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, settings: Settings
    ) -> None:
        limit = settings.limits.max_turn_chars
        r = await post_turns(client, tenant_a, "s1", turns_body("alice", "ok", "x" * (limit + 1)))
        assert_error(r, 422, "invalid_input", "turns[1].text", str(limit + 1), str(limit))

    async def test_body_too_large(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, settings: Settings
    ) -> None:
        limit = settings.limits.max_body_bytes
        r = await post_turns(client, tenant_a, "s1", turns_body("alice", "x" * limit))
        assert_error(r, 413, "payload_too_large", str(limit))

    async def test_session_of_another_user(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, queued: QueueRecorder
    ) -> None:
        assert (
            await post_turns(client, tenant_a, "s1", turns_body("alice", "hi"))
        ).status_code == 202

        r = await post_turns(client, tenant_a, "s1", turns_body("bob", "hello"))

        assert_error(r, 409, "conflict", "'s1'", "another user")
        assert len(queued.ingestion) == 1
        page = (await client.get("/sessions/s1/turns", headers=tenant_a.memory)).json()
        assert page["user_id"] == "alice"
        assert [t["text"] for t in page["items"]] == ["hi"]
        r = await client.get("/users/bob/memories", headers=tenant_a.memory)
        assert_error(r, 404, "not_found", "'bob'")

    async def test_stores_and_enqueues(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, queued: QueueRecorder
    ) -> None:
        body = {
            "user_id": "alice",
            "turns": [
                {
                    "speaker": "Alice",
                    "text": "I adopted a puppy.",
                    "occurred_at": "2023-05-08T10:00:00Z",
                },
                {"speaker": "Bob", "text": "What is its name?"},
                {"speaker": "Alice", "text": "Scout."},
            ],
        }
        r = await post_turns(client, tenant_a, "s1", body)

        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["session_id"] == "s1"
        assert accepted["status"] == "queued"
        assert accepted["operations"] is None
        assert len(accepted["turn_ids"]) == 3
        job_id = uuid.UUID(accepted["ingestion_job_id"])
        assert queued.ingestion == [job_id]

        page = (await client.get("/sessions/s1/turns", headers=tenant_a.memory)).json()
        assert page["session_id"] == "s1" and page["user_id"] == "alice"
        assert [t["id"] for t in page["items"]] == accepted["turn_ids"]
        assert [t["seq"] for t in page["items"]] == [0, 1, 2]
        assert [(t["speaker"], t["text"]) for t in page["items"]] == [
            ("Alice", "I adopted a puppy."),
            ("Bob", "What is its name?"),
            ("Alice", "Scout."),
        ]
        assert page["items"][0]["occurred_at"] == "2023-05-08T10:00:00Z"
        assert page["items"][1]["occurred_at"] is not None  # defaults to the time received

        job = (await client.get(f"/ingestions/{job_id}", headers=tenant_a.memory)).json()
        assert job["status"] == "queued"
        assert job["turn_count"] == 3 and job["processed_turns"] == 0 and job["attempts"] == 0

    async def test_later_turns_continue_the_sequence(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, queued: QueueRecorder
    ) -> None:
        first = (await post_turns(client, tenant_a, "s1", turns_body("alice", "a", "b"))).json()
        second = (await post_turns(client, tenant_a, "s1", turns_body("alice", "c"))).json()

        assert second["ingestion_job_id"] != first["ingestion_job_id"]
        assert len(queued.ingestion) == 2
        page = (await client.get("/sessions/s1/turns", headers=tenant_a.memory)).json()
        assert [(t["seq"], t["text"]) for t in page["items"]] == [(0, "a"), (1, "b"), (2, "c")]
        assert [t["id"] for t in page["items"]] == first["turn_ids"] + second["turn_ids"]

    async def test_wait_ingests_inline(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        fake_llm: FakeLLM,
        queued: QueueRecorder,
        db: AsyncSession,
    ) -> None:
        fact = "On 8 May 2023, Alice adopted a puppy named Scout."
        fake_llm.push(extracted(fact), add_op())
        body = {
            "user_id": "alice",
            "turns": [
                {
                    "speaker": "Alice",
                    "text": "I adopted a puppy named Scout!",
                    "occurred_at": "2023-05-08T10:00:00Z",
                }
            ],
        }

        r = await post_turns(client, tenant_a, "s1", body, wait=True)

        assert r.status_code == 200, r.text
        accepted = r.json()
        assert accepted["status"] == "succeeded"
        assert queued.ingestion == []
        [turn_id] = accepted["turn_ids"]
        [operation] = accepted["operations"]
        assert operation["op"] == "ADD"
        assert operation["text"] == fact
        assert len(fake_llm.calls) == 2
        assert "I adopted a puppy named Scout!" in fake_llm.calls[0].last_user
        assert fact in fake_llm.calls[1].last_user

        memory_id = operation["memory_id"]
        memory = (await client.get(f"/memories/{memory_id}", headers=tenant_a.memory)).json()
        assert memory["text"] == fact
        assert memory["user_id"] == "alice"
        assert memory["speaker"] == "Alice"
        assert memory["occurred_at"] == "2023-05-08T10:00:00Z"
        assert memory["source_turn_ids"] == [turn_id]
        assert memory["version"] == 1 and memory["deleted_at"] is None

        [event] = (
            await client.get(f"/memories/{memory_id}/history", headers=tenant_a.memory)
        ).json()
        assert event["op"] == "ADD" and event["actor"] == "manager"
        assert event["before"] is None
        assert event["after"]["text"] == fact
        episode = await db.get(Episode, uuid.UUID(event["episode_id"]))
        assert episode is not None
        assert episode.tenant_id == tenant_a.tenant_id and episode.agent == "manager"
        assert episode.parsed is not None
        assert episode.parsed["operations"][0]["op"] == "ADD"

        job = (
            await client.get(f"/ingestions/{accepted['ingestion_job_id']}", headers=tenant_a.memory)
        ).json()
        assert job["status"] == "succeeded" and job["attempts"] == 1 and job["error"] is None
        assert job["processed_turns"] == 1 and job["operations"] == accepted["operations"]

    async def test_wait_behind_the_users_earlier_turns_still_running_is_accepted_for_later(
        self,
        client: httpx.AsyncClient,
        db: AsyncSession,
        tenant_a: TenantKeys,
        fake_llm: FakeLLM,
        queued: QueueRecorder,
    ) -> None:
        first = await post_turns(client, tenant_a, "s1", turns_body("alice", "one"))
        earlier = uuid.UUID(first.json()["ingestion_job_id"])
        await ingestion_repository.claim(db, earlier, "ingest@elsewhere")  # a worker runs it

        r = await post_turns(client, tenant_a, "s2", turns_body("alice", "two"), wait=True)

        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["status"] == "queued" and accepted["operations"] is None
        assert fake_llm.calls == []  # it waits for the earlier turns, in order
        assert queued.ingestion == [earlier, uuid.UUID(accepted["ingestion_job_id"])]

    async def test_turns_survive_an_unreachable_model(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        fake_llm: FakeLLM,
        queued: QueueRecorder,
    ) -> None:
        fake_llm.push(Upstream("model server unreachable"))

        r = await post_turns(client, tenant_a, "s1", turns_body("alice", "one", "two"), wait=True)

        assert_error(r, 503, "upstream_unavailable", "model server unreachable", "turns are stored")
        [job_id] = queued.ingestion
        assert str(job_id) in r.json()["detail"]
        page = (await client.get("/sessions/s1/turns", headers=tenant_a.memory)).json()
        assert [t["text"] for t in page["items"]] == ["one", "two"]
        job = (await client.get(f"/ingestions/{job_id}", headers=tenant_a.memory)).json()
        assert job["status"] == "queued"
        assert job["attempts"] == 1
        assert job["error"] is not None and "model server unreachable" in job["error"]
        assert job["finished_at"] is None
        assert job["turn_count"] == 2 and job["processed_turns"] == 0


class TestListTurns:
    async def test_unauthorised(self, client: httpx.AsyncClient, bad_auth: dict[str, str]) -> None:
        assert_unauthorised(await client.get("/sessions/s1/turns", headers=bad_auth))

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        assert_forbidden(await client.get("/sessions/s1/turns", headers=tenant_a.admin_only))

    @pytest.mark.parametrize(
        ("path", "where"),
        [
            ("/sessions/s1/turns?after_seq=-2", "after_seq"),
            ("/sessions/s1/turns?after_seq=first", "after_seq"),
            ("/sessions/s1/turns?limit=0", "limit"),
            ("/sessions/s1/turns?limit=501", "limit"),
            ("/sessions/bad%20id/turns", "session_id"),
        ],
    )
    async def test_invalid_input(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, path: str, where: str
    ) -> None:
        assert_error(await client.get(path, headers=tenant_a.memory), 422, "invalid_input", where)

    async def test_unknown_session(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.get("/sessions/nope/turns", headers=tenant_a.memory)
        assert_error(r, 404, "not_found", "'nope'")

    async def test_pages_in_order(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        texts = [f"turn {i}" for i in range(5)]
        await post_turns(client, tenant_a, "s1", turns_body("alice", *texts))

        seen: list[str] = []
        after: int | None = -1
        while after is not None:
            r = await client.get(
                "/sessions/s1/turns",
                params={"after_seq": after, "limit": 2},
                headers=tenant_a.memory,
            )
            assert r.status_code == 200, r.text
            page = r.json()
            seen += [t["text"] for t in page["items"]]
            after = page["next_after_seq"]
        assert seen == texts

    async def test_sessions_are_separate(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        await post_turns(client, tenant_a, "s1", turns_body("alice", "in s1"))
        await post_turns(client, tenant_a, "s2", turns_body("alice", "in s2"))

        page = (await client.get("/sessions/s2/turns", headers=tenant_a.memory)).json()

        assert [(t["seq"], t["text"]) for t in page["items"]] == [(0, "in s2")]
        assert page["next_after_seq"] is None
