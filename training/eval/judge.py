"""LLM-as-a-judge (the "J" column): an OpenAI-compatible chat model labels each answer
CORRECT or WRONG against the gold answer.

It only runs when a judge endpoint is configured; without one the report says so instead of
showing a number. The prompt is a versioned template (``judge_prompt_v1.txt``) recorded in
every summary, because J scores from different prompts are not comparable.
"""

import asyncio
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import httpx

JUDGE_PROMPT_VERSION = "judge-v1"
JUDGE_PROMPT = (
    resources.files(__package__).joinpath("judge_prompt_v1.txt").read_text(encoding="utf-8")
)

_LABEL = re.compile(r"\b(CORRECT|WRONG)\b")
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class JudgeError(Exception):
    """The judge endpoint failed or answered with something that is not a verdict."""


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str


def judge_messages(question: str, gold: str, prediction: str) -> list[dict[str, str]]:
    content = JUDGE_PROMPT.format(question=question, gold_answer=gold, generated_answer=prediction)
    return [{"role": "user", "content": content}]


def parse_verdict(text: str) -> Verdict:
    """The verdict in a judge reply: the JSON object it was asked for, or, from models that
    wrap or break the JSON, the one label the reply contains."""
    match = _JSON_OBJECT.search(text)
    if match:
        try:
            value = json.loads(match.group(0))
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict) and str(value.get("label", "")).upper() in {"CORRECT", "WRONG"}:
            return Verdict(str(value["label"]).upper() == "CORRECT", str(value.get("reason", "")))
    labels = set(_LABEL.findall(text.upper()))
    if len(labels) != 1:
        raise JudgeError(f"judge reply has no single CORRECT/WRONG label: {text[:200]!r}")
    return Verdict(labels.pop() == "CORRECT", text.strip())


def chat_completions_url(url: str) -> str:
    """Accept the server's base URL (``http://host/v1``) or the full chat completions URL."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


class LLMJudge:
    """Judges answers through an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        retry_backoff_s: float = 2.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = chat_completions_url(url)
        self.model = model
        self._max_retries = max_retries
        self._backoff_s = retry_backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._headers = headers

    def describe(self) -> dict[str, str]:
        return {"url": self.url, "model": self.model, "prompt_version": JUDGE_PROMPT_VERSION}

    async def judge(self, question: str, gold: str, prediction: str) -> Verdict:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": judge_messages(question, gold, prediction),
            "temperature": 0.0,
            "max_tokens": 200,
        }
        reply = await self._post(body)
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"judge reply is not a chat completion: {str(reply)[:200]}") from exc
        return parse_verdict(str(text))

    async def _post(self, body: dict[str, Any]) -> Any:
        """POST with bounded retries on connection errors, timeouts, 429 and 5xx."""
        last_error = ""
        for attempt in range(self._max_retries + 1):
            if attempt:
                await asyncio.sleep(min(self._backoff_s * 2 ** (attempt - 1), 30.0))
            try:
                response = await self._client.post(self.url, json=body, headers=self._headers)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise JudgeError(
                    f"judge endpoint refused: HTTP {response.status_code}: {response.text[:200]}"
                )
            return response.json()
        raise JudgeError(f"judge endpoint failed after {self._max_retries + 1} tries: {last_error}")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
