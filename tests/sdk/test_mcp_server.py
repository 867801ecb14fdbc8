"""The MCP server, driven by the official SDK's client: in process, and as `memory-r1 mcp`
over stdio, against the real app on a socket."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from app.core.config import Settings
from memory_r1.client import AsyncClient
from memory_r1.mcp_server import build_server
from tests.api.helpers import add_op, answered, extracted
from tests.fixtures.served import Served, served_app
from tests.test_supervise import free_port


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[Served]:
    with served_app(settings) as served:
        yield served


def _structured(result) -> object:  # type: ignore[no-untyped-def]
    assert not result.is_error, result.content
    return result.structured_content


async def test_tools_remember_search_ask_feedback_forget(served: Served) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    server = build_server(AsyncClient(served.base_url, served.key), user)
    async with Client(server) as mcp:
        names = {t.name for t in (await mcp.list_tools()).tools}
        assert names == {"remember", "search_memories", "ask", "forget", "feedback"}

        served.llm.push(extracted("Alice adopted Buddy."), add_op())
        done = _structured(
            await mcp.call_tool(
                "remember",
                {"turns": [{"speaker": "Alice", "text": "I adopted Buddy."}], "wait": True},
            )
        )
        assert done["status"] == "succeeded" and done["operations"][0]["op"] == "ADD"

        hits = _structured(await mcp.call_tool("search_memories", {"query": "dog"}))["result"]
        assert [h["text"].split(", ", 1)[1] for h in hits] == ["Alice adopted Buddy."]

        served.llm.push(answered("Buddy", "m1"))
        answer = _structured(await mcp.call_tool("ask", {"question": "My dog's name?"}))
        assert answer["answer"] == "Buddy"
        given = _structured(
            await mcp.call_tool(
                "feedback", {"episode_id": answer["episode_id"], "gold_answer": "Buddy"}
            )
        )
        assert given["episode_id"] == answer["episode_id"]

        await mcp.call_tool("forget", {"memory_id": hits[0]["id"]})
        left = _structured(await mcp.call_tool("search_memories", {"query": "dog"}))["result"]
        assert left == []

        # another user's memory, same tenant: refused
        other = await AsyncClient(served.base_url, served.key).add_memory("someone-else", "x")
        refused = await mcp.call_tool("forget", {"memory_id": str(other.id)})
        assert refused.is_error and "not one of" in json.dumps(refused.model_dump(mode="json"))


async def test_memory_r1_mcp_over_stdio(served: Served) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    await AsyncClient(served.base_url, served.key).add_memory(user, "Alice lives in Lisbon.")
    command = Path(sys.executable).with_name("memory-r1")
    params = StdioServerParameters(
        command=str(command),
        args=["mcp", "--user", user, "--url", served.base_url],
        env={**os.environ, "MEMR1_API_KEY": served.key},
    )
    async with Client(params) as mcp:
        hits = _structured(await mcp.call_tool("search_memories", {"query": "Lisbon"}))["result"]
    assert [h["text"] for h in hits] == ["Alice lives in Lisbon."]


async def test_memory_r1_mcp_over_streamable_http(served: Served) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    await AsyncClient(served.base_url, served.key).add_memory(user, "Alice works as a nurse.")
    port = free_port()
    command = Path(sys.executable).with_name("memory-r1")
    server = subprocess.Popen(
        [str(command), "mcp", "--user", user, "--url", served.base_url]
        + ["--transport", "http", "--port", str(port)],
        env={**os.environ, "MEMR1_API_KEY": served.key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # until it listens
            assert server.poll() is None, server.stderr.read() if server.stderr else b""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "memory-r1 mcp did not listen in 60 s"
                await asyncio.sleep(0.2)
        async with Client(f"http://127.0.0.1:{port}/mcp") as mcp:
            names = {t.name for t in (await mcp.list_tools()).tools}
            hits = _structured(await mcp.call_tool("search_memories", {"query": "job"}))
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "remember" in names and "ask" in names
    assert [h["text"] for h in hits["result"]] == ["Alice works as a nurse."]
