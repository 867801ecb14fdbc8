"""Hot swap on the real in-process model: activating an adapter while /ask requests are in
flight fails none of them, and each response names the adapter that produced it."""

import asyncio
import uuid
from pathlib import Path

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


@pytest.fixture(scope="module")
def random_lora(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA whose weights are random (not zero), so it really changes the outputs."""
    torch.manual_seed(0)
    model, _ = load_base_model(model_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    out = tmp_path_factory.mktemp("lora") / "random"
    peft_model.save_pretrained(str(out))
    return out


@pytest.mark.model
async def test_activation_under_concurrent_asks(
    committed_client, committed_runtime, real_llm, random_lora
):
    client, runtime = committed_client, committed_runtime
    runtime.llm = real_llm
    tenant_a = await make_tenant(runtime, f"swap-{uuid.uuid4().hex[:6]}")
    for text in ("Ann adopted a cat named Tom.", "Ann lives in Lisbon.", "Ann works as a nurse."):
        response = await client.post(
            "/users/ann/memories", json={"text": text, "speaker": "Ann"}, headers=tenant_a.memory
        )
        assert response.status_code == 201
    async with runtime.sessions() as db:
        adapter = await adapters.register_candidate(
            db,
            tenant_id=tenant_a.tenant_id,
            agent="answer",
            name=f"answer-swap-{uuid.uuid4().hex[:6]}",
            base_model=BUNDLED_MODEL_NAME,
            path=str(random_lora),
            rank=4,
            validation_metrics=None,
            training_job_id=None,
        )
        await db.commit()

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
