"""POST /ask: retrieve the user's memories, let the Answer Agent select and answer."""

import re
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import Upstream
from app.models import Episode
from tests.api.helpers import answered, assert_error, assert_forbidden, assert_unauthorised
from tests.conftest import TenantKeys
from tests.fixtures.fake_llm import FakeCall, FakeLLM

PUPPY = "Alice adopted a puppy named Scout"


def shown_keys(call: FakeCall) -> dict[str, str]:
    """Memory key -> line, of the memories shown in the question's prompt."""
    memories = call.last_user.split("<memories>")[1].split("</memories>")[0]
    return {
        line.split(" ", 1)[0]: line
        for line in memories.strip().splitlines()
        if re.match(r"^m\d+ ", line)
    }


def select_containing(word: str, answer: str) -> Any:
    """A responder that selects the shown memory mentioning ``word``."""

    def respond(call: FakeCall) -> dict[str, Any]:
        keys = [key for key, line in shown_keys(call).items() if word in line]
        return answered(answer, *keys)

    return respond


@pytest.fixture
async def memories(client: httpx.AsyncClient, tenant_a: TenantKeys) -> list[dict[str, Any]]:
    texts = [PUPPY, "Alice works as a nurse in Boston", "Alice's favourite colour is green"]
    added = []
    for text in texts:
        r = await client.post(
            "/users/alice/memories",
            json={"text": text, "speaker": "Alice", "occurred_at": "2023-05-08T00:00:00Z"},
            headers=tenant_a.memory,
        )
        assert r.status_code == 201, r.text
        added.append(r.json())
    return added


def ask_body(question: str = "What is the name of Alice's puppy?", **fields: Any) -> dict[str, Any]:
    return {"user_id": "alice", "question": question, **fields}


