"""Tenant isolation: another tenant's ids, by any route, are not found; nothing of the owner's
data shows in a response and nothing of it changes.

User and session ids are external ids scoped to a tenant, so tenant B naming "alice" names its
own (possibly empty) user, never tenant A's."""

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.api.helpers import Stored, answered, assert_error, populate, turns_body
from tests.conftest import TenantKeys
from tests.fixtures.fake_llm import FakeLLM


async def view_of(client: httpx.AsyncClient, tenant: TenantKeys, stored: Stored) -> dict[str, Any]:
    """Everything the owner can read about the user, through the API."""

    async def get(path: str) -> Any:
        r = await client.get(path, headers=tenant.memory)
        assert r.status_code == 200, r.text
        return r.json()

    user = stored.external_id
    return {
        "memories": await get(f"/users/{user}/memories"),
        "each": [await get(f"/memories/{m}") for m in stored.memory_ids],
        "history": [await get(f"/memories/{m}/history") for m in stored.memory_ids],
        "turns": [await get(f"/sessions/{s}/turns") for s in stored.session_ids],
        "jobs": [await get(f"/ingestions/{j}") for j in stored.job_ids],
    }


def secrets_of(view: dict[str, Any], stored: Stored) -> set[str]:
    """Strings that must never appear in another tenant's responses."""
    found = {*stored.memory_ids, *stored.job_ids, *(str(e) for e in stored.episode_ids)}
    found |= {m["text"] for m in view["each"]}
    for page in view["turns"]:
        found |= {t["id"] for t in page["items"]} | {t["text"] for t in page["items"]}
    return found


def assert_hidden(response: httpx.Response, secrets: set[str], asked: object = None) -> None:
    """Not found, and nothing of the owner's data in the body except the id that was asked for."""
    assert_error(response, 404, "not_found")
    leaked = {s for s in secrets - {str(asked)} if s in response.text}
    assert not leaked, response.text


@pytest.fixture
async def alice_of_a(
    client: httpx.AsyncClient, tenant_a: TenantKeys, fake_llm: FakeLLM, db: AsyncSession
) -> Stored:
    return await populate(client, tenant_a, fake_llm, db, "alice")


@pytest.fixture(params=["memory", "admin"])
def b_headers(request: pytest.FixtureRequest, tenant_b: TenantKeys) -> dict[str, str]:
    """Tenant B's memory key, and its key with every scope: scopes never reach across tenants."""
    return {"memory": tenant_b.memory, "admin": tenant_b.admin}[request.param]


