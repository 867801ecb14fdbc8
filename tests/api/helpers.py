"""Helpers shared by the API tests: credentials, error-body checks, the scripted replies of the
three agents, and a user holding one row of every kind."""

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.runtime import Runtime
from app.models import Episode, Scope, User
from app.tenants import service as tenants
from tests.conftest import TenantKeys
from tests.fixtures.fake_llm import FakeLLM


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def revoked_key_headers(runtime: Runtime, tenant_id: uuid.UUID) -> dict[str, str]:
    """Headers carrying a key that had both scopes and has been revoked."""
    async with runtime.sessions() as db:
        issued = await tenants.create_key(
            db, tenant_id=tenant_id, name="revoked", scopes=[Scope.admin, Scope.memory]
        )
        await tenants.revoke_key(db, issued.key_id)
        await db.commit()
    return bearer(issued.plaintext)


def assert_error(response: httpx.Response, status: int, error: str, *fragments: str) -> None:
    """The response is the error family's body with a detail mentioning every fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"], body
    for fragment in fragments:
        assert fragment in body["detail"], body


def assert_unauthorised(response: httpx.Response) -> None:
    assert_error(response, 401, "unauthorized", "API key")


def assert_forbidden(response: httpx.Response) -> None:
    assert_error(response, 403, "forbidden", "'memory' scope")


def extracted(*facts: str) -> dict[str, Any]:
    """An extractor reply."""
    return {"facts": list(facts)}


def add_op() -> dict[str, Any]:
    """A Manager reply that adds the fact."""
    return {"operations": [{"op": "ADD", "id": "", "text": ""}]}


def answered(answer: str, *keys: str) -> dict[str, Any]:
    """An Answer Agent reply selecting the shown memories ``keys`` (m1, m2, ...)."""
    return {"selected": list(keys), "answer": answer}


def turns_body(user_id: str, *texts: str, speaker: str = "Alice") -> dict[str, Any]:
    return {"user_id": user_id, "turns": [{"speaker": speaker, "text": t} for t in texts]}


@dataclass
class Stored:
    """What ``populate`` stored for one user."""

    user_id: uuid.UUID
    external_id: str
    session_ids: list[str]
    memory_ids: list[str]
    episode_ids: list[uuid.UUID]
    job_ids: list[str]


async def populate(
    client: httpx.AsyncClient, tenant: TenantKeys, fake_llm: FakeLLM, db: AsyncSession, user: str
) -> Stored:
    """One row of every kind for ``user``: turns, an ingestion job processed inline (extractor
    and manager episodes, a memory and its history), a queued job, a manual memory, an answer
    episode and feedback on it."""
    fake_llm.push(extracted(f"{user} adopted a puppy."), add_op())
    r = await client.post(
        f"/sessions/{user}-s1/turns",
        params={"wait": "true"},
        json=turns_body(user, "I adopted a puppy."),
        headers=tenant.memory,
    )
    assert r.status_code == 200, r.text
    inline = r.json()
    r = await client.post(
        f"/sessions/{user}-s2/turns", json=turns_body(user, "Later."), headers=tenant.memory
    )
    assert r.status_code == 202, r.text
    queued_job = r.json()["ingestion_job_id"]
    r = await client.post(
        f"/users/{user}/memories", json={"text": f"{user} likes tea"}, headers=tenant.memory
    )
    assert r.status_code == 201, r.text
    manual = r.json()["id"]
    fake_llm.push(answered("a puppy", "m1"))
    r = await client.post(
        "/ask", json={"user_id": user, "question": "What did they adopt?"}, headers=tenant.memory
    )
    assert r.status_code == 200, r.text
    answer_episode = r.json()["episode_id"]
    r = await client.post(
        "/feedback",
        json={"episode_id": answer_episode, "gold_answer": "a puppy"},
        headers=tenant.memory,
    )
    assert r.status_code == 201, r.text

    row = await db.scalar(
        select(User).where(User.tenant_id == tenant.tenant_id, User.external_id == user)
    )
    assert row is not None
    episode_ids = list(
        (await db.scalars(select(Episode.id).where(Episode.user_id == row.id))).all()
    )
    assert uuid.UUID(answer_episode) in episode_ids
    return Stored(
        user_id=row.id,
        external_id=user,
        session_ids=[f"{user}-s1", f"{user}-s2"],
        memory_ids=[inline["operations"][0]["memory_id"], manual],
        episode_ids=episode_ids,
        job_ids=[inline["ingestion_job_id"], queued_job],
    )