class TestAsk:
    async def test_unauthorised(
        self, client: httpx.AsyncClient, bad_auth: dict[str, str], fake_llm: FakeLLM
    ) -> None:
        assert_unauthorised(await client.post("/ask", json=ask_body(), headers=bad_auth))
        assert fake_llm.calls == []

    async def test_admin_only_key_is_forbidden(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        assert_forbidden(await client.post("/ask", json=ask_body(), headers=tenant_a.admin_only))

    @pytest.mark.parametrize(
        ("body", "where"),
        [
            ({"user_id": "alice"}, "question"),
            (ask_body("  "), "question"),
            ({"question": "why?"}, "user_id"),
            ({**ask_body(), "user_id": "a b"}, "user_id"),
            (ask_body(top_k=0), "top_k"),
            (ask_body(top_k=61), "top_k"),
            (ask_body(top_k="many"), "top_k"),
            (ask_body(answer_adapter="newest"), "answer_adapter"),
        ],
    )
    async def test_invalid_input(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memories: list[dict[str, Any]],
        body: dict[str, Any],
        where: str,
    ) -> None:
        assert_error(
            await client.post("/ask", json=body, headers=tenant_a.memory),
            422,
            "invalid_input",
            where,
        )

    async def test_question_too_long(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memories: list[dict[str, Any]],
        settings: Settings,
        fake_llm: FakeLLM,
    ) -> None:
        limit = settings.limits.max_query_chars
        r = await client.post("/ask", json=ask_body("q" * (limit + 1)), headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "question", str(limit))
        assert fake_llm.calls == []

    async def test_unknown_user(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, fake_llm: FakeLLM
    ) -> None:
        r = await client.post("/ask", json=ask_body(user_id="nobody"), headers=tenant_a.memory)
        assert_error(r, 404, "not_found", "'nobody'")
        assert fake_llm.calls == []

    async def test_unknown_adapter(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memories: list[dict[str, Any]],
        fake_llm: FakeLLM,
    ) -> None:
        missing = str(uuid.uuid4())
        r = await client.post(
            "/ask", json=ask_body(answer_adapter=missing), headers=tenant_a.memory
        )
        assert_error(r, 404, "not_found", missing)
        assert fake_llm.calls == []

    async def test_answers_from_selected_memories(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memories: list[dict[str, Any]],
        fake_llm: FakeLLM,
        db: AsyncSession,
    ) -> None:
        fake_llm.responder = select_containing("puppy", "Scout")

        r = await client.post("/ask", json=ask_body(), headers=tenant_a.memory)

        assert r.status_code == 200, r.text
        body = r.json()
        assert body["answer"] == "Scout"
        assert body["memories"] == [
            {
                "id": memories[0]["id"],
                "text": PUPPY,
                "speaker": "Alice",
                "occurred_at": "2023-05-08T00:00:00Z",
            }
        ]
        assert body["retrieved"] == 3
        assert body["model"] == "fake-model" and body["adapter"] is None
        [call] = fake_llm.calls
        assert call.adapter is None
        assert "What is the name of Alice's puppy?" in call.last_user
        assert len(shown_keys(call)) == 3
        assert "8 May 2023" in call.last_user

        episode = await db.get(Episode, uuid.UUID(body["episode_id"]))
        assert episode is not None
        assert episode.tenant_id == tenant_a.tenant_id and episode.agent == "answer"
        assert episode.input["question"] == "What is the name of Alice's puppy?"
        assert len(episode.input["memories"]) == 3
        assert episode.parsed is not None and episode.parsed["answer"] == "Scout"
        assert episode.error is None and episode.model == "fake-model"

    async def test_top_k_bounds_retrieval(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memories: list[dict[str, Any]],
        fake_llm: FakeLLM,
    ) -> None:
        fake_llm.responder = select_containing("puppy", "Scout")

        r = await client.post("/ask", json=ask_body(top_k=1), headers=tenant_a.memory)

        assert r.status_code == 200, r.text
        assert r.json()["retrieved"] == 1
        assert [m["text"] for m in r.json()["memories"]] == [PUPPY]
        assert len(shown_keys(fake_llm.calls[0])) == 1

    async def test_user_without_memories(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, fake_llm: FakeLLM
    ) -> None:
        await client.post(
            "/sessions/s1/turns",
            json={"user_id": "alice", "turns": [{"speaker": "Alice", "text": "hello"}]},
            headers=tenant_a.memory,
        )
        fake_llm.push(answered("I don't know"))

        r = await client.post("/ask", json=ask_body(), headers=tenant_a.memory)

        assert r.status_code == 200, r.text
        assert r.json()["answer"] == "I don't know"
        assert r.json()["memories"] == [] and r.json()["retrieved"] == 0

    async def test_unusable_model_output(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memories: list[dict[str, Any]],
        fake_llm: FakeLLM,
        db: AsyncSession,
    ) -> None:
        fake_llm.push("I think it is Scout")

        r = await client.post("/ask", json=ask_body(), headers=tenant_a.memory)

        assert_error(r, 502, "bad_upstream_response", "episode")
        episode_id = uuid.UUID(r.json()["detail"].rsplit("episode ", 1)[1])
        episode = await db.get(Episode, episode_id)
        assert episode is not None and episode.error is not None
        assert episode.raw_output == "I think it is Scout"

    async def test_unreachable_model(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        memories: list[dict[str, Any]],
        fake_llm: FakeLLM,
    ) -> None:
        fake_llm.push(Upstream("answer model timed out"))
        r = await client.post("/ask", json=ask_body(), headers=tenant_a.memory)
        assert_error(r, 503, "upstream_unavailable", "answer model timed out")


class TestAskRetrieval:
    """What the Answer Agent is shown when the user's memories have speakers."""

    @pytest.fixture
    async def conversation(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        for speaker, text in [
            ("Caroline", "Caroline went to a support group"),
            ("Caroline", "Caroline is researching adoption agencies"),
            ("Melanie", "Melanie painted a sunrise"),
            ("Melanie", "Melanie ran a charity race"),
        ]:
            r = await client.post(
                "/users/alice/memories",
                json={"text": text, "speaker": speaker},
                headers=tenant_a.memory,
            )
            assert r.status_code == 201, r.text

    async def test_both_speakers_are_shown(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        conversation: None,
        fake_llm: FakeLLM,
    ) -> None:
        fake_llm.responder = select_containing("sunrise", "a sunrise")

        r = await client.post(
            "/ask", json=ask_body("What did Melanie paint?"), headers=tenant_a.memory
        )

        assert r.status_code == 200, r.text
        assert r.json()["retrieved"] == 4
        assert [m["text"] for m in r.json()["memories"]] == ["Melanie painted a sunrise"]

    async def test_memories_without_a_speaker_are_shown(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        conversation: None,
        fake_llm: FakeLLM,
    ) -> None:
        r = await client.post(
            "/users/alice/memories",
            json={"text": "Caroline's dog is called Oscar"},
            headers=tenant_a.memory,
        )
        assert r.status_code == 201, r.text
        fake_llm.responder = select_containing("Oscar", "Oscar")

        r = await client.post(
            "/ask", json=ask_body("What is the name of Caroline's dog?"), headers=tenant_a.memory
        )

        assert r.status_code == 200, r.text
        assert "Caroline's dog is called Oscar" in fake_llm.calls[-1].last_user
        assert r.json()["retrieved"] == 5
        assert [m["text"] for m in r.json()["memories"]] == ["Caroline's dog is called Oscar"]

    @pytest.mark.parametrize("top_k", [1, 3])
    async def test_top_k_is_filled(
        self,
        client: httpx.AsyncClient,
        tenant_a: TenantKeys,
        conversation: None,
        fake_llm: FakeLLM,
        top_k: int,
    ) -> None:
        fake_llm.responder = lambda call: answered("a support group")

        r = await client.post(
            "/ask",
            json=ask_body("Where did Caroline go?", top_k=top_k),
            headers=tenant_a.memory,
        )

        assert r.status_code == 200, r.text
        assert r.json()["retrieved"] == top_k
        assert len(shown_keys(fake_llm.calls[-1])) == top_k
