"""The targets: the service over HTTP (a mock transport speaking the API contract) and the
two baselines with a scripted model and a bag-of-words embedder."""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.core.errors import Upstream
from app.llm.backend import Completion
from tests.conftest import SHARED_DATA
from training.eval.loaders import Conversation, Session, Turn, load_locomo
from training.eval.targets import (
    QUESTION_ROOM_CHARS,
    FullContextTarget,
    PlainRagTarget,
    ServiceRejected,
    ServiceTarget,
    TargetError,
    service_client,
)

CONV30 = SHARED_DATA / "locomo" / "locomo_val_conv30.json"
_MEMORY_LINE = re.compile(r"^m\d+ ", re.MULTILINE)


def shown_memories(messages: list[dict[str, str]]) -> list[str]:
    """The memory lines of the real question (the last user message) in an answer prompt."""
    content = messages[-1]["content"]
    block = content.split("<memories>\n")[1].split("\n</memories>")[0]
    return [line for line in block.splitlines() if _MEMORY_LINE.match(line)]


class ScriptedLLM:
    """Selects the first memory shown and answers with its text, or fails when told to."""

    base_model = "scripted-base"

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.calls: list[tuple[list[dict[str, str]], str | None]] = []

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None = None,
        adapter: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 256,
    ) -> Completion:
        if self.down:
            raise Upstream("model server unreachable")
        self.calls.append((messages, adapter))
        shown = shown_memories(messages)
        answer = shown[0].split(" ", 1)[1] if shown else "nothing"
        parsed = {"selected": ["m1"] if shown else [], "answer": answer[:100]}
        return Completion(json.dumps(parsed), parsed, self.base_model, adapter, 0, 0, 1.0)

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def loaded_adapters(self) -> set[str]:
        return set()

    async def ready(self) -> None:
        if self.down:
            raise Upstream("model server unreachable")

    async def close(self) -> None: ...


class BagOfWordsEmbedder:
    """One dimension per known word: similarity is shared vocabulary."""

    def __init__(self, vocabulary: list[str]) -> None:
        self.vocabulary = vocabulary
        self.calls: list[int] = []

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(len(texts))
        return [
            [1.0 if word in text.lower() else 0.0 for word in self.vocabulary] + [0.01]
            for text in texts
        ]


def tiny_conversation(session_sizes: tuple[int, ...] = (6,)) -> Conversation:
    topics = ["pottery class", "dog named Max", "trip to Rome", "new guitar", "baking bread"]
    start = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    sessions = []
    for s, size in enumerate(session_sizes, start=1):
        at = start + timedelta(days=7 * s)
        turns = [
            Turn(
                speaker=("Ann", "Bob")[i % 2],
                text=f"I talk about my {topics[i % len(topics)]} ({s}.{i})",
                dia_id=f"D{s}:{i + 1}",
                occurred_at=at + timedelta(seconds=i),
            )
            for i in range(size)
        ]
        sessions.append(Session(index=s, occurred_at=at, turns=turns, observations=[]))
    return Conversation("tiny", "Ann", "Bob", sessions, qa=[])


