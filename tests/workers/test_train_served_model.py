"""With a model server (vLLM), a training job trains the model that server serves: read from
the Hugging Face cache the server downloaded it into, recorded under the server's model id,
validated through the server itself, and loadable there afterwards."""

import json
import uuid
from pathlib import Path

import pytest
from safetensors.torch import load_file

from app.core.config import LLMBackendKind, LLMSettings, Settings
from app.core.db import transaction
from app.llm.backend import validate_adapter_dir
from app.llm.factory import openai_backend
from app.models import Adapter, TrainingJob
from tests.conftest import make_tenant
from tests.fixtures.vllm_contract_server import Reply, VLLMContractServer, serve_on_localhost
from tests.workers.test_train_worker import TINY, subset
from training.model import training_model_dir
from training.smoke import tiny_model
from workers.tasks.train import train_job

pytestmark = pytest.mark.model

SERVED = "acme/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HIDDEN = 64


def hub_cache_with_tiny_model(cache: Path, bundled_model_dir: Path) -> Path:
    """A Hugging Face cache as a model server leaves it, holding ``SERVED``: a randomly
    initialised model of the bundled model's architecture, much narrower, with its tokenizer."""
    repo = cache / f"models--{SERVED.replace('/', '--')}"
    snapshot = tiny_model(bundled_model_dir, repo / "snapshots" / COMMIT, hidden=HIDDEN)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, bundled_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    snapshot = hub_cache_with_tiny_model(cache, bundled_model_dir)
    # Read by huggingface_hub here and in the spawned training process.
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    return snapshot


def served(url: str = "http://127.0.0.1:9/v1") -> LLMSettings:
    return LLMSettings(backend=LLMBackendKind.openai, base_url=url, model=SERVED, max_retries=1)


def test_the_served_model_is_read_from_the_hugging_face_cache(
    hub_cache: Path, tmp_path: Path
) -> None:
    assert training_model_dir(served(), tmp_path) == hub_cache


def test_a_served_model_missing_from_the_cache_names_the_fix(
    hub_cache: Path, tmp_path: Path
) -> None:
    missing = served().model_copy(update={"model": "acme/not-downloaded"})
    with pytest.raises(ValueError, match="not in the Hugging Face cache.*MEMR1_LLM__MODEL_PATH"):
        training_model_dir(missing, tmp_path)


async def test_a_job_trains_validates_and_registers_the_served_model(
    committed_client, committed_runtime, settings: Settings, hub_cache: Path, tmp_path: Path
) -> None:
    vllm = VLLMContractServer(
        base_model=SERVED, default_reply=Reply('{"selected": [], "answer": "Lisbon"}')
    )
    tenant = await make_tenant(committed_runtime, f"served-{uuid.uuid4().hex[:6]}")
    response = await committed_client.post(
        "/admin/training-jobs",
        json={
            "agent": "answer",
            "source": "dataset",
            "dataset": subset(tmp_path, "train.json", "locomo_train_conv26.json", 4),
            "validation_dataset": subset(tmp_path, "val.json", "locomo_val_conv30.json", 2),
            "params": {**TINY, "lora_r": 8, "lora_alpha": 16},
            "activate": "always",
        },
        headers=tenant.admin,
    )
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["id"])

    async with serve_on_localhost(vllm.app) as url:
        trainer = settings.model_copy(
            update={"llm": served(url), "adapters_dir": tmp_path / "adapters"}
        )
        await train_job(committed_runtime.sessions, trainer, job_id)
        async with transaction(committed_runtime.sessions) as db:
            job = await db.get(TrainingJob, job_id)
            assert job is not None and job.status == "succeeded", (job.error, job.logs)
            adapter = await db.get(Adapter, job.adapter_id)
            assert adapter is not None

        # Registered under the id the server serves, and loadable there.
        assert adapter.base_model == SERVED
        path = Path(adapter.path)
        validate_adapter_dir(path, base_model=SERVED, max_lora_rank=64)
        serving = openai_backend(served(url))
        try:
            await serving.load_adapter(adapter.name, str(path))
            assert vllm.loras[adapter.name] == str(path)
        finally:
            await serving.close()

    # Trained on the served model (its width), not the bundled SmolLM2 (576).
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(hub_cache)
    weights = load_file(path / "adapter_model.safetensors")
    assert {t.shape[-1] for n, t in weights.items() if "lora_A" in n and "q_proj" in n} == {HIDDEN}

    # Validated through the server: the candidate loaded under a name of its own, asked, then
    # unloaded; the baseline (no active adapter yet) is the served base model.
    validating = f"validate-{path.name}"
    [load] = [
        r for r in vllm.requests_to("/v1/load_lora_adapter") if r.body["lora_name"] == validating
    ]
    assert load.body["lora_path"] == str(path)
    asked = [r.body["model"] for r in vllm.requests_to("/v1/chat/completions")]
    assert asked.count(validating) == 2 and asked.count(SERVED) == 2
    assert [r.body for r in vllm.requests_to("/v1/unload_lora_adapter")] == [
        {"lora_name": validating}
    ]
    assert job.metrics is not None
    assert job.metrics["validation"]["candidate"]["rows"] == 2
