"""POST/GET /admin/training-jobs, cancel and retry: auth, validation, tenants, enqueueing."""

import uuid
from pathlib import Path

from tests.conftest import SHARED_DATA

TRAIN = str(SHARED_DATA / "locomo" / "locomo_train_conv26.json")
VALIDATION = str(SHARED_DATA / "locomo" / "locomo_val_conv30.json")


def job_body(**overrides):
    body = {
        "agent": "answer",
        "algorithm": "grpo",
        "source": "dataset",
        "dataset": TRAIN,
        "validation_dataset": VALIDATION,
        "params": {"max_steps": 2, "num_generations": 2},
    }
    return {**body, **overrides}


class TestCreate:
    async def test_unauthorised(self, client):
        response = await client.post("/admin/training-jobs", json=job_body())
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"

    async def test_memory_scope_is_not_enough(self, client, tenant_a):
        response = await client.post(
            "/admin/training-jobs", json=job_body(), headers=tenant_a.memory
        )
        assert response.status_code == 403
        assert "admin" in response.json()["detail"]

    async def test_unknown_param_says_which_are_valid(self, client, tenant_a):
        body = job_body(params={"learning_rat": 1e-4})
        response = await client.post("/admin/training-jobs", json=body, headers=tenant_a.admin)
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert "learning_rat" in detail and "learning_rate" in detail

    async def test_invalid_param_value(self, client, tenant_a):
        body = job_body(params={"num_generations": 1})
        response = await client.post("/admin/training-jobs", json=body, headers=tenant_a.admin)
        assert response.status_code == 422
        assert "num_generations" in response.json()["detail"]

    async def test_missing_dataset_file(self, client, tenant_a):
        body = job_body(dataset="/nonexistent/locomo.json")
        response = await client.post("/admin/training-jobs", json=body, headers=tenant_a.admin)
        assert response.status_code == 422
        assert "/nonexistent/locomo.json" in response.json()["detail"]

    async def test_files_outside_the_dataset_folders_are_refused(self, client, tenant_a, tmp_path):
        outside = Path("/etc/hostname")
        link = SHARED_DATA / ".." / ".." / "main"  # a folder beside the data: not inside it
        for path in (str(outside), "../../etc/passwd", str(link / "README.md")):
            for field in ("dataset", "validation_dataset"):
                body = job_body(**{field: path})
                response = await client.post(
                    "/admin/training-jobs", json=body, headers=tenant_a.admin
                )
                assert response.status_code == 422, (field, path)
                detail = response.json()["detail"]
                assert "dataset folders" in detail and "MEMR1_DATASET_DIRS" in detail

    async def test_a_link_out_of_a_dataset_folder_is_refused(self, client, tenant_a, settings):
        root = settings.dataset_roots[-1]
        link = root / f"escape-{uuid.uuid4().hex[:6]}.json"
        link.symlink_to("/etc/hostname")
        try:
            body = job_body(dataset=str(link))
            response = await client.post("/admin/training-jobs", json=body, headers=tenant_a.admin)
            assert response.status_code == 422
        finally:
            link.unlink()

    async def test_relative_paths_are_taken_in_the_first_folder(self, client, tenant_a):
        body = job_body(dataset="locomo/locomo_train_conv26.json")
        response = await client.post("/admin/training-jobs", json=body, headers=tenant_a.admin)
        assert response.status_code == 202, response.text
        assert response.json()["dataset"] == str(Path(TRAIN).resolve())

    async def test_a_rank_serving_cannot_load_is_refused(self, client, tenant_a, settings):
        rank = settings.llm.max_lora_rank * 2
        body = job_body(params={"lora_r": rank, "lora_alpha": rank})
        response = await client.post("/admin/training-jobs", json=body, headers=tenant_a.admin)
        assert response.status_code == 422
        assert "MEMR1_LLM__MAX_LORA_RANK" in response.json()["detail"]

    async def test_dataset_source_needs_a_dataset(self, client, tenant_a):
        body = job_body(dataset=None)
        response = await client.post("/admin/training-jobs", json=body, headers=tenant_a.admin)
        assert response.status_code == 422

    async def test_if_better_needs_validation(self, client, tenant_a):
        body = job_body(validation_dataset=None)
        response = await client.post("/admin/training-jobs", json=body, headers=tenant_a.admin)
        assert response.status_code == 422
        assert "validation_dataset" in response.json()["detail"]

    async def test_bad_agent(self, client, tenant_a):
        body = job_body(agent="critic")
        response = await client.post("/admin/training-jobs", json=body, headers=tenant_a.admin)
        assert response.status_code == 422

    async def test_happy_path_queues_and_enqueues_after_commit(self, client, tenant_a, queued):
        response = await client.post(
            "/admin/training-jobs", json=job_body(), headers=tenant_a.admin
        )
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["status"] == "queued"
        assert job["validation_dataset"] == VALIDATION
        assert queued.training == [uuid.UUID(job["id"])]


class TestReadAndCancel:
    async def test_get_list_and_isolation(self, client, tenant_a, tenant_b):
        created = (
            await client.post("/admin/training-jobs", json=job_body(), headers=tenant_a.admin)
        ).json()
        one = await client.get(f"/admin/training-jobs/{created['id']}", headers=tenant_a.admin)
        assert one.status_code == 200 and one.json()["id"] == created["id"]
        listed = await client.get("/admin/training-jobs", headers=tenant_a.admin)
        assert [j["id"] for j in listed.json()] == [created["id"]]
        other = await client.get(f"/admin/training-jobs/{created['id']}", headers=tenant_b.admin)
        assert other.status_code == 404
        assert (await client.get("/admin/training-jobs", headers=tenant_b.admin)).json() == []
        cancel = await client.post(
            f"/admin/training-jobs/{created['id']}/cancel", headers=tenant_b.admin
        )
        assert cancel.status_code == 404

    async def test_not_found(self, client, tenant_a):
        response = await client.get(f"/admin/training-jobs/{uuid.uuid4()}", headers=tenant_a.admin)
        assert response.status_code == 404

    async def test_cancel_queued_then_conflict(self, client, tenant_a):
        created = (
            await client.post("/admin/training-jobs", json=job_body(), headers=tenant_a.admin)
        ).json()
        path = f"/admin/training-jobs/{created['id']}/cancel"
        first = await client.post(path, headers=tenant_a.admin)
        assert first.status_code == 200
        assert first.json()["status"] == "cancelled"
        again = await client.post(path, headers=tenant_a.admin)
        assert again.status_code == 409

    async def test_retry_a_cancelled_job(self, client, tenant_a, tenant_b, queued):
        created = (
            await client.post("/admin/training-jobs", json=job_body(), headers=tenant_a.admin)
        ).json()
        retry = f"/admin/training-jobs/{created['id']}/retry"
        running = await client.post(retry, headers=tenant_a.admin)
        assert running.status_code == 409 and "only a failed or cancelled" in running.text
        await client.post(f"/admin/training-jobs/{created['id']}/cancel", headers=tenant_a.admin)
        assert (await client.post(retry, headers=tenant_b.admin)).status_code == 404
        queued.training.clear()
        again = await client.post(retry, headers=tenant_a.admin)
        assert again.status_code == 202, again.text
        job = again.json()
        assert job["status"] == "queued" and job["attempts"] == 0 and not job["cancel_requested"]
        assert queued.training == [uuid.UUID(created["id"])]

    async def test_params_help(self, client, tenant_a):
        response = await client.get("/admin/training-params", headers=tenant_a.admin)
        assert response.status_code == 200
        assert "learning_rate" in response.json()