class TestServiceTarget:
    async def test_ingests_each_session_in_chunks_with_wait(self) -> None:
        requests: list[httpx.Request] = []

        def service(request: httpx.Request) -> httpx.Response:
            requests.append(request)
            n = len(json.loads(request.content)["turns"])
            return httpx.Response(
                200,
                json={
                    "turn_ids": list(range(n)),
                    "ingestion_job_id": "j",
                    "status": "succeeded",
                    "operations": [{"op": "ADD"}] * 2,
                },
            )

        client = httpx.AsyncClient(
            transport=httpx.MockTransport(service),
            base_url="http://svc",
            headers={"Authorization": "Bearer key"},
        )
        target = ServiceTarget("base", client, manager_adapter="base", answer_adapter="base")
        report = await target.prepare(tiny_conversation((3, 250)), "user-1")

        assert [len(json.loads(r.content)["turns"]) for r in requests] == [3, 200, 50]
        assert [r.url.path for r in requests] == [
            "/sessions/user-1-s1/turns",
            "/sessions/user-1-s2/turns",
            "/sessions/user-1-s2/turns",
        ]
        assert all(r.url.params["wait"] == "true" for r in requests)
        assert all(r.headers["Authorization"] == "Bearer key" for r in requests)
        body = json.loads(requests[0].content)
        assert body["user_id"] == "user-1" and body["manager_adapter"] == "base"
        assert body["turns"][1] == {
            "speaker": "Bob",
            "text": "I talk about my dog named Max (1.1)",
            "occurred_at": "2023-05-15T13:56:01+00:00",
        }
        assert report.operations == 6
        await client.aclose()

    async def test_a_failed_ingestion_job_is_a_target_error(self) -> None:
        failed = httpx.MockTransport(
            lambda r: httpx.Response(200, json={"status": "failed", "ingestion_job_id": "j9"})
        )
        async with httpx.AsyncClient(transport=failed, base_url="http://svc") as client:
            target = ServiceTarget("base", client, manager_adapter="base", answer_adapter="base")
            with pytest.raises(TargetError, match="j9"):
                await target.prepare(tiny_conversation(), "u")

    async def test_asks_with_the_answer_adapter_and_reads_the_reply(self) -> None:
        seen: list[dict[str, Any]] = []

        def ask(request: httpx.Request) -> httpx.Response:
            seen.append(json.loads(request.content))
            memory = {
                "id": "8c4e",
                "text": "Ann has a dog named Max",
                "speaker": "Ann",
                "occurred_at": "2023-05-15T13:56:01+00:00",
            }
            return httpx.Response(
                200,
                json={
                    "answer": "Max",
                    "memories": [memory],
                    "episode_id": 42,
                    "model": "smol",
                    "adapter": "ad-7",
                },
            )

        async with httpx.AsyncClient(transport=httpx.MockTransport(ask), base_url="http://s") as c:
            target = ServiceTarget(
                "trained-both", c, manager_adapter="ad-3", answer_adapter="ad-7", top_k=30
            )
            reply = await target.answer(tiny_conversation(), "u", "What is the dog's name?")
        assert seen == [
            {
                "user_id": "u",
                "question": "What is the dog's name?",
                "top_k": 30,
                "answer_adapter": "ad-7",
            }
        ]
        assert (reply.answer, reply.model, reply.adapter, reply.episode_id) == (
            "Max",
            "smol",
            "ad-7",
            "42",
        )
        assert reply.selected[0].text == "Ann has a dog named Max"
        assert target.bank_key == "service-extractor-base-manager-ad-3"
        assert target.describe()["answer_adapter"] == "ad-7"

    async def test_server_errors_are_retried_then_reported(self) -> None:
        calls = 0

        def flaky(request: httpx.Request) -> httpx.Response:
            nonlocal calls
            calls += 1
            if calls < 3:
                return httpx.Response(503, json={"error": "upstream_unavailable"})
            return httpx.Response(200, json={"answer": "ok", "memories": []})

        async with httpx.AsyncClient(
            transport=httpx.MockTransport(flaky), base_url="http://s"
        ) as c:
            target = ServiceTarget(
                "base", c, manager_adapter="base", answer_adapter="base", retry_backoff_s=0
            )
            assert (await target.answer(tiny_conversation(), "u", "q")).answer == "ok"
            assert calls == 3
            calls = -10
            with pytest.raises(TargetError, match="503"):
                await target.answer(tiny_conversation(), "u", "q")

    async def test_a_refusal_stops_the_run(self) -> None:
        refuse = httpx.MockTransport(lambda r: httpx.Response(401, json={"error": "unauthorized"}))
        async with httpx.AsyncClient(transport=refuse, base_url="http://s") as c:
            target = ServiceTarget("base", c, manager_adapter="base", answer_adapter="base")
            with pytest.raises(ServiceRejected, match="401"):
                await target.answer(tiny_conversation(), "u", "q")

    async def test_service_client_for_a_remote_server(self) -> None:
        client = service_client(base_url="http://memory:8080", api_key="k", timeout_s=99)
        assert client.headers["Authorization"] == "Bearer k"
        assert client.timeout.read == 99
        await client.aclose()
        with pytest.raises(ValueError, match="base_url"):
            service_client(api_key="k")


