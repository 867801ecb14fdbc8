"""Input that the schemas would accept as JSON but Postgres cannot store or compare (NUL
characters, unpaired surrogates, integers past a 32-bit column, times that overflow once turned
into UTC) is refused with a 422 that names the field, never a 500."""

import json

import httpx
import pytest

from tests.api.helpers import assert_error
from tests.conftest import TenantKeys

NUL = "tea\u0000time"
SURROGATE = "tea\ud800time"


def raw_json(body: object) -> bytes:
    # json.dumps escapes a lone surrogate as \ud800, as a client in another language would send it.
    return json.dumps(body).encode()


async def post(client: httpx.AsyncClient, url: str, body: object, headers: dict[str, str]):
    return await client.post(
        url, content=raw_json(body), headers={**headers, "content-type": "application/json"}
    )


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
class TestText:
    async def test_memory_text_and_speaker(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, bad: str
    ) -> None:
        for body in ({"text": bad}, {"text": "tea", "speaker": bad}):
            r = await post(client, "/users/alice/memories", body, tenant_a.memory)
            assert_error(r, 422, "invalid_input", next(iter(k for k in body if body[k] == bad)))

    async def test_turn_text_and_speaker(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, bad: str
    ) -> None:
        for turn in ({"speaker": "alice", "text": bad}, {"speaker": bad, "text": "hi"}):
            body = {"user_id": "alice", "turns": [turn]}
            r = await post(client, "/sessions/s1/turns", body, tenant_a.memory)
            assert_error(r, 422, "invalid_input", "turns.0")

    async def test_question_and_search_query(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, bad: str
    ) -> None:
        r = await post(client, "/ask", {"user_id": "alice", "question": bad}, tenant_a.memory)
        assert_error(r, 422, "invalid_input", "question")
        if bad == NUL:  # a query string carries bytes: a surrogate cannot be sent in one
            r = await client.get(
                "/users/alice/memories", params={"query": bad}, headers=tenant_a.memory
            )
            assert_error(r, 422, "invalid_input", "query", "NUL")

    async def test_training_params(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys, bad: str
    ) -> None:
        body = {"agent": "answer", "source": "episodes", "activate": "never", "params": {bad: 1}}
        r = await post(client, "/admin/training-jobs", body, tenant_a.admin)
        assert_error(r, 422, "invalid_input", "params")


async def test_the_message_says_what_to_fix(
    client: httpx.AsyncClient, tenant_a: TenantKeys
) -> None:
    r = await post(client, "/users/alice/memories", {"text": NUL}, tenant_a.memory)
    assert_error(r, 422, "invalid_input", "NUL", "remove it")
    r = await post(client, "/users/alice/memories", {"text": SURROGATE}, tenant_a.memory)
    assert_error(r, 422, "invalid_input", "text", "unicode")


async def test_integers_past_a_column(client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
    big = 2**63
    r = await client.get(f"/sessions/s1/turns?after_seq={big}", headers=tenant_a.memory)
    assert_error(r, 422, "invalid_input", "after_seq")
    r = await client.get(f"/users/alice/memories?offset={big}", headers=tenant_a.memory)
    assert_error(r, 422, "invalid_input", "offset")
    r = await post(client, "/users/alice/memories", {"text": "tea"}, tenant_a.memory)
    assert r.status_code == 201, r.text
    r = await client.get(f"/users/alice/memories?offset={2**31 - 1}", headers=tenant_a.memory)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == []


async def test_times_that_overflow_in_utc(client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
    for when in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        body = {"text": "tea", "occurred_at": when}
        r = await post(client, "/users/alice/memories", body, tenant_a.memory)
        assert_error(r, 422, "invalid_input", "occurred_at", "UTC")
    body = {"text": "tea", "occurred_at": "9999-12-31T23:59:59+05:00"}
    r = await post(client, "/users/alice/memories", body, tenant_a.memory)
    assert r.status_code == 201, r.text
