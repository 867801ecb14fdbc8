"""Python SDK for the Memory-R1 service: ``Client`` (sync) and ``AsyncClient`` (asyncio).

    from memory_r1.client import Client

    with Client() as mr1:  # MEMR1_URL and MEMR1_API_KEY, or base_url= and api_key=
        mr1.add_turns("s1", "alice", [Turn(speaker="alice", text="I adopted a dog, Buddy.")])
        print(mr1.ask("alice", "What is my dog called?").answer)

Every route has one typed method; replies are the server's own response models. 429 and 503
are retried with exponential backoff (honouring ``Retry-After``); any other error, and a 429/503
that outlasts the retries, raises an ``APIError`` subclass carrying the server's ``error`` and
``detail``. Failures to reach the server raise ``ConnectionFailed``.
"""

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import httpx
from pydantic import TypeAdapter

from app.adapters.schemas import AdapterRead
from app.ask.schemas import AskResponse
from app.episodes.schemas import EpisodeRead
from app.feedback.schemas import FeedbackRead
from app.ingestion.schemas import IngestionPage, IngestionRead
from app.memories.schemas import MemoryEventRead, MemoryPage, MemoryRead
from app.sessions.schemas import TurnIn, TurnPage, TurnRead, TurnsAccepted
from app.training_jobs.schemas import TrainingJobRead
from app.users.schemas import UserPage

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "ConnectionFailed",
    "InvalidRequest",
    "MemoryR1Error",
    "NotFoundError",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "Turn",
]

Turn = TurnIn
T = TypeVar("T")
Agent = Literal["extractor", "manager", "answer"]
DEFAULT_URL = "http://127.0.0.1:8080"
RETRIED = frozenset({429, 503})


class MemoryR1Error(Exception):
    """Every error the SDK raises."""


class ConnectionFailed(MemoryR1Error):
    """The server could not be reached (refused, timed out, or the connection broke)."""


class APIError(MemoryR1Error):
    """The server answered with an error: ``status_code``, and its ``error`` and ``detail``."""

    def __init__(self, status_code: int, error: str, detail: str) -> None:
        super().__init__(f"{status_code} {error}: {detail}")
        self.status_code = status_code
        self.error = error
        self.detail = detail


class InvalidRequest(APIError):
    """400, 413 or 422: the request needs fixing; ``detail`` says what."""


class AuthenticationError(APIError):
    """401: no API key, or an unknown or revoked one."""


class PermissionDenied(APIError):
    """403: the key lacks the scope the route needs (memory or admin)."""


class NotFoundError(APIError):
    """404: no such id in this tenant."""


class ConflictError(APIError):
    """409: the resource is not in a state that allows this (e.g. retrying a running job)."""


class RateLimited(APIError):
    """429, still, after the retries."""


