"""Manager training rows from what the API really logs: an answer given a gold answer credits
the Manager episodes that wrote the memories it selected, with its question and gold answer;
memories written by hand, answers with only a rating, and other tenants credit nothing."""

import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.training_jobs import repository
from tests.api.helpers import add_op, answered, extracted, turns_body
from tests.conftest import TenantKeys
from tests.fixtures.fake_llm import FakeLLM
from training.datasets import rows_from_episodes

QUESTION = "What is the puppy called?"


async def ask_and_grade(
    client: httpx.AsyncClient,
    tenant: TenantKeys,
    fake_llm: FakeLLM,
    user: str,
    feedback: dict[str, object],
) -> dict[str, str]:
    """Ingest one turn through the pipeline, add a memory by hand, ask a question whose answer
    selects both, and give the answer ``feedback``; returns the memories' texts by key."""
    fact = f"{user} adopted a puppy named Scout."
    fake_llm.push(extracted(fact), add_op())
    r = await client.post(
        f"/sessions/{user}-s1/turns",
        params={"wait": "true"},
        json=turns_body(user, "I adopted a puppy, Scout!"),
        headers=tenant.memory,
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        f"/users/{user}/memories", json={"text": f"{user} likes tea."}, headers=tenant.memory
    )
    assert r.status_code == 201, r.text
    fake_llm.push(answered("Scout", "m1", "m2"))
    r = await client.post(
        "/ask", json={"user_id": user, "question": QUESTION}, headers=tenant.memory
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/feedback",
        json={"episode_id": r.json()["episode_id"], **feedback},
        headers=tenant.memory,
    )
    assert r.status_code == 201, r.text
    return {"pipeline": fact, "manual": f"{user} likes tea."}


async def test_a_graded_answer_credits_the_manager_episode_that_wrote_what_it_used(
    client: httpx.AsyncClient,
    db: AsyncSession,
    tenant_a: TenantKeys,
    tenant_b: TenantKeys,
    fake_llm: FakeLLM,
) -> None:
    texts = await ask_and_grade(client, tenant_a, fake_llm, "alice", {"gold_answer": "Scout"})
    await ask_and_grade(client, tenant_a, fake_llm, "bob", {"rating": 1})  # no gold answer
    await ask_and_grade(client, tenant_b, fake_llm, "carol", {"gold_answer": "Scout"})

    episodes = await repository.episodes_with_feedback(db, tenant_a.tenant_id, "manager", 100)

    [credited] = episodes
    assert credited["agent"] == "manager"
    fact = credited["input"]["fact"]["text"]
    assert fact.endswith(texts["pipeline"])  # dated by the extractor; not the hand-written one
    assert credited["feedback"] == {"question": QUESTION, "gold_answer": "Scout"}
    assert uuid.UUID(credited["user_id"])  # recorded, so erasing alice withdraws the adapter
    [row] = rows_from_episodes(episodes, "manager")
    assert (row["question"], row["gold"]) == (QUESTION, "Scout")
    assert row["prompt"][-1]["content"].endswith(f"<fact>{fact}</fact>")
