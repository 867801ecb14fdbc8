"""The LLM backend for an OpenAI-compatible server (vLLM in production; SGLang, llama.cpp and
Ollama speak the same chat API).

Structured output is asked for in the form the server understands (``structured_output``):
OpenAI's ``response_format: {"type": "json_schema", ...}`` by default (vLLM, SGLang,
llama.cpp's llama-server, Ollama); ``{"type": "json_object", "schema": ...}`` for
llama-cpp-python's server, which refuses the first; or vLLM's own ``structured_outputs``
parameter (0.12 and later; its ``guided_json`` was removed then).

LoRA adapters are served by name: a request for an adapter sends the adapter name as
``model``. Loading and unloading use vLLM's runtime endpoints (``/v1/load_lora_adapter``,
``/v1/unload_lora_adapter``; the server needs ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``). The adapter path is sent as is, so it must name the
same directory on this host (where it is validated) and on the model server. What the server
has loaded is a cache: a restarted vLLM has forgotten every runtime-loaded adapter and answers
404 for it, so a request for an adapter this backend loaded is answered 404 only after the
adapter was loaded again and the request retried once.
"""

import asyncio
import json
import random
import re
import time
from pathlib import Path
from typing import Any, assert_never

import httpx
from pydantic import BaseModel, Field, ValidationError

from app.core.config import StructuredOutput
from app.core.errors import BadUpstreamResponse, UnusableOutput, Upstream
from app.llm.backend import Completion, validate_adapter_dir

# Overload, rate limiting and server errors are worth another try; other 4xx will fail the
# same way again.
_RETRYABLE_STATUS = frozenset({408, 429})
_MAX_BACKOFF_S = 10.0
_LOAD_HINT = (
    "; the path must exist on the model server, which needs --enable-lora and "
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
)


class _Refused(BadUpstreamResponse):
    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.status = status


