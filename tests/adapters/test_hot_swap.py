"""Hot swap on the real in-process model: activating an adapter while /ask requests are in
flight fails none of them, and each response names the adapter that produced it; from one
adapter to another, requests in the engine across the swap finish on the one they started
with and every later one runs on the new one."""

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model

from app.adapters import service as adapters
from app.core.config import Settings
from app.llm.bundled import BUNDLED_MODEL_NAME, ensure_bundled_model
from app.llm.inprocess import InProcessBackend
from tests.conftest import make_tenant
from training.model import load_base_model


@pytest.fixture(scope="module")
def model_dir(settings: Settings) -> Path:
    return ensure_bundled_model(settings.data_dir)


@pytest.fixture(scope="module")
def real_llm(serving_model_dir: Path) -> InProcessBackend:
    return InProcessBackend(
        serving_model_dir, BUNDLED_MODEL_NAME, max_batch_size=4, max_lora_rank=64
    )


def random_lora_at(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA whose weights are random (not zero), so it really changes the outputs."""
    torch.manual_seed(seed)
    model, _ = load_base_model(model_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def random_lora(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_lora_at(model_dir, tmp_path_factory.mktemp("lora") / "random", seed=0)


@pytest.fixture(scope="module")
def other_lora(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_lora_at(model_dir, tmp_path_factory.mktemp("lora") / "other", seed=1)


async def ann_with_adapters(
    client: Any, runtime: Any, label: str, *paths: Path
) -> tuple[Any, list[Any]]:
    """A tenant whose user Ann has three memories, and answer adapters registered (as
    candidates) for ``paths``."""
    tenant = await make_tenant(runtime, f"{label}-{uuid.uuid4().hex[:6]}")
    for text in ("Ann adopted a cat named Tom.", "Ann lives in Lisbon.", "Ann works as a nurse."):
        response = await client.post(
            "/users/ann/memories", json={"text": text, "speaker": "Ann"}, headers=tenant.memory
        )
        assert response.status_code == 201
    registered = []
    async with runtime.sessions() as db:
        for n, path in enumerate(paths):
            registered.append(
                await adapters.register_candidate(
                    db,
                    tenant_id=tenant.tenant_id,
                    agent="answer",
                    name=f"answer-{label}-{n}-{uuid.uuid4().hex[:6]}",
                    base_model=BUNDLED_MODEL_NAME,
                    path=str(path),
                    rank=4,
                    validation_metrics=None,
                    training_job_id=None,
                )
            )
        await db.commit()
    return tenant, registered


@pytest.mark.model
async def test_activation_under_concurrent_asks(
    committed_client, committed_runtime, real_llm, random_lora
):
    client, runtime = committed_client, committed_runtime
    runtime.llm = real_llm
    tenant_a, [adapter] = await ann_with_adapters(client, runtime, "swap", random_lora)

    async def ask() -> dict:
        response = await client.post(
            "/ask",
            json={"user_id": "ann", "question": "Where does Ann live?", "top_k": 3},
            headers=tenant_a.memory,
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def activate_midway() -> None:
        await asyncio.sleep(0.5)
        response = await client.post(
            f"/admin/adapters/{adapter.id}/activate", headers=tenant_a.admin
        )
        assert response.status_code == 200, response.text

    results = await asyncio.gather(*(ask() for _ in range(6)), activate_midway())
    answers = [r for r in results if r is not None]
    assert len(answers) == 6
    assert {a["adapter"] for a in answers} <= {None, adapter.name}
    after = await ask()
    assert after["adapter"] == adapter.name


class Recorded:
    """The backend, recording each completion: the adapter asked for, the adapter the engine
    reports, and when it started and ended."""

    def __init__(self, llm: InProcessBackend) -> None:
        self.llm = llm
        self.started: list[float] = []
        self.calls: list[tuple[str | None, str | None, float, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    async def complete(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        started = time.monotonic()
        self.started.append(started)
        done = await self.llm.complete(messages, **kwargs)
        self.calls.append((kwargs.get("adapter"), done.adapter, started, time.monotonic()))
        return done


@pytest.mark.model
async def test_a_swap_from_one_adapter_to_another_under_load(
    committed_client, committed_runtime, real_llm, random_lora, other_lora
):
    client, runtime = committed_client, committed_runtime
    runtime.llm = recorded = Recorded(real_llm)
    tenant, [a, b] = await ann_with_adapters(client, runtime, "swap-ab", random_lora, other_lora)

    async def activate(adapter_id: uuid.UUID) -> tuple[float, float]:
        """When the activation was asked for, and when it was done."""
        asked = time.monotonic()
        response = await client.post(f"/admin/adapters/{adapter_id}/activate", headers=tenant.admin)
        assert response.status_code == 200, response.text
        return asked, time.monotonic()

    async def ask(adapter: str = "active") -> dict[str, Any]:
        response = await client.post(
            "/ask",
            json={
                "user_id": "ann",
                "question": "Where does Ann live?",
                "top_k": 3,
                "answer_adapter": adapter,
            },
            headers=tenant.memory,
        )
        assert response.status_code == 200, response.text
        return response.json()

    await activate(a.id)
    # B is loaded already (tried by name), so activating it only moves the pointer: loading
    # an adapter waits for the requests in the engine to finish, moving the pointer does not.
    assert (await ask(str(b.id)))["adapter"] == b.name
    recorded.started.clear()
    recorded.calls.clear()
    before = [asyncio.create_task(ask()) for _ in range(6)]
    while not recorded.started:  # the first request is in the engine
        await asyncio.sleep(0.01)
    asked, swapped = await activate(b.id)
    after = [asyncio.create_task(ask()) for _ in range(3)]
    replies = await asyncio.gather(*before, *after)

    # Each reply names the adapter the engine ran it under, which is the one it asked for.
    assert all(asked == ran for asked, ran, _, _ in recorded.calls)
    assert Counter(r["adapter"] for r in replies) == Counter(ran for _, ran, _, _ in recorded.calls)
    # Requests in the engine before the swap was asked for and still there once it was done
    # finished on A, which they started with; every request sent after it ran on B.
    across = [ran for _, ran, start, end in recorded.calls if start < asked and end > swapped]
    assert across and set(across) == {a.name}
    assert {r["adapter"] for r in replies[-3:]} == {b.name}
