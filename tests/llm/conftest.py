import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.llm.openai_compat import OpenAICompatBackend
from tests.fixtures.vllm_contract_server import VLLMContractServer

AdapterDirFactory = Callable[..., Path]
BackendFactory = Callable[..., OpenAICompatBackend]


@pytest.fixture
def make_adapter_dir(tmp_path: Path) -> AdapterDirFactory:
    """Writes a PEFT-style adapter directory; weights are a placeholder unless a test needs
    real ones."""

    def make(
        name: str = "adapter",
        *,
        base_model: str = "test-base-model",
        peft_type: str = "LORA",
        r: int = 8,
        **extra: Any,
    ) -> Path:
        path = tmp_path / name
        path.mkdir()
        config = {"peft_type": peft_type, "base_model_name_or_path": base_model, "r": r, **extra}
        (path / "adapter_config.json").write_text(json.dumps(config))
        (path / "adapter_model.safetensors").write_bytes(b"")
        return path

    return make


@pytest.fixture
def contract_server() -> VLLMContractServer:
    return VLLMContractServer(base_model="test-base-model")


@pytest.fixture
async def make_backend(contract_server: VLLMContractServer) -> AsyncIterator[BackendFactory]:
    """OpenAICompatBackend wired to ``contract_server`` in memory; closed after the test."""
    made: list[OpenAICompatBackend] = []

    def make(**overrides: Any) -> OpenAICompatBackend:
        options: dict[str, Any] = {
            "base_url": "http://vllm.test/v1",
            "base_model": contract_server.base_model,
            "api_key": None,
            "timeout_s": 5.0,
            "max_retries": 2,
            "max_lora_rank": 16,
            "transport": httpx.ASGITransport(app=contract_server.app),
            "backoff_s": 0.001,
            **overrides,
        }
        backend = OpenAICompatBackend(**options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()