class _Message(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    message: _Message
    finish_reason: str | None = None


class _Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class _ChatCompletion(BaseModel):
    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage


class _ModelCard(BaseModel):
    id: str
    root: str | None = None
    parent: str | None = None  # set on LoRA adapters: the base model they run on


class _ModelList(BaseModel):
    data: list[_ModelCard]


class OpenAICompatBackend:
    """Implements ``app.llm.backend.LLMBackend`` over HTTP.

    Every call has explicit timeouts and is retried up to ``max_retries`` times with
    exponential backoff on connection errors, timeouts, 408, 429 and 5xx, then raises
    ``Upstream``. Other 4xx responses are not retried and raise ``BadUpstreamResponse``."""

    def __init__(
        self,
        base_url: str,
        base_model: str,
        api_key: str | None,
        timeout_s: float,
        max_retries: int,
        max_lora_rank: int,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        backoff_s: float = 0.5,
        structured_output: StructuredOutput = StructuredOutput.json_schema,
    ) -> None:
        self.base_model = base_model
        self._structured_output = structured_output
        self._base_url = base_url.rstrip("/")
        # vLLM mounts the LoRA endpoints at the server root, next to /v1.
        self._server_root = self._base_url.removesuffix("/v1")
        self._max_retries = max_retries
        self._max_lora_rank = max_lora_rank
        self._backoff_s = backoff_s
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
        )
        self._adapter_locks: dict[str, asyncio.Lock] = {}
        self._adapter_paths: dict[str, str] = {}  # what this backend loaded, to load again

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None = None,
        adapter: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 256,
    ) -> Completion:
        body: dict[str, Any] = {
            "model": adapter or self.base_model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if json_schema is not None:
            body |= structured_output_fields(json_schema, self._structured_output)
        started = time.perf_counter()
        url = f"{self._base_url}/chat/completions"
        try:
            response = await self._request("POST", url, body)
        except _Refused as exc:
            path = self._adapter_paths.get(adapter or "")
            if exc.status != 404 or adapter is None or path is None:
                raise
            # The server forgot the adapter (a restart): load it again, then retry once.
            await self._load(adapter, path)
            response = await self._request("POST", url, body)
        try:
            payload = _ChatCompletion.model_validate_json(response.content)
        except ValidationError as exc:
            raise BadUpstreamResponse(
                f"malformed chat completion from the LLM endpoint: {exc}"
            ) from exc
        choice = payload.choices[0]
        text = choice.message.content or ""
        return Completion(
            text=text,
            parsed=None if json_schema is None else _parse_json(text, choice, max_tokens),
            model=self.base_model,
            adapter=adapter,
            prompt_tokens=payload.usage.prompt_tokens,
            completion_tokens=payload.usage.completion_tokens,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def load_adapter(self, name: str, path: str) -> None:
        """Load, or replace when ``name`` is served from another path; same path is a no-op."""
        validate_adapter_dir(
            Path(path), base_model=self.base_model, max_lora_rank=self._max_lora_rank
        )
        await self._load(name, path)
        self._adapter_paths[name] = path

    async def _load(self, name: str, path: str) -> None:
        async with self._adapter_lock(name):
            served = await self._served_paths()
            if name in served:
                if served[name] == path:
                    return
                # Older vLLM cannot reload a name in place: drop it, then load the new weights.
                await self._post_unload(name)
            try:
                # A load the server fails (500: unreadable weights, a rank above its
                # --max-lora-rank) fails the same way again: not retried.
                await self._request(
                    "POST",
                    f"{self._server_root}/v1/load_lora_adapter",
                    {"lora_name": name, "lora_path": path},
                    hint=_LOAD_HINT,
                    retry_server_errors=False,
                )
            except BadUpstreamResponse:
                # A load retried after a timeout is refused as "already loaded" when the first
                # attempt landed; the server's list says whether we got what we asked for.
                if (await self._served_paths()).get(name) != path:
                    raise

    async def unload_adapter(self, name: str) -> None:
        self._adapter_paths.pop(name, None)
        async with self._adapter_lock(name):
            # vLLM answers 404 both for an unknown adapter and for a server without runtime
            # LoRA updating; asking first keeps the no-op case from hiding the second.
            if name in {card.id for card in await self._lora_cards()}:
                await self._post_unload(name)

    async def loaded_adapters(self) -> set[str]:
        return {card.id for card in await self._lora_cards()}

    async def ready(self) -> None:
        """One unretried ``GET /models``, which every OpenAI-compatible server answers once
        its model is loaded (vLLM binds its port only then). A server that refuses it (a wrong
        API key) cannot serve either."""
        try:
            await request_with_retries(
                self._client, "GET", f"{self._base_url}/models", None, max_retries=0, backoff_s=0
            )
        except BadUpstreamResponse as exc:
            raise Upstream(exc.detail) from exc

    async def close(self) -> None:
        await self._client.aclose()

    def _adapter_lock(self, name: str) -> asyncio.Lock:
        return self._adapter_locks.setdefault(name, asyncio.Lock())

    async def _served_paths(self) -> dict[str, str | None]:
        return {card.id: card.root for card in await self._lora_cards()}

    async def _lora_cards(self) -> list[_ModelCard]:
        response = await self._request("GET", f"{self._base_url}/models")
        try:
            models = _ModelList.model_validate_json(response.content)
        except ValidationError as exc:
            raise BadUpstreamResponse(f"malformed model list from the LLM endpoint: {exc}") from exc
        return [card for card in models.data if card.parent is not None]

    async def _post_unload(self, name: str) -> None:
        await self._request(
            "POST", f"{self._server_root}/v1/unload_lora_adapter", {"lora_name": name}
        )

    async def _request(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        *,
        hint: str = "",
        retry_server_errors: bool = True,
    ) -> httpx.Response:
        return await request_with_retries(
            self._client,
            method,
            url,
            body,
            max_retries=self._max_retries,
            backoff_s=self._backoff_s,
            hint=hint,
            retry_server_errors=retry_server_errors,
        )


async def request_with_retries(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    body: dict[str, Any] | None,
    *,
    max_retries: int,
    backoff_s: float,
    hint: str = "",
    retry_server_errors: bool = True,
) -> httpx.Response:
    """One request to an OpenAI-compatible server: transport errors, 408, 429 and 5xx (unless
    ``retry_server_errors`` is off) are retried with exponential backoff, then Upstream
    (503); other errors are BadUpstreamResponse (502) with the server's own message."""
    attempts = max_retries + 1
    failure = ""
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(_backoff(backoff_s, attempt))
        try:
            response = await client.request(method, url, json=body)
        except httpx.TransportError as exc:  # refused, reset, DNS, connect/read timeouts
            failure = f"{type(exc).__name__} {exc}".strip()
            continue
        status = response.status_code
        if status in _RETRYABLE_STATUS or (status >= 500 and retry_server_errors):
            failure = f"HTTP {status}: {_error_message(response)}"
            continue
        if response.is_error:
            raise _Refused(
                f"{method} {url} was refused with HTTP {status}: {_error_message(response)}{hint}",
                status,
            )
        return response
    raise Upstream(f"{method} {url} failed after {attempts} attempt(s); last error: {failure}")


def _backoff(backoff_s: float, attempt: int) -> float:
    delay = min(backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
    # Jitter keeps workers that failed together from retrying in lockstep.
    return delay * random.uniform(0.5, 1.0)


def structured_output_fields(schema: dict[str, Any], form: StructuredOutput) -> dict[str, Any]:
    """The request fields that ask for JSON under ``schema`` in ``form``."""
    match form:
        case StructuredOutput.json_schema:
            # OpenAI requires a name matching ^[a-zA-Z0-9_-]{1,64}$; servers use it as a label.
            name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(schema.get("title", "")))[:64] or "output"
            json_schema = {"name": name, "schema": schema, "strict": True}
            return {"response_format": {"type": "json_schema", "json_schema": json_schema}}
        case StructuredOutput.json_object:
            return {"response_format": {"type": "json_object", "schema": schema}}
        case StructuredOutput.structured_outputs:
            return {"structured_outputs": {"json": schema}}
        case _:
            assert_never(form)


def _parse_json(text: str, choice: _Choice, max_tokens: int) -> Any:
    if choice.finish_reason == "length":
        raise UnusableOutput(
            f"the model used all max_tokens={max_tokens} before finishing the JSON output; "
            "raise max_tokens or bound the schema (maxLength, maxItems)"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnusableOutput(
            f"the LLM endpoint ignored the JSON schema; output is not JSON ({exc}): {text[:200]!r}"
        ) from exc


def _error_message(response: httpx.Response) -> str:
    """The server's own explanation, from vLLM's/OpenAI's error envelope when there is one."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:  # OpenAI, vLLM >= 0.9
            return str(error["message"])
        for key in ("message", "error", "detail"):  # older vLLM, auth errors, FastAPI
            if key in body:
                return str(body[key])
    return response.text[:500]
