"""POST /feedback: a gold answer or a rating on an episode, the reward for later training."""

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Feedback
from tests.api.helpers import answered, assert_error, assert_forbidden, assert_unauthorised
from tests.conftest import TenantKeys
from tests.fixtures.fake_llm import FakeLLM


@pytest.fixture
async def episode_id(client: httpx.AsyncClient, tenant_a: TenantKeys, fake_llm: FakeLLM) -> str:
    r = await client.post(
        "/users/alice/memories", json={"text": "Alice likes green tea"}, headers=tenant_a.memory
    )
    assert r.status_code == 201, r.text
    fake_llm.push(answered("green tea", "m1"))
    r = await client.post(
        "/ask",
        json={"user_id": "alice", "question": "What does Alice like?"},
        headers=tenant_a.memory,
    )
    assert r.status_code == 200, r.text
    episode: str = r.json()["episode_id"]
    return episode


class TestAddFeedback:
    async def test_unauthorised(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str], episode_id: str
    ) -> None:
        r = await client.post(
            "/feedback", json={"episode_id": episode_id, "rating": 1}, headers=bad_auth
        )
        assert_unauthorised(r)

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, episode_id: str
    ) -> None:
        r = await client.post(
            "/feedback", json={"episode_id": episode_id, "rating": 1}, headers=tenant_a.admin_only
        )
        assert_forbidden(r)

    @pytest.mark.parametrize(
        ("fields", "where"),
        [
            ({}, "send gold_answer, rating, or both"),
            ({"rating": None, "gold_answer": None}, "send gold_answer, rating, or both"),
            ({"rating": 2}, "rating"),
            ({"rating": -2}, "rating"),
            ({"rating": "good"}, "rating"),
            ({"gold_answer": " "}, "gold_answer"),
            ({"gold_answer": "x" * 2001}, "gold_answer"),
            ({"episode_id": "episode-1", "rating": 1}, "episode_id"),
        ],
    )
    async def test_invalid_input(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        episode_id: str,
        fields: dict[str, Any],
        where: str,
    ) -> None:
        body = {"episode_id": episode_id, **fields}
        r = await client.post("/feedback", json=body, headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", where)

    async def test_unknown_episode(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        missing = str(uuid.uuid4())
        r = await client.post(
            "/feedback", json={"episode_id": missing, "rating": 1}, headers=tenant_a.memory
        )
        assert_error(r, 404, "not_found", missing)

    @pytest.mark.parametrize(
        "fields",
        [{"gold_answer": "green tea"}, {"rating": -1}, {"gold_answer": "tea", "rating": 0}],
    )
    async def test_records_it(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        episode_id: str,
        db: AsyncSession,
        fields: dict[str, Any],
    ) -> None:
        r = await client.post(
            "/feedback", json={"episode_id": episode_id, **fields}, headers=tenant_a.memory
        )

        assert r.status_code == 201, r.text
        body = r.json()
        assert body["episode_id"] == episode_id
        assert body["gold_answer"] == fields.get("gold_answer")
        assert body["rating"] == fields.get("rating")
        assert body["created_at"] is not None
        [row] = (
            await db.scalars(select(Feedback).where(Feedback.episode_id == uuid.UUID(episode_id)))
        ).all()
        assert str(row.id) == body["id"] and row.tenant_id == tenant_a.tenant_id
        assert (row.gold_answer, row.rating) == (fields.get("gold_answer"), fields.get("rating"))