class ServerError(APIError):
    """5xx: a model endpoint is down or misbehaving (502/503), or a server bug (500)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
}


def error_from(response: httpx.Response) -> APIError:
    try:
        body = response.json()
        error, detail = str(body["error"]), str(body["detail"])
    except (ValueError, KeyError, TypeError):
        error, detail = "http_error", response.text[:500] or response.reason_phrase
    kind = _BY_STATUS.get(response.status_code)
    if kind is None:
        kind = ServerError if response.status_code >= 500 else APIError
    return kind(response.status_code, error, detail)


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request and how to read its reply."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] = field(default_factory=dict)
    json: Any = None


def _model(kind: Any) -> Callable[[httpx.Response], Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(kind)
    return lambda response: adapter.validate_json(response.content)


def _none(response: httpx.Response) -> None:
    return None


def _json(response: httpx.Response) -> Any:
    return response.json()


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _body(**values: Any) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


class _Calls:
    """The service's routes as ``_Call`` values; both clients send them."""

    @staticmethod
    def add_turns(
        session_id: str,
        user_id: str,
        turns: list[Turn],
        wait: bool,
        manager_adapter: str,
        extractor_adapter: str,
    ) -> _Call[TurnsAccepted]:
        body = {
            "user_id": user_id,
            "turns": [t.model_dump(mode="json", exclude_none=True) for t in turns],
            "manager_adapter": manager_adapter,
            "extractor_adapter": extractor_adapter,
        }
        params = {"wait": "true"} if wait else {}
        return _Call("POST", f"/sessions/{session_id}/turns", _model(TurnsAccepted), params, body)

    @staticmethod
    def list_turns(session_id: str, after_seq: int, limit: int) -> _Call[TurnPage]:
        params = {"after_seq": after_seq, "limit": limit}
        return _Call("GET", f"/sessions/{session_id}/turns", _model(TurnPage), params)

    @staticmethod
    def ingestion(job_id: uuid.UUID | str) -> _Call[IngestionRead]:
        return _Call("GET", f"/ingestions/{job_id}", _model(IngestionRead))

    @staticmethod
    def list_ingestions(user_id: str, limit: int, offset: int) -> _Call[IngestionPage]:
        params = {"limit": limit, "offset": offset}
        return _Call("GET", f"/users/{user_id}/ingestions", _model(IngestionPage), params)

    @staticmethod
    def ingestion_turns(job_id: uuid.UUID | str) -> _Call[list[TurnRead]]:
        return _Call("GET", f"/ingestions/{job_id}/turns", _model(list[TurnRead]))

    @staticmethod
    def retry_ingestion(job_id: uuid.UUID | str) -> _Call[IngestionRead]:
        return _Call("POST", f"/ingestions/{job_id}/retry", _model(IngestionRead))

    @staticmethod
    def memories(user_id: str, query: str | None, limit: int, offset: int) -> _Call[MemoryPage]:
        params = _params(query=query, limit=limit, offset=offset)
        return _Call("GET", f"/users/{user_id}/memories", _model(MemoryPage), params)

    @staticmethod
    def add_memory(
        user_id: str, text: str, speaker: str | None, occurred_at: datetime | None
    ) -> _Call[MemoryRead]:
        body = _body(text=text, speaker=speaker, occurred_at=occurred_at)
        return _Call("POST", f"/users/{user_id}/memories", _model(MemoryRead), json=body)

    @staticmethod
    def memory(memory_id: uuid.UUID | str) -> _Call[MemoryRead]:
        return _Call("GET", f"/memories/{memory_id}", _model(MemoryRead))

    @staticmethod
    def update_memory(memory_id: uuid.UUID | str, changes: dict[str, Any]) -> _Call[MemoryRead]:
        return _Call("PATCH", f"/memories/{memory_id}", _model(MemoryRead), json=_body(**changes))

    @staticmethod
    def delete_memory(memory_id: uuid.UUID | str) -> _Call[None]:
        return _Call("DELETE", f"/memories/{memory_id}", _none)

    @staticmethod
    def memory_history(memory_id: uuid.UUID | str) -> _Call[list[MemoryEventRead]]:
        return _Call("GET", f"/memories/{memory_id}/history", _model(list[MemoryEventRead]))

    @staticmethod
    def users(limit: int, offset: int) -> _Call[UserPage]:
        return _Call("GET", "/users", _model(UserPage), {"limit": limit, "offset": offset})

    @staticmethod
    def erase_user(user_id: str) -> _Call[None]:
        return _Call("DELETE", f"/users/{user_id}", _none)

    @staticmethod
    def ask(
        user_id: str, question: str, top_k: int | None, answer_adapter: str
    ) -> _Call[AskResponse]:
        body = _params(
            user_id=user_id, question=question, top_k=top_k, answer_adapter=answer_adapter
        )
        return _Call("POST", "/ask", _model(AskResponse), json=body)

    @staticmethod
    def episode(episode_id: uuid.UUID | str) -> _Call[EpisodeRead]:
        return _Call("GET", f"/episodes/{episode_id}", _model(EpisodeRead))

    @staticmethod
    def feedback(
        episode_id: uuid.UUID | str, gold_answer: str | None, rating: int | None
    ) -> _Call[FeedbackRead]:
        body = _params(episode_id=str(episode_id), gold_answer=gold_answer, rating=rating)
        return _Call("POST", "/feedback", _model(FeedbackRead), json=body)

    @staticmethod
    def start_training(body: dict[str, Any]) -> _Call[TrainingJobRead]:
        return _Call("POST", "/admin/training-jobs", _model(TrainingJobRead), json=body)

    @staticmethod
    def training_jobs(limit: int) -> _Call[list[TrainingJobRead]]:
        params = {"limit": limit}
        return _Call("GET", "/admin/training-jobs", _model(list[TrainingJobRead]), params)

    @staticmethod
    def training_job(job_id: uuid.UUID | str) -> _Call[TrainingJobRead]:
        return _Call("GET", f"/admin/training-jobs/{job_id}", _model(TrainingJobRead))

    @staticmethod
    def cancel_training(job_id: uuid.UUID | str) -> _Call[TrainingJobRead]:
        return _Call("POST", f"/admin/training-jobs/{job_id}/cancel", _model(TrainingJobRead))

    @staticmethod
    def retry_training(job_id: uuid.UUID | str) -> _Call[TrainingJobRead]:
        return _Call("POST", f"/admin/training-jobs/{job_id}/retry", _model(TrainingJobRead))

    @staticmethod
    def training_params() -> _Call[dict[str, str]]:
        return _Call("GET", "/admin/training-params", _json)

    @staticmethod
    def adapters(agent: Agent | None) -> _Call[list[AdapterRead]]:
        params = _params(agent=agent)
        return _Call("GET", "/admin/adapters", _model(list[AdapterRead]), params)

    @staticmethod
    def activate_adapter(adapter_id: uuid.UUID | str) -> _Call[AdapterRead]:
        return _Call("POST", f"/admin/adapters/{adapter_id}/activate", _model(AdapterRead))

    @staticmethod
    def ready() -> _Call[dict[str, Any]]:
        return _Call("GET", "/readyz", _json)


