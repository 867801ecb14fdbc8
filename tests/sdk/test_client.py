"""memory_r1.client against the real app on a socket (real database and embedder, a scripted
LLM): every call a user makes, both clients, retries and the error family."""

import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.core.config import Settings
from app.core.errors import Upstream
from app.models import Scope
from memory_r1.client import (
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConnectionFailed,
    InvalidRequest,
    MemoryR1Error,
    NotFoundError,
    PermissionDenied,
    RateLimited,
    ServerError,
    Turn,
)
from tests.api.helpers import add_op, answered, extracted
from tests.fixtures.served import Served, served_app


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[Served]:
    with served_app(settings) as served:
        yield served


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    with Client(served.base_url, served.key, backoff_s=0.01) as client:
        yield client


def test_a_users_day(client: Client, served: Served) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    served.llm.push(extracted("Alice adopted a dog named Buddy."), add_op())
    accepted = client.add_turns(
        "s1", user, [Turn(speaker="Alice", text="I adopted a dog named Buddy.")], wait=True
    )
    assert accepted.status == "succeeded"
    assert accepted.operations and accepted.operations[0]["op"] == "ADD"

    hits = client.memories(user, query="dog").items
    assert [m.text.split(", ", 1)[1] for m in hits] == ["Alice adopted a dog named Buddy."]
    assert hits[0].score is not None
    history = client.memory_history(hits[0].id)
    assert [e.op for e in history] == ["ADD"]
    assert history[0].episode_id is not None
    decision = client.episode(history[0].episode_id)
    assert decision.agent == "manager" and "Buddy" in decision.input["fact"]["text"]

    jobs = client.list_ingestions(user).items
    assert [j.id for j in jobs] == [accepted.ingestion_job_id]
    assert [t.text for t in client.ingestion_turns(accepted.ingestion_job_id)] == [
        "I adopted a dog named Buddy."
    ]
    assert client.ingestion(accepted.ingestion_job_id).processed_turns == 1
    assert client.list_turns("s1").items[0].speaker == "Alice"

    served.llm.push(answered("Buddy", "m1"))
    reply = client.ask(user, "What is my dog called?")
    assert reply.answer == "Buddy" and [m.text for m in reply.memories] == [hits[0].text]
    given = client.feedback(reply.episode_id, gold_answer="Buddy", rating=1)
    assert given.episode_id == reply.episode_id

    edited = client.update_memory(hits[0].id, text="Alice has two dogs, Buddy and Scout.")
    assert edited.version == 2
    added = client.add_memory(user, "Alice likes tea", speaker="Alice")
    client.delete_memory(added.id)
    assert client.memory(added.id).deleted_at is not None
    assert user in [u.user_id for u in client.users().items]

    client.erase_user(user)
    with pytest.raises(NotFoundError):
        client.memory(hits[0].id)


def test_admin_routes(client: Client) -> None:
    assert "agent" in client.training_params()
    assert client.adapters() == [] and client.adapters("answer") == []
    assert client.training_jobs() == []
    assert client.ready()["status"] == "ready"


def test_errors_carry_the_servers_error_and_detail(client: Client, served: Served) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFoundError) as found:
        client.memory(missing)
    assert found.value.status_code == 404 and found.value.error == "not_found"
    assert str(missing) in found.value.detail
    with pytest.raises(InvalidRequest) as invalid:
        client.ask("alice", "   ")
    assert invalid.value.status_code == 422 and "question" in invalid.value.detail
    with Client(served.base_url, "mr1_not_a_key") as stranger, pytest.raises(AuthenticationError):
        stranger.users()
    memory_only = served.issue_key(Scope.memory)
    with Client(served.base_url, memory_only) as agent, pytest.raises(PermissionDenied) as denied:
        agent.training_jobs()
    assert "'admin' scope" in denied.value.detail
    assert issubclass(PermissionDenied, APIError) and issubclass(APIError, MemoryR1Error)


def test_a_model_outage_is_retried_then_raised(client: Client, served: Served) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    client.add_memory(user, "Alice has a dog, Buddy.")
    served.llm.push(Upstream("model endpoint down"), answered("Buddy", "m1"))
    assert client.ask(user, "What is my dog called?").answer == "Buddy"

    served.llm.push(*[Upstream("model endpoint down")] * 3)
    with Client(served.base_url, served.key, max_retries=2, backoff_s=0.01) as impatient:
        with pytest.raises(ServerError) as down:
            impatient.ask(user, "What is my dog called?")
    assert down.value.status_code == 503 and "model endpoint down" in down.value.detail


def test_rate_limits_are_retried_after_the_servers_delay() -> None:
    # The service itself does not rate-limit; a proxy in front of it may.
    seen: list[float] = []

    def limited(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        if len(seen) < 3:
            return httpx.Response(
                429, headers={"Retry-After": "0"}, json={"error": "rate_limited", "detail": "slow"}
            )
        return httpx.Response(200, json={"status": "ready", "schema": "head"})

    transport = httpx.MockTransport(limited)
    with Client("http://proxy", "k", transport=transport) as client:
        assert client.ready()["status"] == "ready"
    assert len(seen) == 3
    with Client("http://proxy", "k", transport=transport, max_retries=0) as client:
        seen.clear()
        with pytest.raises(RateLimited) as limited_error:
            client.ready()
    assert limited_error.value.detail == "slow"


def test_key_and_url_from_the_environment(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMR1_API_KEY", served.key)
    monkeypatch.setenv("MEMR1_URL", served.base_url)
    with Client() as client:
        assert client.ready()["status"] == "ready"
    monkeypatch.delenv("MEMR1_API_KEY")
    with pytest.raises(MemoryR1Error, match="MEMR1_API_KEY"):
        Client()


def test_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    with Client("http://127.0.0.1:9", "k", max_retries=0) as client:
        with pytest.raises(ConnectionFailed):
            client.ready()


async def test_async_client(served: Served) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with AsyncClient(served.base_url, served.key, backoff_s=0.01) as client:
        served.llm.push(extracted("Alice moved to Lisbon."), add_op())
        accepted = await client.add_turns(
            "s-async", user, [Turn(speaker="Alice", text="I live in Lisbon.")], wait=True
        )
        assert accepted.status == "succeeded"
        page = await client.memories(user)
        assert [m.text.split(", ", 1)[1] for m in page.items] == ["Alice moved to Lisbon."]
        served.llm.push(Upstream("model endpoint down"), answered("Lisbon", "m1"))
        reply = await client.ask(user, "Where do I live?")
        assert reply.answer == "Lisbon"
        await client.feedback(reply.episode_id, rating=1)
        with pytest.raises(NotFoundError):
            await client.episode(uuid.uuid4())
        await client.erase_user(user)
