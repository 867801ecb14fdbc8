"""Adapter registry: list, activate, roll back; the pointer moves first, serving follows."""

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from app import cli
from app.adapters import repository
from app.adapters import service as adapters
from app.core.config import get_settings
from app.core.errors import AppError, NotFound, Unprocessable, Upstream
from app.llm.openai_compat import OpenAICompatBackend
from tests.conftest import make_tenant
from tests.fixtures.vllm_contract_server import VLLMContractServer, serve_on_localhost
from tests.test_supervise import free_port


def adapter_dir(root: Path, name: str, rank: int = 8) -> Path:
    path = root / name
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "base_model_name_or_path": "fake-model"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


async def register(runtime, tenant_id, name, path, agent="answer"):
    async with runtime.sessions() as db:
        adapter = await adapters.register_candidate(
            db,
            tenant_id=tenant_id,
            agent=agent,
            name=name,
            base_model="fake-model",
            path=str(path),
            rank=8,
            validation_metrics={"f1": 0.1},
            training_job_id=None,
        )
        await db.commit()
    return adapter


@pytest.fixture
async def two_adapters(runtime, tenant_a, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    first = await register(
        runtime, tenant_a.tenant_id, f"answer-a-{suffix}", adapter_dir(tmp_path, "a")
    )
    second = await register(
        runtime, tenant_a.tenant_id, f"answer-b-{suffix}", adapter_dir(tmp_path, "b")
    )
    return first, second


class TestList:
    async def test_unauthorised_and_scope(self, client, tenant_a):
        assert (await client.get("/admin/adapters")).status_code == 401
        assert (await client.get("/admin/adapters", headers=tenant_a.memory)).status_code == 403

    async def test_lists_own_adapters_only(self, client, tenant_a, tenant_b, two_adapters):
        mine = await client.get("/admin/adapters", headers=tenant_a.admin_only)
        assert {a["id"] for a in mine.json()} == {str(a.id) for a in two_adapters}
        assert all(a["status"] == "candidate" for a in mine.json())
        assert (await client.get("/admin/adapters", headers=tenant_b.admin)).json() == []

    async def test_invalid_agent_filter(self, client, tenant_a):
        response = await client.get("/admin/adapters?agent=critic", headers=tenant_a.admin)
        assert response.status_code == 422


class TestActivate:
    async def test_activate_then_roll_back(self, client, runtime, fake_llm, tenant_a, two_adapters):
        first, second = two_adapters
        response = await client.post(f"/admin/adapters/{first.id}/activate", headers=tenant_a.admin)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "active"
        assert first.name in fake_llm.adapters  # serving loaded it after the pointer moved
        await client.post(f"/admin/adapters/{second.id}/activate", headers=tenant_a.admin)
        await client.post(f"/admin/adapters/{first.id}/activate", headers=tenant_a.admin)
        listed = {
            a["name"]: a["status"]
            for a in (await client.get("/admin/adapters", headers=tenant_a.admin)).json()
        }
        assert listed == {first.name: "active", second.name: "retired"}

    async def test_ask_uses_the_active_adapter(self, client, fake_llm, tenant_a, two_adapters):
        first, _ = two_adapters
        await client.post(
            "/users/u1/memories", json={"text": "Ann likes tea"}, headers=tenant_a.memory
        )
        await client.post(f"/admin/adapters/{first.id}/activate", headers=tenant_a.admin)
        fake_llm.push({"selected": ["m1"], "answer": "tea"})
        response = await client.post(
            "/ask",
            json={"user_id": "u1", "question": "What does Ann like?"},
            headers=tenant_a.memory,
        )
        assert response.status_code == 200, response.text
        assert response.json()["adapter"] == first.name
        assert fake_llm.calls[-1].adapter == first.name
        fake_llm.push({"selected": ["m1"], "answer": "tea"})
        base = await client.post(
            "/ask",
            json={"user_id": "u1", "question": "What does Ann like?", "answer_adapter": "base"},
            headers=tenant_a.memory,
        )
        assert base.json()["adapter"] is None

    async def test_ingestion_extracts_with_the_chosen_extractor_adapter(
        self, client, runtime, fake_llm, tenant_a, tmp_path
    ):
        extractor = await register(
            runtime,
            tenant_a.tenant_id,
            f"extractor-{uuid.uuid4().hex[:6]}",
            adapter_dir(tmp_path, "extractor"),
            agent="extractor",
        )
        await client.post(f"/admin/adapters/{extractor.id}/activate", headers=tenant_a.admin)
        used = []
        for choice in ("active", "base", str(extractor.id)):
            fake_llm.push({"facts": []})
            response = await client.post(
                f"/sessions/s-{choice}/turns?wait=true",
                json={
                    "user_id": "u1",
                    "turns": [{"speaker": "Ann", "text": "I like tea."}],
                    "extractor_adapter": choice,
                },
                headers=tenant_a.memory,
            )
            assert response.status_code == 200, response.text
            used.append(fake_llm.calls[-1].adapter)
        assert used == [extractor.name, None, extractor.name]
        unknown = await client.post(
            "/sessions/s2/turns",
            json={
                "user_id": "u1",
                "turns": [{"speaker": "Ann", "text": "I like tea."}],
                "extractor_adapter": str(uuid.uuid4()),
            },
            headers=tenant_a.memory,
        )
        assert unknown.status_code == 404

    async def test_other_tenant_cannot_activate(self, client, runtime, tenant_b, two_adapters):
        first, _ = two_adapters
        response = await client.post(f"/admin/adapters/{first.id}/activate", headers=tenant_b.admin)
        assert response.status_code == 404

    async def test_unknown_adapter(self, client, tenant_a):
        response = await client.post(
            f"/admin/adapters/{uuid.uuid4()}/activate", headers=tenant_a.admin
        )
        assert response.status_code == 404

    async def test_missing_files_is_a_conflict(self, client, runtime, tenant_a, tmp_path):
        gone = await register(
            runtime, tenant_a.tenant_id, f"gone-{uuid.uuid4().hex[:6]}", tmp_path / "x"
        )
        response = await client.post(f"/admin/adapters/{gone.id}/activate", headers=tenant_a.admin)
        assert response.status_code == 409
        assert "adapter_config.json" in response.json()["detail"]

    async def test_reconcile_loads_active_adapters(self, runtime, fake_llm, tenant_a, two_adapters):
        first, _ = two_adapters
        async with runtime.sessions() as db:
            await adapters.set_active(db, await repository.get(db, tenant_a.tenant_id, first.id))
            await db.commit()
        fake_llm.adapters.clear()
        runtime.loaded_adapters.clear()
        loaded = await adapters.reconcile(runtime)
        assert first.name in loaded
        assert first.name in fake_llm.adapters

    async def test_an_adapter_serving_refuses_is_never_made_active(
        self, client, runtime, fake_llm, tenant_a, two_adapters, monkeypatch
    ):
        first, _ = two_adapters

        async def refuse(name, path):
            raise Unprocessable(f"adapter at {path} has rank 128; this server loads up to 64")

        monkeypatch.setattr(fake_llm, "load_adapter", refuse)
        response = await client.post(f"/admin/adapters/{first.id}/activate", headers=tenant_a.admin)
        assert response.status_code == 422 and "rank 128" in response.json()["detail"]
        async with runtime.sessions() as db:
            assert await repository.get_active(db, tenant_a.tenant_id, "answer") is None

    async def test_an_active_adapter_that_fails_at_start_leaves_the_base_model(
        self, runtime, fake_llm, tenant_a, tenant_b, two_adapters, monkeypatch, caplog, tmp_path
    ):
        first, _ = two_adapters
        healthy = await register(
            runtime,
            tenant_b.tenant_id,
            f"answer-ok-{uuid.uuid4().hex[:6]}",
            adapter_dir(tmp_path, "ok"),
        )
        async with runtime.sessions() as db:
            await adapters.set_active(db, await repository.get(db, tenant_a.tenant_id, first.id))
            await adapters.set_active(db, await repository.get(db, tenant_b.tenant_id, healthy.id))
            await db.commit()
        loads = fake_llm.load_adapter

        async def broken_first(name, path):
            if name == first.name:
                raise Unprocessable(f"{path}: weights are corrupt")
            await loads(name, path)

        monkeypatch.setattr(fake_llm, "load_adapter", broken_first)
        runtime.loaded_adapters.clear()
        loaded = await adapters.reconcile(runtime)  # does not raise
        assert healthy.name in loaded and first.name not in loaded
        assert "cannot be loaded, serving the base model" in caplog.text
        assert await adapters.resolve(runtime, tenant_a.tenant_id, "answer", "active") is None
        assert (
            await adapters.resolve(runtime, tenant_b.tenant_id, "answer", "active") == healthy.name
        )
        with pytest.raises(Unprocessable):  # asked for by id, it still says why it cannot serve
            await adapters.resolve(runtime, tenant_a.tenant_id, "answer", str(first.id))

    async def test_an_active_adapter_is_loaded_once_the_model_server_is_up(
        self, runtime, fake_llm, tenant_a, two_adapters, monkeypatch
    ):
        first, _ = two_adapters
        async with runtime.sessions() as db:
            await adapters.set_active(db, await repository.get(db, tenant_a.tenant_id, first.id))
            await db.commit()
        loads = fake_llm.load_adapter
        server_up = False

        async def starting(name, path):
            if not server_up:
                raise Upstream("connection refused")
            await loads(name, path)

        monkeypatch.setattr(fake_llm, "load_adapter", starting)
        runtime.loaded_adapters.clear()
        assert await adapters.reconcile(runtime) == []  # vLLM still loading: not marked bad
        with pytest.raises(Upstream):  # a request meanwhile is a retryable 503, not the base
            await adapters.resolve(runtime, tenant_a.tenant_id, "answer", "active")
        server_up = True
        assert await adapters.resolve(runtime, tenant_a.tenant_id, "answer", "active") == first.name

    async def test_a_model_server_that_starts_late_gets_the_active_adapters_when_it_is_up(
        self, client, runtime, tenant_a, tmp_path
    ):
        """vLLM binds its port only once its weights are loaded (minutes): meanwhile the API
        is up, /readyz says the model is not ready, and the active adapters are loaded as soon
        as the server answers, before any request needs them."""
        port = free_port()
        vllm = VLLMContractServer(base_model="fake-model")
        runtime.llm = OpenAICompatBackend(
            f"http://127.0.0.1:{port}/v1", "fake-model", None, 2.0, 1, 64, backoff_s=0.01
        )
        path = adapter_dir(tmp_path, "late")
        (path / "adapter_model.safetensors").write_bytes(b"weights")
        adapter = await register(runtime, tenant_a.tenant_id, f"answer-late-{uuid.uuid4()}", path)
        async with runtime.sessions() as db:
            await adapters.set_active(db, await repository.get(db, tenant_a.tenant_id, adapter.id))
            await db.commit()
        try:
            loading = await client.get("/readyz")
            assert loading.status_code == 503
            assert "model not ready" in loading.json()["detail"]
            waiting = asyncio.create_task(adapters.reconcile_when_served(runtime, every_s=0.05))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            async with serve_on_localhost(vllm.app, port):
                loaded = await asyncio.wait_for(waiting, timeout=10)
                assert adapter.name in loaded
                assert vllm.loras[adapter.name] == str(path)
                assert vllm.requests_to("/v1/chat/completions") == []  # loaded before any request
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
        finally:
            await runtime.llm.close()


async def test_make_tenant_helper_gives_distinct_tenants(runtime):
    a = await make_tenant(runtime, "x")
    b = await make_tenant(runtime, "y")
    assert a.tenant_id != b.tenant_id


def trained_elsewhere(root: Path, base_model: str = "SmolLM2-135M-Instruct") -> Path:
    path = root / "trained-elsewhere"
    path.mkdir()
    config = {"peft_type": "LORA", "r": 8, "base_model_name_or_path": f"/models/{base_model}"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    return path


class TestImport:
    async def test_copies_registers_and_activates(self, client, runtime, tenant_a, tmp_path):
        source = trained_elsewhere(tmp_path)
        async with runtime.sessions() as db:
            adapter = await adapters.import_adapter(
                db,
                runtime.settings,
                tenant_id=tenant_a.tenant_id,
                agent="answer",
                source=source,
                activate=True,
            )
            await db.commit()
        copied = Path(adapter.path)
        assert copied.parent == runtime.settings.adapter_root / str(tenant_a.tenant_id)
        assert (copied / "adapter_model.safetensors").read_bytes() == b"weights"
        listed = (await client.get("/admin/adapters", headers=tenant_a.admin)).json()
        assert [(a["id"], a["status"], a["rank"]) for a in listed] == [
            (str(adapter.id), "active", 8)
        ]

    @pytest.mark.parametrize(
        ("agent", "base", "error"),
        [
            ("answer", "Qwen2.5-7B", "trained on"),
            ("planner", "SmolLM2-135M-Instruct", "agent must be one of"),
        ],
    )
    async def test_refuses_what_serving_would_refuse(
        self, runtime, tenant_a, tmp_path, agent, base, error
    ):
        async with runtime.sessions() as db:
            with pytest.raises(AppError, match=error):
                await adapters.import_adapter(
                    db,
                    runtime.settings,
                    tenant_id=tenant_a.tenant_id,
                    agent=agent,
                    source=trained_elsewhere(tmp_path, base),
                )
            assert await repository.list_adapters(db, tenant_a.tenant_id, None) == []
        assert not (runtime.settings.adapter_root / str(tenant_a.tenant_id)).exists()

    async def test_unknown_tenant(self, runtime, tmp_path):
        async with runtime.sessions() as db:
            with pytest.raises(NotFound):
                await adapters.import_adapter(
                    db,
                    runtime.settings,
                    tenant_id=uuid.uuid4(),
                    agent="answer",
                    source=trained_elsewhere(tmp_path),
                )

    def test_command_line(self, database_url, tmp_path, monkeypatch, capsys):
        monkeypatch.setenv("MEMR1_DATABASE_URL", database_url)
        monkeypatch.setenv("MEMR1_DATA_DIR", str(tmp_path / "data"))
        get_settings.cache_clear()
        try:
            assert cli.main(["keys", "create", "--scopes", "admin"]) == 0
            tenant = capsys.readouterr().out.split()[1]
            source = trained_elsewhere(tmp_path)
            argv = ["adapters", "import", str(source), "--tenant", tenant, "--agent", "manager"]
            assert cli.main(argv) == 0
        finally:
            get_settings.cache_clear()
        printed = capsys.readouterr().out
        assert "(manager, candidate)" in printed and str(tmp_path / "data" / "adapters") in printed
