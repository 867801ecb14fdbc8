"""The memory bank through the API: list, semantic search, add, read, edit, delete, history."""

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.core.runtime import Runtime
from app.memories import repository as memories_repository
from tests.api.helpers import assert_error, assert_forbidden, assert_unauthorised
from tests.conftest import TenantKeys, make_tenant


async def add_memory(
    client: httpx.AsyncClient, tenant: TenantKeys, user_id: str, text: str, **fields: Any
) -> dict[str, Any]:
    r = await client.post(
        f"/users/{user_id}/memories", json={"text": text, **fields}, headers=tenant.memory
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def delete_memory(client: httpx.AsyncClient, tenant: TenantKeys, memory_id: str) -> None:
    r = await client.delete(f"/memories/{memory_id}", headers=tenant.memory)
    assert r.status_code == 204, r.text


@pytest.fixture
async def memory(client: httpx.AsyncClient, tenant_a: TenantKeys) -> dict[str, Any]:
    return await add_memory(
        client,
        tenant_a,
        "alice",
        "Alice likes green tea",
        speaker="Alice",
        occurred_at="2023-05-08T00:00:00Z",
    )


class TestListMemories:
    async def test_unauthorised(self, client: httpx.AsyncClient, bad_auth: dict[str, str]) -> None:
        assert_unauthorised(await client.get("/users/alice/memories", headers=bad_auth))

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        assert_forbidden(await client.get("/users/alice/memories", headers=tenant_a.admin_only))

    @pytest.mark.parametrize(
        ("params", "where"),
        [
            ({"limit": 0}, "limit"),
            ({"limit": 201}, "limit"),
            ({"offset": -1}, "offset"),
            ({"query": ""}, "query"),
        ],
    )
    async def test_invalid_input(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memory: dict[str, Any],
        params: dict[str, Any],
        where: str,
    ) -> None:
        r = await client.get("/users/alice/memories", params=params, headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", where)

    async def test_invalid_user_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.get("/users/a%20b/memories", headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "user_id")

    async def test_query_too_long(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memory: dict[str, Any],
        settings: Settings,
    ) -> None:
        limit = settings.limits.max_query_chars
        r = await client.get(
            "/users/alice/memories", params={"query": "q" * (limit + 1)}, headers=tenant_a.memory
        )
        assert_error(r, 422, "invalid_input", "query", str(limit))

    async def test_unknown_user(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.get("/users/nobody/memories", headers=tenant_a.memory)
        assert_error(r, 404, "not_found", "'nobody'")
        r = await client.get(
            "/users/nobody/memories", params={"query": "tea"}, headers=tenant_a.memory
        )
        assert_error(r, 404, "not_found", "'nobody'")

    async def test_lists_live_memories_in_pages(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        added = [await add_memory(client, tenant_a, "alice", f"memory {i}") for i in range(5)]
        await add_memory(client, tenant_a, "bob", "a memory of bob")
        await delete_memory(client, tenant_a, added[2]["id"])

        seen: list[str] = []
        offset: int | None = 0
        while offset is not None:
            r = await client.get(
                "/users/alice/memories",
                params={"limit": 2, "offset": offset},
                headers=tenant_a.memory,
            )
            assert r.status_code == 200, r.text
            page = r.json()
            assert all(item["user_id"] == "alice" for item in page["items"])
            assert all(item["score"] is None for item in page["items"])
            seen += [item["id"] for item in page["items"]]
            offset = page["next_offset"]
        live = {m["id"] for m in added} - {added[2]["id"]}
        assert len(seen) == len(live) and set(seen) == live

    async def test_search_ranks_by_similarity(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        tea = await add_memory(client, tenant_a, "alice", "Alice drinks green tea every morning")
        await add_memory(client, tenant_a, "alice", "Alice's car is a red Volvo")
        await add_memory(client, tenant_a, "alice", "Alice works as a nurse in Boston")
        deleted = await add_memory(client, tenant_a, "alice", "Alice drinks tea")
        await delete_memory(client, tenant_a, deleted["id"])
        await add_memory(client, tenant_a, "bob", "Bob drinks green tea every morning")

        r = await client.get(
            "/users/alice/memories",
            params={"query": "What does Alice drink in the morning?", "limit": 2},
            headers=tenant_a.memory,
        )

        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert len(items) == 2
        assert items[0]["id"] == tea["id"]
        assert items[0]["text"] == "Alice drinks green tea every morning"
        assert all(item["user_id"] == "alice" for item in items)
        assert deleted["id"] not in {item["id"] for item in items}
        assert 1 >= items[0]["score"] > items[1]["score"]


class TestAddMemory:
    async def test_unauthorised(self, client: httpx.AsyncClient, bad_auth: dict[str, str]) -> None:
        r = await client.post("/users/alice/memories", json={"text": "t"}, headers=bad_auth)
        assert_unauthorised(r)

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        r = await client.post(
            "/users/alice/memories", json={"text": "t"}, headers=tenant_a.admin_only
        )
        assert_forbidden(r)

    @pytest.mark.parametrize(
        ("user_id", "body", "where"),
        [
            ("alice", {}, "text"),
            ("alice", {"text": "  "}, "text"),
            ("alice", {"text": 5}, "text"),
            ("alice", {"text": "t", "speaker": "s" * 201}, "speaker"),
            ("alice", {"text": "t", "occurred_at": "last week"}, "occurred_at"),
            ("al%20ice", {"text": "t"}, "user_id"),
        ],
    )
    async def test_invalid_input(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        user_id: str,
        body: dict[str, Any],
        where: str,
    ) -> None:
        r = await client.post(f"/users/{user_id}/memories", json=body, headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", where)

    async def test_text_too_long(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, settings: Settings
    ) -> None:
        limit = settings.limits.max_memory_chars
        r = await client.post(
            "/users/alice/memories", json={"text": "x" * (limit + 1)}, headers=tenant_a.memory
        )
        assert_error(r, 422, "invalid_input", "text", str(limit))

    async def test_adds_for_a_new_user(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        r = await client.post(
            "/users/alice/memories",
            json={
                "text": "  Alice likes green tea ",
                "speaker": "Alice",
                "occurred_at": "2023-05-08T00:00:00Z",
            },
            headers=tenant_a.memory,
        )

        assert r.status_code == 201, r.text
        created = r.json()
        assert created["text"] == "Alice likes green tea"
        assert created["user_id"] == "alice" and created["speaker"] == "Alice"
        assert created["occurred_at"] == "2023-05-08T00:00:00Z"
        assert created["version"] == 1 and created["source_turn_ids"] == []
        assert created["deleted_at"] is None and created["score"] is None
        uuid.UUID(created["id"])
        fetched = (await client.get(f"/memories/{created['id']}", headers=tenant_a.memory)).json()
        assert fetched == created
        [event] = (
            await client.get(f"/memories/{created['id']}/history", headers=tenant_a.memory)
        ).json()
        assert event["op"] == "ADD" and event["actor"] == "api" and event["episode_id"] is None
        assert event["before"] is None and event["after"]["text"] == "Alice likes green tea"


class TestGetMemory:
    async def test_unauthorised(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str], memory: dict[str, Any]
    ) -> None:
        r = await client.get(f"/memories/{memory['id']}", headers=bad_auth)
        assert_unauthorised(r)
        assert memory["text"] not in r.text

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        assert_forbidden(await client.get(f"/memories/{memory['id']}", headers=tenant_a.admin_only))

    async def test_invalid_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.get("/memories/not-a-uuid", headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "memory_id", "UUID")

    async def test_unknown_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        missing = uuid.uuid4()
        r = await client.get(f"/memories/{missing}", headers=tenant_a.memory)
        assert_error(r, 404, "not_found", str(missing))

    async def test_reads_it(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        r = await client.get(f"/memories/{memory['id']}", headers=tenant_a.memory)
        assert r.status_code == 200, r.text
        assert r.json() == memory
        assert memory["text"] == "Alice likes green tea"
        assert memory["occurred_at"] == "2023-05-08T00:00:00Z"


class TestUpdateMemory:
    async def test_unauthorised(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str], memory: dict[str, Any]
    ) -> None:
        r = await client.patch(f"/memories/{memory['id']}", json={"text": "x"}, headers=bad_auth)
        assert_unauthorised(r)

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        r = await client.patch(
            f"/memories/{memory['id']}", json={"text": "x"}, headers=tenant_a.admin_only
        )
        assert_forbidden(r)

    @pytest.mark.parametrize(
        ("body", "where"),
        [
            ({}, "nothing to change"),
            ({"text": None}, "nothing to change"),
            ({"text": " "}, "text"),
            ({"speaker": "s" * 201}, "speaker"),
            ({"occurred_at": "tomorrow"}, "occurred_at"),
        ],
    )
    async def test_invalid_input(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memory: dict[str, Any],
        body: dict[str, Any],
        where: str,
    ) -> None:
        r = await client.patch(f"/memories/{memory['id']}", json=body, headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", where)

    async def test_invalid_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.patch("/memories/123", json={"text": "x"}, headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "memory_id")

    async def test_text_too_long(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memory: dict[str, Any],
        settings: Settings,
    ) -> None:
        limit = settings.limits.max_memory_chars
        r = await client.patch(
            f"/memories/{memory['id']}", json={"text": "x" * (limit + 1)}, headers=tenant_a.memory
        )
        assert_error(r, 422, "invalid_input", str(limit))

    async def test_unknown_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        missing = uuid.uuid4()
        r = await client.patch(f"/memories/{missing}", json={"text": "x"}, headers=tenant_a.memory)
        assert_error(r, 404, "not_found", str(missing))

    async def test_deleted_memory(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        await delete_memory(client, tenant_a, memory["id"])

        r = await client.patch(
            f"/memories/{memory['id']}",
            json={"text": "Alice likes coffee"},
            headers=tenant_a.memory,
        )

        assert_error(r, 409, "conflict", memory["id"], "deleted")
        history = (
            await client.get(f"/memories/{memory['id']}/history", headers=tenant_a.memory)
        ).json()
        assert [e["op"] for e in history] == ["ADD", "DELETE"]

    async def test_updates_and_records_history(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        r = await client.patch(
            f"/memories/{memory['id']}",
            json={"text": "Alice likes black coffee"},
            headers=tenant_a.memory,
        )

        assert r.status_code == 200, r.text
        updated = r.json()
        assert updated["id"] == memory["id"]
        assert updated["text"] == "Alice likes black coffee"
        assert updated["speaker"] == "Alice" and updated["occurred_at"] == memory["occurred_at"]
        assert updated["version"] == 2
        assert datetime.fromisoformat(updated["updated_at"]) > datetime.fromisoformat(
            memory["updated_at"]
        )
        history = (
            await client.get(f"/memories/{memory['id']}/history", headers=tenant_a.memory)
        ).json()
        assert [(e["op"], e["actor"]) for e in history] == [("ADD", "api"), ("UPDATE", "api")]
        assert history[1]["before"]["text"] == "Alice likes green tea"
        assert history[1]["after"]["text"] == "Alice likes black coffee"
        assert history[1]["after"]["version"] == 2

        # The new text is what search now finds (the embedding was recomputed).
        r = await client.get(
            "/users/alice/memories", params={"query": "coffee"}, headers=tenant_a.memory
        )
        [hit] = r.json()["items"]
        assert hit["text"] == "Alice likes black coffee" and hit["score"] > 0.5

    async def test_changes_only_the_fields_sent(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        r = await client.patch(
            f"/memories/{memory['id']}",
            json={"occurred_at": "2024-01-02T03:04:05Z"},
            headers=tenant_a.memory,
        )
        assert r.status_code == 200, r.text
        updated = r.json()
        assert updated["occurred_at"] == "2024-01-02T03:04:05Z"
        assert updated["text"] == memory["text"] and updated["speaker"] == memory["speaker"]


class TestDeleteMemory:
    async def test_unauthorised(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str], memory: dict[str, Any]
    ) -> None:
        assert_unauthorised(await client.delete(f"/memories/{memory['id']}", headers=bad_auth))

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        r = await client.delete(f"/memories/{memory['id']}", headers=tenant_a.admin_only)
        assert_forbidden(r)
        r = await client.get(f"/memories/{memory['id']}", headers=tenant_a.memory)
        assert r.json()["deleted_at"] is None

    async def test_invalid_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.delete("/memories/xyz", headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "memory_id")

    async def test_unknown_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        missing = uuid.uuid4()
        r = await client.delete(f"/memories/{missing}", headers=tenant_a.memory)
        assert_error(r, 404, "not_found", str(missing))

    async def test_already_deleted(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        await delete_memory(client, tenant_a, memory["id"])

        r = await client.delete(f"/memories/{memory['id']}", headers=tenant_a.memory)

        assert_error(r, 409, "conflict", memory["id"], "already deleted")
        history = (
            await client.get(f"/memories/{memory['id']}/history", headers=tenant_a.memory)
        ).json()
        assert [e["op"] for e in history] == ["ADD", "DELETE"]

    async def test_deletes_softly_with_history(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        r = await client.delete(f"/memories/{memory['id']}", headers=tenant_a.memory)

        assert r.status_code == 204, r.text
        assert r.content == b""
        page = (await client.get("/users/alice/memories", headers=tenant_a.memory)).json()
        assert page["items"] == []
        r = await client.get(
            "/users/alice/memories", params={"query": "green tea"}, headers=tenant_a.memory
        )
        assert r.json()["items"] == []
        history = (
            await client.get(f"/memories/{memory['id']}/history", headers=tenant_a.memory)
        ).json()
        assert [(e["op"], e["actor"]) for e in history] == [("ADD", "api"), ("DELETE", "api")]
        assert history[1]["before"]["text"] == "Alice likes green tea"
        assert history[1]["after"] is None


class TestMemoryHistory:
    async def test_unauthorised(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str], memory: dict[str, Any]
    ) -> None:
        r = await client.get(f"/memories/{memory['id']}/history", headers=bad_auth)
        assert_unauthorised(r)

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        r = await client.get(f"/memories/{memory['id']}/history", headers=tenant_a.admin_only)
        assert_forbidden(r)

    async def test_invalid_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await client.get("/memories/0/history", headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "memory_id")

    async def test_unknown_id(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        missing = uuid.uuid4()
        r = await client.get(f"/memories/{missing}/history", headers=tenant_a.memory)
        assert_error(r, 404, "not_found", str(missing))

    async def test_every_change_in_order(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, memory: dict[str, Any]
    ) -> None:
        mid = memory["id"]
        for text in ("Alice likes oolong tea", "Alice likes jasmine tea"):
            r = await client.patch(f"/memories/{mid}", json={"text": text}, headers=tenant_a.memory)
            assert r.status_code == 200, r.text
        await delete_memory(client, tenant_a, mid)

        r = await client.get(f"/memories/{mid}/history", headers=tenant_a.memory)

        assert r.status_code == 200, r.text
        history = r.json()
        assert [e["op"] for e in history] == ["ADD", "UPDATE", "UPDATE", "DELETE"]
        assert {e["actor"] for e in history} == {"api"}
        texts = [(e["before"] or {}).get("text") for e in history]
        assert texts == [
            None,
            "Alice likes green tea",
            "Alice likes oolong tea",
            "Alice likes jasmine tea",
        ]
        versions = [(e["after"] or {}).get("version") for e in history]
        assert versions == [1, 2, 3, None]
        assert [e["created_at"] for e in history] == sorted(e["created_at"] for e in history)


class TestEditsWaitingForTheLock:
    """A manual edit reads the memory again once it holds the user's lock, so what was
    committed while it waited is what it edits."""

    async def _held_while(
        self, runtime: Runtime, client: httpx.AsyncClient, edit: Any, change: Any
    ) -> tuple[httpx.Response, list[dict[str, Any]], TenantKeys]:
        tenant = await make_tenant(runtime, f"lock-{uuid.uuid4().hex[:6]}")
        r = await client.post("/users/race/memories", json={"text": "v0"}, headers=tenant.memory)
        assert r.status_code == 201, r.text
        memory_id = uuid.UUID(r.json()["id"])
        async with runtime.sessions() as other:
            memory = await memories_repository.get(other, tenant.tenant_id, memory_id)
            assert memory is not None
            await memories_repository.lock_user(other, tenant.tenant_id, memory.user_id)
            pending = asyncio.create_task(edit(client, memory_id, tenant))
            await asyncio.sleep(0.3)  # the request has read the row and waits for the lock
            assert not pending.done()
            await change(other, memory)
            await other.commit()
        response = await pending
        history = await client.get(f"/memories/{memory_id}/history", headers=tenant.memory)
        return response, history.json(), tenant

    async def test_a_delete_after_a_delete_is_a_conflict(
        self, committed_client: httpx.AsyncClient, committed_runtime: Runtime
    ) -> None:
        async def delete(client: httpx.AsyncClient, memory_id: uuid.UUID, tenant: TenantKeys):
            return await client.delete(f"/memories/{memory_id}", headers=tenant.memory)

        async def deleted_meanwhile(db: Any, memory: Any) -> None:
            await memories_repository.soft_delete(db, memory)

        response, history, _ = await self._held_while(
            committed_runtime, committed_client, delete, deleted_meanwhile
        )
        assert_error(response, 409, "conflict", "already deleted")
        assert [e["op"] for e in history] == ["ADD"]  # the other writer recorded no event

    async def test_an_update_builds_on_the_update_before_it(
        self, committed_client: httpx.AsyncClient, committed_runtime: Runtime
    ) -> None:
        async def update(client: httpx.AsyncClient, memory_id: uuid.UUID, tenant: TenantKeys):
            return await client.patch(
                f"/memories/{memory_id}", json={"speaker": "Bob"}, headers=tenant.memory
            )

        async def renamed_meanwhile(db: Any, memory: Any) -> None:
            await memories_repository.update_text(db, memory, text_="v1")

        response, history, _ = await self._held_while(
            committed_runtime, committed_client, update, renamed_meanwhile
        )
        assert response.status_code == 200, response.text
        # The update kept the text committed while it waited, and counted its version.
        assert response.json()["text"] == "v1" and response.json()["version"] == 3
        assert history[-1]["before"]["text"] == "v1"