def _training_body(
    agent: Literal["answer", "manager"],
    source: Literal["episodes", "dataset"],
    dataset: str | None,
    validation_dataset: str | None,
    params: dict[str, Any] | None,
    activate: Literal["if_better", "always", "never"],
) -> dict[str, Any]:
    return _params(
        agent=agent,
        source=source,
        dataset=dataset,
        validation_dataset=validation_dataset,
        params=params or {},
        activate=activate,
    )


def _changes(text: str | None, speaker: str | None, occurred_at: datetime | None) -> dict[str, Any]:
    return _params(text=text, speaker=speaker, occurred_at=occurred_at)


@dataclass(frozen=True)
class _Settings:
    base_url: str
    headers: dict[str, str]
    timeout: float
    max_retries: int
    backoff_s: float
    max_backoff_s: float


def _settings(
    base_url: str | None,
    api_key: str | None,
    timeout: float,
    max_retries: int,
    backoff_s: float,
    max_backoff_s: float,
) -> _Settings:
    key = api_key or os.environ.get("MEMR1_API_KEY")
    if not key:
        raise MemoryR1Error("no API key: pass api_key= or set MEMR1_API_KEY")
    url = base_url or os.environ.get("MEMR1_URL") or DEFAULT_URL
    return _Settings(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout,
        max_retries=max_retries,
        backoff_s=backoff_s,
        max_backoff_s=max_backoff_s,
    )


def _delay(settings: _Settings, attempt: int, response: httpx.Response) -> float:
    """Seconds before retry ``attempt`` (0-based): the server's Retry-After when it gives
    one, else exponential backoff; both capped."""
    retry_after = response.headers.get("retry-after", "")
    wait = float(retry_after) if retry_after.isdigit() else settings.backoff_s * 2**attempt
    return min(wait, settings.max_backoff_s)