class TestTenantIsolation:
    async def test_reads_of_another_tenants_ids_are_not_found(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        b_headers: dict[str, str],
        alice_of_a: Stored,
        fake_llm: FakeLLM,
    ) -> None:
        before = await view_of(client, tenant_a, alice_of_a)
        secrets = secrets_of(before, alice_of_a)
        calls = len(fake_llm.calls)

        for session_id in alice_of_a.session_ids:
            r = await client.get(f"/sessions/{session_id}/turns", headers=b_headers)
            assert_hidden(r, secrets)
        for job_id in alice_of_a.job_ids:
            r = await client.get(f"/ingestions/{job_id}", headers=b_headers)
            assert_hidden(r, secrets, job_id)
        for memory_id in alice_of_a.memory_ids:
            r = await client.get(f"/memories/{memory_id}", headers=b_headers)
            assert_hidden(r, secrets, memory_id)
            r = await client.get(f"/memories/{memory_id}/history", headers=b_headers)
            assert_hidden(r, secrets, memory_id)
        assert_hidden(await client.get("/users/alice/memories", headers=b_headers), secrets)
        r = await client.get("/users/alice/memories", params={"query": "puppy"}, headers=b_headers)
        assert_hidden(r, secrets)
        r = await client.post(
            "/ask",
            json={"user_id": "alice", "question": "What did alice adopt?"},
            headers=b_headers,
        )
        assert_hidden(r, secrets)

        assert len(fake_llm.calls) == calls
        assert await view_of(client, tenant_a, alice_of_a) == before

    async def test_writes_to_another_tenants_ids_are_not_found(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        b_headers: dict[str, str],
        alice_of_a: Stored,
    ) -> None:
        before = await view_of(client, tenant_a, alice_of_a)
        secrets = secrets_of(before, alice_of_a)

        for memory_id in alice_of_a.memory_ids:
            r = await client.patch(
                f"/memories/{memory_id}", json={"text": "overwritten by B"}, headers=b_headers
            )
            assert_hidden(r, secrets, memory_id)
            r = await client.delete(f"/memories/{memory_id}", headers=b_headers)
            assert_hidden(r, secrets, memory_id)
        for episode_id in alice_of_a.episode_ids:
            r = await client.post(
                "/feedback", json={"episode_id": str(episode_id), "rating": -1}, headers=b_headers
            )
            assert_hidden(r, secrets, episode_id)
        assert_hidden(await client.delete("/users/alice", headers=b_headers), secrets)

        assert await view_of(client, tenant_a, alice_of_a) == before

    async def test_the_same_external_ids_name_separate_data(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        tenant_b: TenantKeys,
        b_headers: dict[str, str],
        alice_of_a: Stored,
        fake_llm: FakeLLM,
        db: AsyncSession,
    ) -> None:
        before = await view_of(client, tenant_a, alice_of_a)
        secrets = secrets_of(before, alice_of_a)
        [a_session, _] = alice_of_a.session_ids

        # B writes under A's user and session ids: it gets its own user and session.
        r = await client.post(
            f"/sessions/{a_session}/turns", json=turns_body("alice", "B's turn"), headers=b_headers
        )
        assert r.status_code == 202, r.text
        b_job = r.json()["ingestion_job_id"]
        r = await client.post(
            "/users/alice/memories", json={"text": "B's alice keeps bees"}, headers=b_headers
        )
        assert r.status_code == 201, r.text
        b_memory = r.json()
        r = await client.post(
            f"/sessions/{a_session}/turns", json=turns_body("bob", "hi"), headers=b_headers
        )
        assert_error(r, 409, "conflict")  # the session is B's alice's now, not A's

        r = await client.get(f"/sessions/{a_session}/turns", headers=b_headers)
        assert r.status_code == 200, r.text
        assert [(t["seq"], t["text"]) for t in r.json()["items"]] == [(0, "B's turn")]
        for response in (
            await client.get("/users/alice/memories", headers=b_headers),
            await client.get("/users/alice/memories", params={"query": "puppy"}, headers=b_headers),
        ):
            assert response.status_code == 200, response.text
            assert [m["id"] for m in response.json()["items"]] == [b_memory["id"]]
            assert not {s for s in secrets if s in response.text}
        r = await client.get(f"/ingestions/{b_job}", headers=b_headers)
        assert r.status_code == 200 and r.json()["turn_count"] == 1

        # Only B's alice's memories are shown to the Answer Agent.
        fake_llm.push(answered("bees", "m1"))
        r = await client.post(
            "/ask",
            json={"user_id": "alice", "question": "What did alice adopt?"},
            headers=b_headers,
        )
        assert r.status_code == 200, r.text
        assert [m["id"] for m in r.json()["memories"]] == [b_memory["id"]]
        prompt = fake_llm.calls[-1].prompt
        assert "B's alice keeps bees" in prompt
        assert not {s for s in secrets if s in prompt}

        # B's ids are as foreign to A as A's are to B.
        r = await client.get(f"/memories/{b_memory['id']}", headers=tenant_a.memory)
        assert_hidden(r, {"B's alice keeps bees"})
        assert_hidden(await client.get(f"/ingestions/{b_job}", headers=tenant_a.memory), set())

        # Erasing B's alice leaves A's alice as it was.
        assert (await client.delete("/users/alice", headers=b_headers)).status_code == 204
        assert await view_of(client, tenant_a, alice_of_a) == before
        r = await client.get("/users/alice/memories", headers=b_headers)
        assert_error(r, 404, "not_found")

    async def test_unknown_random_ids_look_the_same_as_foreign_ones(
        self, client: httpx.AsyncClient, tenant_b: TenantKeys, alice_of_a: Stored
    ) -> None:
        foreign = await client.get(f"/memories/{alice_of_a.memory_ids[0]}", headers=tenant_b.memory)
        missing = uuid.uuid4()
        unknown = await client.get(f"/memories/{missing}", headers=tenant_b.memory)
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.json()["detail"].replace(alice_of_a.memory_ids[0], "ID") == unknown.json()[
            "detail"
        ].replace(str(missing), "ID")
