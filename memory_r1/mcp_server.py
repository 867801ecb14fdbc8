"""An MCP server that gives an agent one user's memory in the Memory-R1 service.

It is a client of the HTTP API (through ``memory_r1.client``), holding one API key and one
user id: every tool reads and writes that user's bank only, with that key's scopes. Run it
with ``memory-r1 mcp --user ID`` over stdio (the default, for desktop agents) or streamable
HTTP (``--transport http``; it binds 127.0.0.1 by default and has no authentication of its
own, since whoever reaches it acts with its API key).
"""

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from memory_r1.client import AsyncClient, MemoryR1Error, Turn

ToolFn = Callable[..., Awaitable[Any]]


class TurnArg(BaseModel):
    speaker: str = Field(description="Who said it, e.g. 'user' or a name.")
    text: str
    occurred_at: datetime | None = Field(None, description="When it was said (ISO 8601).")


class MemoryHit(BaseModel):
    id: str
    text: str
    speaker: str | None
    occurred_at: datetime | None
    score: float | None = Field(None, description="Cosine similarity to the query.")


class Remembered(BaseModel):
    ingestion_job_id: str
    status: str = Field(description="queued (a worker ingests it) or the finished job's status.")
    operations: list[dict[str, Any]] | None = Field(
        None, description="With wait=true: the ADD / UPDATE / DELETE the Manager applied."
    )


class Answer(BaseModel):
    answer: str
    episode_id: str = Field(description="Pass to the feedback tool to grade this answer.")
    memories: list[MemoryHit] = Field(description="The memories the answer was drawn from.")


class FeedbackGiven(BaseModel):
    feedback_id: str
    episode_id: str


def _tool(server: MCPServer[Any], annotations: ToolAnnotations) -> Callable[[ToolFn], ToolFn]:
    """Register a tool whose service errors reach the agent with the server's detail (other
    exceptions count as crashes, which the SDK reports without their text)."""

    def register(fn: ToolFn) -> ToolFn:
        @functools.wraps(fn)
        async def reported(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except MemoryR1Error as exc:
                raise ToolError(str(exc)) from exc

        server.add_tool(reported, annotations=annotations)
        return fn

    return register


def build_server(client: AsyncClient, user_id: str) -> MCPServer[Any]:
    """The tools, bound to ``user_id``; ``client`` is closed when the server stops."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.close()

    server: MCPServer[Any] = MCPServer(
        name="memory-r1",
        instructions=(
            f"Long-term memory of user '{user_id}'. Call remember with what the user says, "
            "search_memories or ask before answering from memory, and feedback when you learn "
            "whether an answer was right."
        ),
        lifespan=lifespan,
    )

    @_tool(server, ToolAnnotations(readOnlyHint=False, idempotentHint=False))
    async def remember(
        turns: list[TurnArg], session_id: str = "mcp", wait: bool = False
    ) -> Remembered:
        """Store conversation turns; the Memory Manager turns their facts into memories
        (ADD / UPDATE / DELETE). wait=true ingests before returning (slower)."""
        accepted = await client.add_turns(
            session_id,
            user_id,
            [Turn.model_validate(t.model_dump()) for t in turns],
            wait=wait,
        )
        return Remembered(
            ingestion_job_id=str(accepted.ingestion_job_id),
            status=accepted.status,
            operations=accepted.operations,
        )

    @_tool(server, ToolAnnotations(readOnlyHint=True))
    async def search_memories(query: str, limit: int = 10) -> list[MemoryHit]:
        """The user's memories most similar to the query, best first."""
        page = await client.memories(user_id, query=query, limit=limit)
        return [_hit(m.id, m.text, m.speaker, m.occurred_at, m.score) for m in page.items]

    @_tool(server, ToolAnnotations(readOnlyHint=False))
    async def ask(question: str) -> Answer:
        """Answer a question from the user's memories (the Answer Agent picks the relevant
        ones). Grade the answer later with the feedback tool and its episode_id."""
        reply = await client.ask(user_id, question)
        return Answer(
            answer=reply.answer,
            episode_id=str(reply.episode_id),
            memories=[_hit(m.id, m.text, m.speaker, m.occurred_at) for m in reply.memories],
        )

    @_tool(server, ToolAnnotations(destructiveHint=True, idempotentHint=True))
    async def forget(memory_id: str) -> str:
        """Delete one of the user's memories (it stays in the memory's history)."""
        memory = await client.memory(memory_id)
        if memory.user_id != user_id:
            raise ToolError(f"memory {memory_id} is not one of {user_id}'s memories")
        await client.delete_memory(memory_id)
        return f"forgot memory {memory_id}"

    @_tool(server, ToolAnnotations(readOnlyHint=False))
    async def feedback(
        episode_id: str, gold_answer: str | None = None, rating: Literal[-1, 0, 1] | None = None
    ) -> FeedbackGiven:
        """Grade an answer from ask: the correct answer (gold_answer), a rating (1 right,
        0 unsure, -1 wrong), or both. The service trains its agents on this."""
        episode = await client.episode(episode_id)
        if episode.user_id != user_id:
            raise ToolError(f"episode {episode_id} is not one of {user_id}'s answers")
        given = await client.feedback(episode_id, gold_answer=gold_answer, rating=rating)
        return FeedbackGiven(feedback_id=str(given.id), episode_id=str(given.episode_id))

    return server


def _hit(
    memory_id: uuid.UUID,
    text: str,
    speaker: str | None,
    occurred_at: datetime | None,
    score: float | None = None,
) -> MemoryHit:
    return MemoryHit(
        id=str(memory_id), text=text, speaker=speaker, occurred_at=occurred_at, score=score
    )


def run(
    user_id: str,
    *,
    base_url: str | None,
    api_key: str | None,
    transport: Literal["stdio", "http"],
    host: str,
    port: int,
) -> None:
    server = build_server(AsyncClient(base_url, api_key), user_id)
    match transport:
        case "stdio":
            server.run("stdio")
        case "http":
            server.run("streamable-http", host=host, port=port)