def _result(call: _Call[T], response: httpx.Response) -> T:
    if response.is_error:
        raise error_from(response)
    return call.parse(response)


class Client:
    """The sync client. Use it as a context manager, or call ``close()``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = _settings(
            base_url, api_key, timeout, max_retries, backoff_s, max_backoff_s
        )
        self._http = httpx.Client(
            base_url=self._settings.base_url,
            headers=self._settings.headers,
            timeout=timeout,
            transport=transport,
        )

    def _send(self, call: _Call[T]) -> T:
        for attempt in range(self._settings.max_retries + 1):
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, json=call.json
                )
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"{call.method} {call.path}: {exc}") from exc
            if response.status_code not in RETRIED or attempt == self._settings.max_retries:
                break
            time.sleep(_delay(self._settings, attempt, response))
        return _result(call, response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # sessions and ingestion
    def add_turns(
        self,
        session_id: str,
        user_id: str,
        turns: list[Turn],
        *,
        wait: bool = False,
        manager_adapter: str = "active",
        extractor_adapter: str = "active",
    ) -> TurnsAccepted:
        """Store turns (committed first) and ingest them: in a worker, or inline with wait."""
        call = _Calls.add_turns(
            session_id, user_id, turns, wait, manager_adapter, extractor_adapter
        )
        return self._send(call)

    def list_turns(self, session_id: str, *, after_seq: int = -1, limit: int = 100) -> TurnPage:
        return self._send(_Calls.list_turns(session_id, after_seq, limit))

    def ingestion(self, job_id: uuid.UUID | str) -> IngestionRead:
        return self._send(_Calls.ingestion(job_id))

    def list_ingestions(self, user_id: str, *, limit: int = 50, offset: int = 0) -> IngestionPage:
        return self._send(_Calls.list_ingestions(user_id, limit, offset))

    def ingestion_turns(self, job_id: uuid.UUID | str) -> list[TurnRead]:
        return self._send(_Calls.ingestion_turns(job_id))

    def retry_ingestion(self, job_id: uuid.UUID | str) -> IngestionRead:
        return self._send(_Calls.retry_ingestion(job_id))

    # memories
    def memories(
        self, user_id: str, *, query: str | None = None, limit: int = 50, offset: int = 0
    ) -> MemoryPage:
        """The user's bank, newest first; with ``query``, most similar first."""
        return self._send(_Calls.memories(user_id, query, limit, offset))

    def add_memory(
        self,
        user_id: str,
        text: str,
        *,
        speaker: str | None = None,
        occurred_at: datetime | None = None,
    ) -> MemoryRead:
        return self._send(_Calls.add_memory(user_id, text, speaker, occurred_at))

    def memory(self, memory_id: uuid.UUID | str) -> MemoryRead:
        return self._send(_Calls.memory(memory_id))

    def update_memory(
        self,
        memory_id: uuid.UUID | str,
        *,
        text: str | None = None,
        speaker: str | None = None,
        occurred_at: datetime | None = None,
    ) -> MemoryRead:
        changes = _changes(text, speaker, occurred_at)
        return self._send(_Calls.update_memory(memory_id, changes))

    def delete_memory(self, memory_id: uuid.UUID | str) -> None:
        return self._send(_Calls.delete_memory(memory_id))

    def memory_history(self, memory_id: uuid.UUID | str) -> list[MemoryEventRead]:
        return self._send(_Calls.memory_history(memory_id))

    # users
    def users(self, *, limit: int = 100, offset: int = 0) -> UserPage:
        return self._send(_Calls.users(limit, offset))

    def erase_user(self, user_id: str) -> None:
        """Erase the user and everything stored about them. Irreversible."""
        return self._send(_Calls.erase_user(user_id))

    # answers and feedback
    def ask(
        self,
        user_id: str,
        question: str,
        *,
        top_k: int | None = None,
        answer_adapter: str = "active",
    ) -> AskResponse:
        return self._send(_Calls.ask(user_id, question, top_k, answer_adapter))

    def episode(self, episode_id: uuid.UUID | str) -> EpisodeRead:
        return self._send(_Calls.episode(episode_id))

    def feedback(
        self,
        episode_id: uuid.UUID | str,
        *,
        gold_answer: str | None = None,
        rating: int | None = None,
    ) -> FeedbackRead:
        return self._send(_Calls.feedback(episode_id, gold_answer, rating))

    # training and adapters (admin scope)
    def start_training(
        self,
        agent: Literal["answer", "manager"],
        source: Literal["episodes", "dataset"],
        *,
        dataset: str | None = None,
        validation_dataset: str | None = None,
        params: dict[str, Any] | None = None,
        activate: Literal["if_better", "always", "never"] = "if_better",
    ) -> TrainingJobRead:
        body = _training_body(agent, source, dataset, validation_dataset, params, activate)
        return self._send(_Calls.start_training(body))

    def training_jobs(self, *, limit: int = 50) -> list[TrainingJobRead]:
        """Newest first."""
        return self._send(_Calls.training_jobs(limit))

    def training_job(self, job_id: uuid.UUID | str) -> TrainingJobRead:
        return self._send(_Calls.training_job(job_id))

    def cancel_training(self, job_id: uuid.UUID | str) -> TrainingJobRead:
        return self._send(_Calls.cancel_training(job_id))

    def retry_training(self, job_id: uuid.UUID | str) -> TrainingJobRead:
        return self._send(_Calls.retry_training(job_id))

    def training_params(self) -> dict[str, str]:
        return self._send(_Calls.training_params())

    def adapters(self, agent: Agent | None = None) -> list[AdapterRead]:
        return self._send(_Calls.adapters(agent))

    def activate_adapter(self, adapter_id: uuid.UUID | str) -> AdapterRead:
        """Make the adapter its agent's active one (also rolls back to an earlier one)."""
        return self._send(_Calls.activate_adapter(adapter_id))

    def ready(self) -> dict[str, Any]:
        """/readyz: the database and the schema version."""
        return self._send(_Calls.ready())


