"""The OpenAI-compatible embedder: batching, normalisation, retries and their limits."""

import json

import httpx
import pytest

from app.core.config import EmbeddingBackendKind, EmbeddingSettings
from app.core.errors import BadUpstreamResponse, Upstream
from app.embeddings import OpenAICompatEmbedder


def settings(**overrides) -> EmbeddingSettings:
    base = {"backend": EmbeddingBackendKind.openai, "max_retries": 2, "batch_size": 2}
    return EmbeddingSettings(**{**base, **overrides})


def embedder(statuses: list[int], seen: list[list[str]]) -> OpenAICompatEmbedder:
    replies = iter(statuses)

    def handle(request: httpx.Request) -> httpx.Response:
        status = next(replies)
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "busy"}})
        inputs = json.loads(request.content)["input"]
        seen.append(inputs)
        data = [{"index": i, "embedding": [3.0, 4.0] + [0.0] * 382} for i in range(len(inputs))]
        return httpx.Response(200, json={"data": data})

    return OpenAICompatEmbedder(settings(), transport=httpx.MockTransport(handle))


async def test_retries_a_server_error_then_batches_and_normalises() -> None:
    seen: list[list[str]] = []
    client = embedder([500, 200, 200], seen)
    vectors = await client.embed(["a", "b", "c"])
    assert seen == [["a", "b"], ["c"]]
    assert len(vectors) == 3
    assert vectors[0][:2] == pytest.approx([0.6, 0.8])


async def test_gives_up_after_the_retries_with_upstream() -> None:
    client = embedder([503, 503, 503], [])
    with pytest.raises(Upstream, match="3 attempt"):
        await client.embed(["a"])


async def test_a_client_error_is_not_retried() -> None:
    client = embedder([400], [])
    with pytest.raises(BadUpstreamResponse, match="busy"):
        await client.embed(["a"])
