"""Request limits come from settings: with every limit set to its own small value, each check
must use its own limit, at the boundary."""

from collections.abc import AsyncIterator

import httpx
import pytest

from app.core.config import LimitSettings
from app.core.runtime import Runtime
from app.main import create_app
from tests.api.helpers import answered, assert_error, turns_body
from tests.conftest import TenantKeys
from tests.fixtures.fake_llm import FakeLLM

LIMITS = LimitSettings(
    max_turn_chars=100,
    max_turns_per_request=3,
    max_query_chars=50,
    max_top_k=10,
    max_body_bytes=4096,
    max_memory_chars=300,
)


@pytest.fixture
async def limited(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    runtime.settings = runtime.settings.model_copy(update={"limits": LIMITS})
    app = create_app(runtime.settings, runtime)
    app.state.runtime = runtime
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        yield http


@pytest.fixture
async def alice(limited: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
    r = await limited.post("/users/alice/memories", json={"text": "tea"}, headers=tenant_a.memory)
    assert r.status_code == 201, r.text


class TestTurnLimits:
    async def test_turns_per_request(
        self, limited: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        r = await limited.post(
            "/sessions/s1/turns", json=turns_body("alice", "a", "b", "c"), headers=tenant_a.memory
        )
        assert r.status_code == 202, r.text
        r = await limited.post(
            "/sessions/s1/turns",
            json=turns_body("alice", "a", "b", "c", "d"),
            headers=tenant_a.memory,
        )
        assert_error(r, 413, "payload_too_large", "4 turns", "at most 3")

    async def test_turn_chars(self, limited: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await limited.post(
            "/sessions/s1/turns", json=turns_body("alice", "x" * 100), headers=tenant_a.memory
        )
        assert r.status_code == 202, r.text
        r = await limited.post(
            "/sessions/s1/turns", json=turns_body("alice", "x" * 101), headers=tenant_a.memory
        )
        assert_error(r, 422, "invalid_input", "turns[0].text", "101", "100")


class TestTextLimits:
    async def test_memory_chars(self, limited: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        r = await limited.post(
            "/users/alice/memories", json={"text": "x" * 300}, headers=tenant_a.memory
        )
        assert r.status_code == 201, r.text
        r = await limited.post(
            "/users/alice/memories", json={"text": "x" * 301}, headers=tenant_a.memory
        )
        assert_error(r, 422, "invalid_input", "301", "300")

    async def test_search_query_chars(
        self, limited: httpx.AsyncClient, tenant_a: TenantKeys, alice: None
    ) -> None:
        r = await limited.get(
            "/users/alice/memories", params={"query": "q" * 50}, headers=tenant_a.memory
        )
        assert r.status_code == 200, r.text
        r = await limited.get(
            "/users/alice/memories", params={"query": "q" * 51}, headers=tenant_a.memory
        )
        assert_error(r, 422, "invalid_input", "query", "51", "50")

    async def test_question_chars(
        self, limited: httpx.AsyncClient, tenant_a: TenantKeys, alice: None, fake_llm: FakeLLM
    ) -> None:
        fake_llm.push(answered("tea", "m1"))
        r = await limited.post(
            "/ask", json={"user_id": "alice", "question": "q" * 50}, headers=tenant_a.memory
        )
        assert r.status_code == 200, r.text
        r = await limited.post(
            "/ask", json={"user_id": "alice", "question": "q" * 51}, headers=tenant_a.memory
        )
        assert_error(r, 422, "invalid_input", "question", "51", "50")


class TestTopK:
    async def test_ask_top_k(
        self, limited: httpx.AsyncClient, tenant_a: TenantKeys, alice: None, fake_llm: FakeLLM
    ) -> None:
        fake_llm.responder = lambda call: answered("tea", "m1")
        body = {"user_id": "alice", "question": "What does alice like?"}
        r = await limited.post("/ask", json={**body, "top_k": 10}, headers=tenant_a.memory)
        assert r.status_code == 200, r.text
        r = await limited.post("/ask", json={**body, "top_k": 11}, headers=tenant_a.memory)
        assert_error(r, 422, "invalid_input", "top_k", "10")


class TestBodySize:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/sessions/s1/turns"),
            ("POST", "/users/alice/memories"),
            ("POST", "/ask"),
            ("POST", "/feedback"),
        ],
    )
    async def test_declared_length_over_the_limit(
        self, limited: httpx.AsyncClient, tenant_a: TenantKeys, method: str, path: str
    ) -> None:
        body = b'{"text": "' + b"x" * 4096 + b'"}'
        r = await limited.request(
            method,
            path,
            content=body,
            headers={**tenant_a.memory, "Content-Type": "application/json"},
        )
        assert_error(r, 413, "payload_too_large", str(len(body)), "4096")

    async def test_at_the_limit(self, limited: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        prefix, suffix = b'{"user_id": "alice", "turns": [{"speaker": "A", "text": "', b'"}]}'
        padding = b" " * (4096 - len(prefix) - len(suffix) - 1)
        body = prefix + b"x" + padding + suffix
        assert len(body) == 4096
        r = await limited.post(
            "/sessions/s1/turns",
            content=body,
            headers={**tenant_a.memory, "Content-Type": "application/json"},
        )
        # Past the size check: the stripped turn text is one character.
        assert r.status_code == 202, r.text

    async def test_streamed_body_over_the_limit(
        self, limited: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"user_id": "alice", "turns": [{"speaker": "A", "text": "x'
            for _ in range(10):
                yield b" " * 1000
            yield b'"}]}'

        r = await limited.post(
            "/sessions/s1/turns",
            content=chunks(),
            headers={**tenant_a.memory, "Content-Type": "application/json"},
        )
        assert_error(r, 413, "payload_too_large", "4096")
