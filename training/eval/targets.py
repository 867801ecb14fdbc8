"""What an evaluation run asks: the memory service itself, or a baseline without a memory bank.

Every target answers with the same Answer Agent prompt, so a comparison between them measures
the memory, not the prompt:

- :class:`ServiceTarget` goes through the real service over HTTP (a remote server, or the ASGI
  app in process): the Manager builds a bank from the turns, the Answer Agent answers from it.
- :class:`FullContextTarget` shows the Answer Agent every turn of the conversation, cut to the
  model's context window.
- :class:`PlainRagTarget` shows it the raw turns most similar to the question.
"""

import asyncio
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from app.core.errors import Upstream
from app.llm.backend import LLMBackend
from app.memory.answer import AnswerResult, answer_question, split_per_speaker
from app.memory.prompts import ANSWER_MAX_TOKENS, answer_messages
from app.memory.schemas import MemoryView, memory_key, rekey
from training.eval.loaders import Conversation

MAX_TURNS_PER_REQUEST = 200
DEFAULT_TOP_K = 60
# The full-context cut leaves this much room for the question (LoCoMo's are under 200).
QUESTION_ROOM_CHARS = 300

# Raw turns need stable UUIDs to be shown as MemoryViews; deriving them from the dia_id keeps
# the same turn the same memory across runs.
_TURN_NAMESPACE = uuid.UUID("6f1c2b8e-5d0a-4a51-9a43-3c1f6f2a7e10")


class TargetError(Exception):
    """A question or a conversation could not be done this time (server or model unavailable).

    Nothing is recorded for it, so the next run over the same results directory retries it."""


class ServiceRejected(Exception):
    """The service refused a request (4xx): a wrong key, adapter id or request, not bad luck,
    so the run stops instead of failing every question the same way."""


@dataclass(frozen=True)
class ShownMemory:
    """A memory the Answer Agent relied on. For baselines ``id`` is the turn's dia_id."""

    id: str
    text: str
    speaker: str | None
    occurred_at: str | None  # ISO 8601


@dataclass(frozen=True)
class TargetAnswer:
    answer: str
    selected: list[ShownMemory]
    model: str | None
    adapter: str | None
    episode_id: str | None = None
    error: str | None = None  # the model's output was unusable; scored as the empty answer
    note: str | None = None  # something a reader of the results must know, e.g. truncation


@dataclass(frozen=True)
class PrepareReport:
    operations: int | None = None  # memory operations the Manager applied, when known
    notes: list[str] = field(default_factory=list)


class Target(Protocol):
    @property
    def name(self) -> str:
        """The configuration name results are filed under."""
        ...

    @property
    def bank_key(self) -> str | None:
        """Targets with the same key build the same memory bank from a conversation, so the
        harness ingests it once and records that; None means prepare() keeps nothing outside
        the process and runs again in every run that still has questions to ask."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a later run needs to repeat this one: kind, adapters, retrieval settings."""
        ...

    async def prepare(self, conversation: Conversation, user_id: str) -> PrepareReport: ...

    async def answer(
        self, conversation: Conversation, user_id: str, question: str
    ) -> TargetAnswer: ...


class Embedder(Protocol):
    async def embed(self, texts: list[str]) -> list[list[float]]: ...


# --- the service ------------------------------------------------------------------------------


