"""The OpenAI-compatible backend against a real third-party server: llama-cpp-python's own
(``python -m llama_cpp.server``) serving the bundled model. It takes a schema only as
``{"type": "json_object", "schema": ...}``, so ``structured_output=json_object`` is the
setting for it; OpenAI's ``json_schema`` form fails every call."""

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from app.core.config import StructuredOutput
from app.core.errors import Upstream
from app.llm.bundled import BUNDLED_MODEL_NAME
from app.llm.openai_compat import OpenAICompatBackend
from app.memory.extractor import extract_facts
from tests.test_supervise import free_port, wait_for

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def llama_cpp_server(serving_model_dir: Path) -> Iterator[str]:
    [gguf] = serving_model_dir.glob("*.gguf")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--model_alias",
            BUNDLED_MODEL_NAME,
            "--n_ctx",
            "4096",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}/v1"

    def up() -> bool:
        try:
            return httpx.get(f"{base_url}/models").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(up, timeout=120), "llama_cpp.server did not start"
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=30)


def backend(base_url: str, form: StructuredOutput) -> OpenAICompatBackend:
    return OpenAICompatBackend(
        base_url, BUNDLED_MODEL_NAME, None, 120.0, 0, 64, structured_output=form
    )


async def test_json_object_with_a_schema_extracts_facts(llama_cpp_server: str) -> None:
    llm = backend(llama_cpp_server, StructuredOutput.json_object)
    try:
        extraction = await extract_facts(
            llm,
            speaker="Ann",
            text="I adopted a dog named Buddy.",
            occurred_at=datetime(2026, 12, 2, tzinfo=UTC),
        )
    finally:
        await llm.close()
    assert extraction.error is None, extraction.error
    assert extraction.completion is not None
    assert isinstance(extraction.completion.parsed, dict)
    assert isinstance(extraction.completion.parsed["facts"], list)


async def test_the_openai_form_is_refused_by_this_server(llama_cpp_server: str) -> None:
    llm = backend(llama_cpp_server, StructuredOutput.json_schema)
    try:
        # It answers its validation error with a 500, which reads as an outage (503).
        with pytest.raises(Upstream, match="Input should be 'text' or 'json_object'"):
            await llm.complete(
                [{"role": "user", "content": "Say hi."}],
                json_schema={"type": "object", "properties": {"hi": {"type": "string"}}},
                max_tokens=16,
            )
    finally:
        await llm.close()
