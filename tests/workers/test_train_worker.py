"""Training jobs through real workers and real GRPO steps on the bundled model: success
(and a duplicate delivery that does nothing), cancel, and a crash of the training process."""

import asyncio
import json
import multiprocessing
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.core.config import Settings
from app.core.db import transaction
from app.core.runtime import Runtime
from app.llm.bundled import ensure_bundled_model
from app.models import Adapter, TrainingJob
from tests.conftest import SHARED_DATA, make_tenant
from tests.workers.conftest import wait_for_job, worker_process
from workers.celery_app import TRAIN_TASK, create_celery, send
from workers.tasks.train import train_job

pytestmark = pytest.mark.model

TINY = {
    "max_steps": 1,
    "num_generations": 2,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_completion_length": 8,
    "max_train_rows": 4,
}


def subset(tmp_path: Path, name: str, source: str, questions: int) -> str:
    """A LoCoMo-format file with the first ``questions`` non-adversarial questions."""
    [conv] = json.loads((SHARED_DATA / "locomo" / source).read_text())
    conv["qa"] = [qa for qa in conv["qa"] if qa["category"] != 5][:questions]
    path = tmp_path / name
    path.write_text(json.dumps([conv]))
    return str(path)


@pytest.fixture
def train_file(tmp_path: Path) -> str:
    return subset(tmp_path, "train.json", "locomo_train_conv26.json", 4)


@pytest.fixture(autouse=True)
def no_training_left_behind() -> Iterator[None]:
    """A test that fails mid-run leaves no training process behind: one would keep the test
    session from exiting (multiprocessing joins its children at exit)."""
    yield
    for child in multiprocessing.active_children():
        if child.name.startswith("train-"):
            child.kill()
            child.join()


@pytest.fixture(scope="module")
def model_ready(settings: Settings) -> Path:
    return ensure_bundled_model(settings.data_dir)


async def _job(runtime: Runtime, job_id: str) -> TrainingJob:
    async with transaction(runtime.sessions) as db:
        job = await db.get(TrainingJob, uuid.UUID(job_id))
        assert job is not None
        return job


async def test_job_succeeds_through_a_worker_and_a_duplicate_does_nothing(
    committed_client, committed_runtime, settings, train_file, model_ready, tmp_path
):
    tenant = await make_tenant(committed_runtime, f"train-{uuid.uuid4().hex[:6]}")
    celery = create_celery(settings)
    committed_runtime.enqueue_training = lambda job_id: send(celery, TRAIN_TASK, job_id)
    response = await committed_client.post(
        "/admin/training-jobs",
        json={
            "agent": "answer",
            "source": "dataset",
            "dataset": train_file,
            "params": TINY,
            "activate": "always",
        },
        headers=tenant.admin,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    send(celery, TRAIN_TASK, uuid.UUID(job_id))  # the same message delivered twice
    env = {
        "MEMR1_DATABASE_URL": settings.database_url,
        "MEMR1_DATA_DIR": str(settings.data_dir),
        "MEMR1_ADAPTERS_DIR": str(tmp_path / "adapters"),
    }
    log = tmp_path / "worker.log"
    with worker_process(env, "training", log) as worker:
        job = await wait_for_job(
            committed_client,
            f"/admin/training-jobs/{job_id}",
            tenant.admin,
            {"succeeded", "failed", "cancelled"},
            900,
            log,
            worker,
        )
        # Give the duplicate message time to be consumed (it must find nothing to claim).
        for _ in range(30):
            if "is not queued" in log.read_text():
                break
            await asyncio.sleep(1)
    assert job["status"] == "succeeded", job
    assert job["heartbeat_at"] is not None
    assert job["metrics"]["steps"] >= 1
    assert "training rows" in job["log_tail"]
    adapters = await committed_client.get("/admin/adapters", headers=tenant.admin)
    [adapter] = adapters.json()
    assert adapter["id"] == job["adapter_id"]
    assert adapter["status"] == "active"
    assert Path(adapter["path"], "adapter_config.json").is_file()
    assert "is not queued" in log.read_text()


async def start_long_job(client, runtime, settings, train_file, label):
    """A job that would run for a long time, being run by ``train_job`` in this process."""
    tenant = await make_tenant(runtime, f"{label}-{uuid.uuid4().hex[:6]}")
    response = await client.post(
        "/admin/training-jobs",
        json={
            "agent": "answer",
            "source": "dataset",
            "dataset": train_file,
            "params": {**TINY, "max_steps": 500},
            "activate": "always",
        },
        headers=tenant.admin,
    )
    job_id = response.json()["id"]
    run = asyncio.create_task(train_job(runtime.sessions, settings, uuid.UUID(job_id)))
    return tenant, job_id, run


async def test_cancel_mid_training_stops_the_process_and_writes_no_adapter(
    committed_client, committed_runtime, settings, train_file, model_ready
):
    tenant, job_id, run = await start_long_job(
        committed_client, committed_runtime, settings, train_file, "cancel"
    )
    # Cancelled in the middle of training: after its first GRPO step has been reported.
    for _ in range(600):
        if ((await _job(committed_runtime, job_id)).metrics or {}).get("step", 0) >= 1:
            break
        await asyncio.sleep(0.5)
    [child] = [c for c in multiprocessing.active_children() if c.name == f"train-{job_id}"]
    cancel = await committed_client.post(
        f"/admin/training-jobs/{job_id}/cancel", headers=tenant.admin
    )
    assert cancel.status_code == 200
    await asyncio.wait_for(run, timeout=300)
    job = await _job(committed_runtime, job_id)
    assert job.status == "cancelled"
    assert 1 <= job.metrics["step"] < 500
    assert job.adapter_id is None
    assert not child.is_alive() and child.exitcode is not None
    written = list(settings.adapter_root.glob(f"{tenant.tenant_id}/**/adapter_config.json"))
    assert written == []
    async with transaction(committed_runtime.sessions) as db:
        count = await db.scalar(
            select(func.count()).select_from(Adapter).where(Adapter.tenant_id == tenant.tenant_id)
        )
    assert count == 0


async def test_a_crashed_training_process_fails_the_job_with_the_reason(
    committed_client, committed_runtime, settings, train_file, model_ready
):
    _, job_id, run = await start_long_job(
        committed_client, committed_runtime, settings, train_file, "crash"
    )
    children: list[multiprocessing.Process] = []
    for _ in range(300):
        children = multiprocessing.active_children()
        if children:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(5)  # let it get into the run
    for child in children:
        os.kill(child.pid or 0, signal.SIGKILL)
    await asyncio.wait_for(run, timeout=120)
    job = await _job(committed_runtime, job_id)
    assert job.status == "failed"
    assert "exited with code -9" in (job.error or "")
    assert job.adapter_id is None