def service_client(
    *,
    base_url: str | None = None,
    app: Any = None,
    api_key: str | None,
    timeout_s: float = 3600.0,
) -> httpx.AsyncClient:
    """A client for a remote server (``base_url``) or the ASGI ``app`` in process.

    The read timeout is generous because an ingestion request with ``wait=true`` returns only
    once the Manager has processed every turn of a session."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(timeout_s, connect=30.0)
    if app is not None:
        transport = httpx.ASGITransport(app=app)
        return httpx.AsyncClient(
            transport=transport, base_url="http://svc", headers=headers, timeout=timeout
        )
    if base_url is None:
        raise ValueError("service_client needs a base_url (remote server) or an app (in process)")
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)


class ServiceTarget:
    """The service, configured by which extractor, Manager and Answer Agent adapters it uses.

    Adapters are ``"base"``, ``"active"`` or an adapter id. Targets with the same extractor
    and Manager write the same bank, which is built once."""

    def __init__(
        self,
        name: str,
        client: httpx.AsyncClient,
        *,
        manager_adapter: str,
        answer_adapter: str,
        extractor_adapter: str = "base",
        top_k: int = DEFAULT_TOP_K,
        ask_retries: int = 2,
        retry_backoff_s: float = 2.0,
    ) -> None:
        self.name = name
        self.bank_key = f"service-extractor-{extractor_adapter}-manager-{manager_adapter}"
        self._client = client
        self.manager_adapter = manager_adapter
        self.answer_adapter = answer_adapter
        self.extractor_adapter = extractor_adapter
        self.top_k = top_k
        self._ask_retries = ask_retries
        self._backoff_s = retry_backoff_s

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "service",
            "extractor_adapter": self.extractor_adapter,
            "manager_adapter": self.manager_adapter,
            "answer_adapter": self.answer_adapter,
            "top_k": self.top_k,
        }

    async def prepare(self, conversation: Conversation, user_id: str) -> PrepareReport:
        """One request per session (chunked at the service's limit), in session order. Not
        retried: a session half stored would be stored twice."""
        operations = 0
        for session in conversation.sessions:
            turns = [
                {"speaker": t.speaker, "text": t.text, "occurred_at": t.occurred_at.isoformat()}
                for t in session.turns
            ]
            for start in range(0, len(turns), MAX_TURNS_PER_REQUEST):
                body = {
                    "user_id": user_id,
                    "turns": turns[start : start + MAX_TURNS_PER_REQUEST],
                    "manager_adapter": self.manager_adapter,
                    "extractor_adapter": self.extractor_adapter,
                }
                reply = await self._post(
                    f"/sessions/{user_id}-s{session.index}/turns", body, params={"wait": "true"}
                )
                if reply.get("status") == "failed":
                    raise TargetError(
                        f"ingestion of session {session.index} failed: "
                        f"job {reply.get('ingestion_job_id')}"
                    )
                operations += len(reply.get("operations") or [])
        return PrepareReport(operations=operations)

    async def answer(self, conversation: Conversation, user_id: str, question: str) -> TargetAnswer:
        body = {
            "user_id": user_id,
            "question": question,
            "top_k": self.top_k,
            "answer_adapter": self.answer_adapter,
        }
        reply = await self._post("/ask", body, retries=self._ask_retries)
        return TargetAnswer(
            answer=str(reply.get("answer") or ""),
            selected=[
                ShownMemory(
                    id=str(m["id"]),
                    text=str(m["text"]),
                    speaker=m.get("speaker"),
                    occurred_at=m.get("occurred_at"),
                )
                for m in reply.get("memories") or []
            ],
            model=reply.get("model"),
            adapter=reply.get("adapter"),
            episode_id=None if reply.get("episode_id") is None else str(reply["episode_id"]),
        )

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        *,
        params: dict[str, str] | None = None,
        retries: int = 0,
    ) -> dict[str, Any]:
        problem = ""
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                response = await self._client.post(path, json=body, params=params)
            except httpx.TransportError as exc:
                problem = f"{path}: {type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500 or response.status_code == 429:
                problem = f"{path}: HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code >= 400:
                raise ServiceRejected(f"{path}: HTTP {response.status_code}: {response.text[:500]}")
            reply: dict[str, Any] = response.json()
            return reply
        raise TargetError(problem)


# --- baselines without a memory bank ----------------------------------------------------------


def turn_views(conversation: Conversation) -> list[MemoryView]:
    """Every turn as a memory, in conversation order, keyed m1..mN."""
    return [
        MemoryView(
            key=memory_key(i),
            id=uuid.uuid5(_TURN_NAMESPACE, f"{conversation.sample_id}/{turn.dia_id}"),
            text=turn.text,
            speaker=turn.speaker,
            occurred_at=turn.occurred_at,
        )
        for i, turn in enumerate(conversation.turns)
    ]


def _dia_ids(conversation: Conversation) -> dict[uuid.UUID, str]:
    return {
        uuid.uuid5(_TURN_NAMESPACE, f"{conversation.sample_id}/{t.dia_id}"): t.dia_id
        for t in conversation.turns
    }


async def _answer_from(
    llm: LLMBackend,
    question: str,
    shown: list[MemoryView],
    dia_ids: dict[uuid.UUID, str],
    adapter: str | None,
) -> tuple[AnswerResult, list[ShownMemory]]:
    try:
        result = await answer_question(llm, question, shown, adapter=adapter)
    except Upstream as exc:
        raise TargetError(f"model unavailable: {exc.detail}") from exc
    selected = [
        ShownMemory(
            id=dia_ids[m.id],
            text=m.text,
            speaker=m.speaker,
            occurred_at=None if m.occurred_at is None else m.occurred_at.isoformat(),
        )
        for m in result.selected
    ]
    return result, selected


def _target_answer(
    result: AnswerResult, selected: list[ShownMemory], note: str | None = None
) -> TargetAnswer:
    completion = result.completion
    return TargetAnswer(
        answer=result.answer or "",
        selected=selected,
        model=None if completion is None else completion.model,
        adapter=None if completion is None else completion.adapter,
        error=result.error,
        note=note,
    )


def _prompt_chars(question: str, memories: list[MemoryView]) -> int:
    return sum(len(m["content"]) for m in answer_messages(question, memories))


class FullContextTarget:
    """The Answer Agent sees the whole conversation (the latest turns that fit its window).

    Token counts are estimated from characters: the backend seam does not expose a tokenizer,
    and a conservative ratio keeps the prompt inside the window."""

    bank_key = None

    def __init__(
        self,
        llm: LLMBackend,
        *,
        name: str = "full-context",
        adapter: str | None = None,
        context_tokens: int = 8192,
        chars_per_token: float = 3.0,
        reserve_tokens: int = ANSWER_MAX_TOKENS + 64,
    ) -> None:
        if context_tokens <= reserve_tokens:
            raise ValueError(
                f"context_tokens ({context_tokens}) must exceed the {reserve_tokens} tokens "
                "kept for the answer and the chat template"
            )
        self.name = name
        self._llm = llm
        self.adapter = adapter
        self.context_tokens = context_tokens
        self.chars_per_token = chars_per_token
        self._budget_chars = int((context_tokens - reserve_tokens) * chars_per_token)
        self._turns: dict[str, tuple[list[MemoryView], dict[uuid.UUID, str]]] = {}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "full-context",
            "answer_adapter": self.adapter or "base",
            "context_tokens": self.context_tokens,
            "chars_per_token": self.chars_per_token,
        }

    async def prepare(self, conversation: Conversation, user_id: str) -> PrepareReport:
        self._turns[conversation.sample_id] = (turn_views(conversation), _dia_ids(conversation))
        return PrepareReport()

    def fit(self, question: str, views: list[MemoryView]) -> list[MemoryView]:
        """The longest run of latest turns whose prompt fits the budget with room for a
        question of ``QUESTION_ROOM_CHARS`` (or this one, if longer). Every shorter question
        gets the same turns, so the prompts of a conversation's questions differ only at the
        end and the model reuses the cache of the turns between them."""
        room = "?" * max(len(question), QUESTION_ROOM_CHARS)
        low, high = 0, len(views)
        while low < high:  # binary search: the prompt grows with every turn kept
            keep = (low + high + 1) // 2
            if _prompt_chars(room, rekey(views[-keep:])) <= self._budget_chars:
                low = keep
            else:
                high = keep - 1
        return rekey(views[len(views) - low :])

    async def answer(self, conversation: Conversation, user_id: str, question: str) -> TargetAnswer:
        views, dia_ids = self._turns[conversation.sample_id]
        shown = self.fit(question, views)
        note = None
        if len(shown) < len(views):
            note = (
                f"context truncated to the last {len(shown)} of {len(views)} turns "
                f"(~{self.context_tokens}-token window)"
            )
        result, selected = await _answer_from(self._llm, question, shown, dia_ids, self.adapter)
        return _target_answer(result, selected, note)


def _normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class PlainRagTarget:
    """The Answer Agent sees the raw turns most similar to the question, retrieved the way the
    service retrieves memories (best ``top_k / 2`` per speaker, by cosine similarity)."""

    bank_key = None

    def __init__(
        self,
        llm: LLMBackend,
        embedder: Embedder,
        *,
        name: str = "rag",
        adapter: str | None = None,
        top_k: int = DEFAULT_TOP_K,
        embed_batch: int = 128,
    ) -> None:
        self.name = name
        self._llm = llm
        self._embedder = embedder
        self.adapter = adapter
        self.top_k = top_k
        self._embed_batch = embed_batch
        self._index: dict[
            str, tuple[list[MemoryView], list[list[float]], dict[uuid.UUID, str]]
        ] = {}

    def describe(self) -> dict[str, Any]:
        return {"kind": "rag", "answer_adapter": self.adapter or "base", "top_k": self.top_k}

    async def prepare(self, conversation: Conversation, user_id: str) -> PrepareReport:
        views = turn_views(conversation)
        texts = [f"{v.speaker}: {v.text}" for v in views]
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._embed_batch):
            vectors.extend(await self._embed(texts[start : start + self._embed_batch]))
        self._index[conversation.sample_id] = (
            views,
            [_normalised(v) for v in vectors],
            _dia_ids(conversation),
        )
        return PrepareReport()

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        try:
            return await self._embedder.embed(texts)
        except Upstream as exc:
            raise TargetError(f"embedder unavailable: {exc.detail}") from exc

    async def retrieve(self, conversation: Conversation, question: str) -> list[MemoryView]:
        views, vectors, _ = self._index[conversation.sample_id]
        (query,) = await self._embed([question])
        query = _normalised(query)
        scores = [sum(q * x for q, x in zip(query, v, strict=True)) for v in vectors]
        ranked = [views[i] for i in sorted(range(len(views)), key=lambda i: -scores[i])]
        speakers = (conversation.speaker_a, conversation.speaker_b)
        return split_per_speaker(ranked, speakers, per_speaker=max(1, self.top_k // 2))

    async def answer(self, conversation: Conversation, user_id: str, question: str) -> TargetAnswer:
        shown = await self.retrieve(conversation, question)
        _, _, dia_ids = self._index[conversation.sample_id]
        result, selected = await _answer_from(self._llm, question, shown, dia_ids, self.adapter)
        return _target_answer(result, selected)
