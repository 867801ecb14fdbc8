"""The LLM judge: its request, verdict parsing and bounded retries, against a mock endpoint."""

import json

import httpx
import pytest

from training.eval.judge import (
    JUDGE_PROMPT_VERSION,
    JudgeError,
    LLMJudge,
    chat_completions_url,
    judge_messages,
    parse_verdict,
)


def _completion(content: str) -> dict[str, object]:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def test_prompt_holds_question_gold_and_answer() -> None:
    (message,) = judge_messages("When did she move?", "May 2023", "in May of 2023")
    assert message["role"] == "user"
    assert "Question: When did she move?" in message["content"]
    assert "Gold answer: May 2023" in message["content"]
    assert "Generated answer: in May of 2023" in message["content"]
    assert '{"reason"' in message["content"]


class TestParseVerdict:
    def test_json_reply(self) -> None:
        verdict = parse_verdict('{"reason": "same date", "label": "CORRECT"}')
        assert verdict.correct and verdict.reason == "same date"

    def test_json_wrapped_in_prose(self) -> None:
        assert not parse_verdict('Sure: {"reason": "other city", "label": "wrong"}').correct

    def test_bare_label(self) -> None:
        assert parse_verdict("It names the same trip. CORRECT").correct

    def test_both_or_no_label_is_an_error(self) -> None:
        with pytest.raises(JudgeError):
            parse_verdict("CORRECT or WRONG, hard to say")
        with pytest.raises(JudgeError):
            parse_verdict("no idea")


def test_base_url_or_full_url() -> None:
    assert chat_completions_url("http://j/v1/") == "http://j/v1/chat/completions"
    assert chat_completions_url("http://j/v1/chat/completions") == "http://j/v1/chat/completions"


async def test_judge_posts_a_chat_completion() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_completion('{"reason": "r", "label": "CORRECT"}'))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    judge = LLMJudge("http://judge/v1", "judge-model", "secret", client=client)
    verdict = await judge.judge("Where?", "Paris", "In Paris")
    assert verdict.correct
    (request,) = seen
    assert str(request.url) == "http://judge/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer secret"
    body = json.loads(request.content)
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert "Gold answer: Paris" in body["messages"][0]["content"]
    assert judge.describe()["prompt_version"] == JUDGE_PROMPT_VERSION
    await client.aclose()


async def test_judge_retries_server_errors_then_gives_up() -> None:
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(503, text="loading")
        return httpx.Response(200, json=_completion('{"reason": "r", "label": "WRONG"}'))

    client = httpx.AsyncClient(transport=httpx.MockTransport(flaky))
    judge = LLMJudge("http://judge/v1", "m", client=client, retry_backoff_s=0)
    assert not (await judge.judge("q", "g", "p")).correct
    assert calls == 2

    down = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    judge = LLMJudge("http://judge/v1", "m", client=down, max_retries=2, retry_backoff_s=0)
    with pytest.raises(JudgeError, match="after 3 tries"):
        await judge.judge("q", "g", "p")


async def test_judge_does_not_retry_a_refusal() -> None:
    calls = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401, text="bad key")

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    with pytest.raises(JudgeError, match="401"):
        await LLMJudge("http://judge/v1", "m", client=client, retry_backoff_s=0).judge(
            "q", "g", "p"
        )
    assert calls == 1