class AsyncClient:
    """The asyncio client: the same methods as ``Client``, awaited."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = _settings(
            base_url, api_key, timeout, max_retries, backoff_s, max_backoff_s
        )
        self._http = httpx.AsyncClient(
            base_url=self._settings.base_url,
            headers=self._settings.headers,
            timeout=timeout,
            transport=transport,
        )

    async def _send(self, call: _Call[T]) -> T:
        for attempt in range(self._settings.max_retries + 1):
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.json
                )
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"{call.method} {call.path}: {exc}") from exc
            if response.status_code not in RETRIED or attempt == self._settings.max_retries:
                break
            await asyncio.sleep(_delay(self._settings, attempt, response))
        return _result(call, response)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def add_turns(
        self,
        session_id: str,
        user_id: str,
        turns: list[Turn],
        *,
        wait: bool = False,
        manager_adapter: str = "active",
        extractor_adapter: str = "active",
    ) -> TurnsAccepted:
        call = _Calls.add_turns(
            session_id, user_id, turns, wait, manager_adapter, extractor_adapter
        )
        return await self._send(call)

    async def list_turns(
        self, session_id: str, *, after_seq: int = -1, limit: int = 100
    ) -> TurnPage:
        return await self._send(_Calls.list_turns(session_id, after_seq, limit))

    async def ingestion(self, job_id: uuid.UUID | str) -> IngestionRead:
        return await self._send(_Calls.ingestion(job_id))

    async def list_ingestions(
        self, user_id: str, *, limit: int = 50, offset: int = 0
    ) -> IngestionPage:
        return await self._send(_Calls.list_ingestions(user_id, limit, offset))

    async def ingestion_turns(self, job_id: uuid.UUID | str) -> list[TurnRead]:
        return await self._send(_Calls.ingestion_turns(job_id))

    async def retry_ingestion(self, job_id: uuid.UUID | str) -> IngestionRead:
        return await self._send(_Calls.retry_ingestion(job_id))

    async def memories(
        self, user_id: str, *, query: str | None = None, limit: int = 50, offset: int = 0
    ) -> MemoryPage:
        return await self._send(_Calls.memories(user_id, query, limit, offset))

    async def add_memory(
        self,
        user_id: str,
        text: str,
        *,
        speaker: str | None = None,
        occurred_at: datetime | None = None,
    ) -> MemoryRead:
        return await self._send(_Calls.add_memory(user_id, text, speaker, occurred_at))

    async def memory(self, memory_id: uuid.UUID | str) -> MemoryRead:
        return await self._send(_Calls.memory(memory_id))

    async def update_memory(
        self,
        memory_id: uuid.UUID | str,
        *,
        text: str | None = None,
        speaker: str | None = None,
        occurred_at: datetime | None = None,
    ) -> MemoryRead:
        changes = _changes(text, speaker, occurred_at)
        return await self._send(_Calls.update_memory(memory_id, changes))

    async def delete_memory(self, memory_id: uuid.UUID | str) -> None:
        return await self._send(_Calls.delete_memory(memory_id))

    async def memory_history(self, memory_id: uuid.UUID | str) -> list[MemoryEventRead]:
        return await self._send(_Calls.memory_history(memory_id))

    async def users(self, *, limit: int = 100, offset: int = 0) -> UserPage:
        return await self._send(_Calls.users(limit, offset))

    async def erase_user(self, user_id: str) -> None:
        return await self._send(_Calls.erase_user(user_id))

    async def ask(
        self,
        user_id: str,
        question: str,
        *,
        top_k: int | None = None,
        answer_adapter: str = "active",
    ) -> AskResponse:
        return await self._send(_Calls.ask(user_id, question, top_k, answer_adapter))

    async def episode(self, episode_id: uuid.UUID | str) -> EpisodeRead:
        return await self._send(_Calls.episode(episode_id))

    async def feedback(
        self,
        episode_id: uuid.UUID | str,
        *,
        gold_answer: str | None = None,
        rating: int | None = None,
    ) -> FeedbackRead:
        return await self._send(_Calls.feedback(episode_id, gold_answer, rating))

    async def start_training(
        self,
        agent: Literal["answer", "manager"],
        source: Literal["episodes", "dataset"],
        *,
        dataset: str | None = None,
        validation_dataset: str | None = None,
        params: dict[str, Any] | None = None,
        activate: Literal["if_better", "always", "never"] = "if_better",
    ) -> TrainingJobRead:
        body = _training_body(agent, source, dataset, validation_dataset, params, activate)
        return await self._send(_Calls.start_training(body))

    async def training_jobs(self, *, limit: int = 50) -> list[TrainingJobRead]:
        return await self._send(_Calls.training_jobs(limit))

    async def training_job(self, job_id: uuid.UUID | str) -> TrainingJobRead:
        return await self._send(_Calls.training_job(job_id))

    async def cancel_training(self, job_id: uuid.UUID | str) -> TrainingJobRead:
        return await self._send(_Calls.cancel_training(job_id))

    async def retry_training(self, job_id: uuid.UUID | str) -> TrainingJobRead:
        return await self._send(_Calls.retry_training(job_id))

    async def training_params(self) -> dict[str, str]:
        return await self._send(_Calls.training_params())

    async def adapters(self, agent: Agent | None = None) -> list[AdapterRead]:
        return await self._send(_Calls.adapters(agent))

    async def activate_adapter(self, adapter_id: uuid.UUID | str) -> AdapterRead:
        return await self._send(_Calls.activate_adapter(adapter_id))

    async def ready(self) -> dict[str, Any]:
        return await self._send(_Calls.ready())