class TestFullContextTarget:
    async def test_shows_every_turn_when_it_fits(self) -> None:
        (conversation,) = load_locomo(CONV30)
        llm = ScriptedLLM()
        target = FullContextTarget(llm, context_tokens=200_000)
        await target.prepare(conversation, "u")
        reply = await target.answer(conversation, "u", "Where does Gina work?")
        ((messages, adapter),) = llm.calls
        assert len(shown_memories(messages)) == 369 and adapter is None
        assert reply.note is None
        assert reply.selected[0].id == "D1:1"
        assert reply.model == "scripted-base"

    async def test_keeps_the_latest_turns_that_fit_and_says_so(self) -> None:
        (conversation,) = load_locomo(CONV30)
        llm = ScriptedLLM()
        target = FullContextTarget(llm, context_tokens=2000, chars_per_token=3.0)
        await target.prepare(conversation, "u")
        reply = await target.answer(conversation, "u", "Where does Gina work?")
        ((messages, _),) = llm.calls
        shown = shown_memories(messages)
        assert 0 < len(shown) < 369
        assert sum(len(m["content"]) for m in messages) <= (2000 - 176) * 3.0
        last_turn = conversation.turns[-1]
        assert last_turn.text.split()[0] in shown[-1]
        assert reply.note == (
            f"context truncated to the last {len(shown)} of 369 turns (~2000-token window)"
        )
        assert reply.selected[0].id == conversation.turns[-len(shown)].dia_id

    async def test_every_short_question_gets_the_same_turns(self) -> None:
        """So a model server can reuse the cache of the turns from one question to the next."""
        (conversation,) = load_locomo(CONV30)
        llm = ScriptedLLM()
        target = FullContextTarget(llm, context_tokens=2000, chars_per_token=3.0)
        await target.prepare(conversation, "u")
        for question in ("When?", "Where does Gina work, and since when has she worked there?"):
            await target.answer(conversation, "u", question)
        (first, _), (second, _) = llm.calls
        assert shown_memories(first) == shown_memories(second)
        long_question = "Why " * (QUESTION_ROOM_CHARS // 2)
        await target.answer(conversation, "u", long_question)
        assert len(shown_memories(llm.calls[-1][0])) < len(shown_memories(first))

    async def test_an_unreachable_model_is_a_target_error(self) -> None:
        target = FullContextTarget(ScriptedLLM(down=True))
        await target.prepare(tiny_conversation(), "u")
        with pytest.raises(TargetError, match="unreachable"):
            await target.answer(tiny_conversation(), "u", "q")

    def test_the_window_must_hold_the_answer(self) -> None:
        with pytest.raises(ValueError, match="context_tokens"):
            FullContextTarget(ScriptedLLM(), context_tokens=100)


class TestPlainRagTarget:
    async def test_retrieves_the_most_similar_turns_per_speaker(self) -> None:
        conversation = tiny_conversation((10,))
        embedder = BagOfWordsEmbedder(["pottery", "dog", "rome", "guitar", "bread"])
        llm = ScriptedLLM()
        target = PlainRagTarget(llm, embedder, top_k=4, embed_batch=4)
        await target.prepare(conversation, "u")
        assert embedder.calls == [4, 4, 2]

        reply = await target.answer(conversation, "u", "What is the name of the dog?")
        ((messages, _),) = llm.calls
        shown = shown_memories(messages)
        assert len(shown) == 4
        # turns 1 and 6 talk about the dog, and both are Bob's: they lead; Ann gets her 2 too
        assert "dog named Max (1.1)" in shown[0] or "dog named Max (1.6)" in shown[0]
        assert sum("dog" in line for line in shown) == 2
        assert sum("Ann:" in line for line in shown) == 2
        assert reply.selected[0].id in {"D1:2", "D1:7"}
        assert target.describe() == {"kind": "rag", "answer_adapter": "base", "top_k": 4}
