"""Global default adapters: the ones shipped for the bundled model serve every tenant that has
not activated its own, and a tenant can go back to them."""

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete

from app import cli
from app.adapters import service as adapters
from app.core.config import get_settings
from app.llm.backend import validate_adapter_dir
from app.llm.bundled import BUNDLED_MODEL_NAME
from app.llm.inprocess import InProcessBackend
from app.memory.answer import answer_question
from app.memory.extractor import extract_facts
from app.memory.manager import decide
from app.memory.schemas import Fact, as_views
from app.models import Adapter
from tests.adapters.test_api import adapter_dir, register


def shipped(root: Path, weights: bytes = b"weights", base: str = "SmolLM2-135M-Instruct") -> Path:
    folder = root / "answer"
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 8, "base_model_name_or_path": f"HuggingFaceTB/{base}"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "card.json").write_text(json.dumps({"metrics": {"f1": 0.2}}))
    return root


@pytest.fixture
def local(runtime, tmp_path):
    return runtime.settings.model_copy(update={"adapters_dir": tmp_path / "adapters"})


async def install(runtime, settings, source):
    async with runtime.sessions() as db:
        installed = await adapters.install_defaults(db, settings, source)
        await db.commit()
    return installed


async def listed(client, keys):
    return {
        a["name"]: (a["status"], a["tenant_id"])
        for a in (await client.get("/admin/adapters", headers=keys.admin)).json()
    }


async def ask(client, fake_llm, keys):
    await client.post("/users/u1/memories", json={"text": "Ann likes tea"}, headers=keys.memory)
    fake_llm.push({"selected": ["m1"], "answer": "tea"})
    response = await client.post(
        "/ask", json={"user_id": "u1", "question": "What does Ann like?"}, headers=keys.memory
    )
    assert response.status_code == 200, response.text
    return response.json()["adapter"]


async def test_a_shipped_adapter_serves_every_tenant_until_one_activates_its_own(
    client, runtime, local, fake_llm, tenant_a, tenant_b, tmp_path
):
    [default] = await install(runtime, local, shipped(tmp_path / "shipped"))
    assert default.tenant_id is None and default.status == "active"
    assert default.validation_metrics == {"f1": 0.2}
    assert Path(default.path) == local.adapter_root / "global" / default.name
    assert (Path(default.path) / "adapter_model.safetensors").read_bytes() == b"weights"
    for keys in (tenant_a, tenant_b):
        assert await listed(client, keys) == {default.name: ("active", None)}
        assert await ask(client, fake_llm, keys) == default.name

    own = await register(runtime, tenant_a.tenant_id, "answer-own", adapter_dir(tmp_path, "own"))
    await client.post(f"/admin/adapters/{own.id}/activate", headers=tenant_a.admin)
    assert await ask(client, fake_llm, tenant_a) == own.name
    assert await ask(client, fake_llm, tenant_b) == default.name
    assert await listed(client, tenant_b) == {default.name: ("active", None)}

    # Activating the global default puts the tenant back on it; the global row is untouched.
    back = await client.post(f"/admin/adapters/{default.id}/activate", headers=tenant_a.admin)
    assert back.status_code == 200, back.text
    assert await ask(client, fake_llm, tenant_a) == default.name
    assert await listed(client, tenant_a) == {
        default.name: ("active", None),
        own.name: ("retired", str(tenant_a.tenant_id)),
    }
    # Other tenants still cannot touch a tenant's adapter.
    refused = await client.post(f"/admin/adapters/{own.id}/activate", headers=tenant_b.admin)
    assert refused.status_code == 404


async def test_each_shipped_version_registers_once_and_the_shipped_one_serves(
    client, runtime, local, tenant_a, tmp_path
):
    source = shipped(tmp_path / "shipped")
    [first] = await install(runtime, local, source)
    assert await install(runtime, local, source) == []  # the next start: nothing new
    [second] = await install(runtime, local, shipped(source, weights=b"retrained"))
    assert second.name != first.name
    assert await listed(client, tenant_a) == {
        first.name: ("retired", None),
        second.name: ("active", None),
    }
    stale = await client.post(f"/admin/adapters/{first.id}/activate", headers=tenant_a.admin)
    assert stale.status_code == 409
    assert "global default" in stale.json()["detail"]
    # A release that goes back to the first version serves it again, without a second copy.
    [again] = await install(runtime, local, shipped(source, weights=b"weights"))
    assert again.id == first.id
    assert await listed(client, tenant_a) == {
        first.name: ("active", None),
        second.name: ("retired", None),
    }
    assert await install(runtime, local, source) == []


async def test_an_adapter_for_another_base_model_is_not_installed(
    client, runtime, local, tenant_a, tmp_path
):
    source = shipped(tmp_path / "shipped", base="Qwen2.5-7B-Instruct")
    assert await install(runtime, local, source) == []
    assert await listed(client, tenant_a) == {}
    assert not (local.adapter_root / "global").exists()


global_ = Adapter.tenant_id.is_(None)


async def test_nothing_is_installed_for_a_model_server(client, runtime, local, tenant_a, tmp_path):
    openai = local.model_copy(update={"llm": local.llm.model_copy(update={"backend": "openai"})})
    assert await install(runtime, openai, shipped(tmp_path / "shipped")) == []
    assert await listed(client, tenant_a) == {}


def test_serve_installs_the_shipped_defaults(database_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMR1_DATABASE_URL", database_url)
    monkeypatch.setenv("MEMR1_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    monkeypatch.setattr(adapters, "DEFAULTS_DIR", shipped(tmp_path / "shipped"))
    try:
        cli._install_defaults(get_settings())
        cli._install_defaults(get_settings())
    finally:
        get_settings.cache_clear()
        # Committed outside the per-test transaction: global rows would serve other tests.
        asyncio.run(
            cli._with_db(database_url, lambda db: db.execute(delete(Adapter).where(global_)))
        )
    printed = capsys.readouterr().out
    assert printed.count("Serving the shipped answer adapter answer-default-") == 1


SHIPPED_MEASURES = {
    "answer": ("f1",),
    "extractor": ("recall", "precision"),
    "manager": ("held_out_decisions_right", "conv30_f1"),
}


@pytest.mark.parametrize("folder", sorted(adapters.DEFAULTS_DIR.glob("*/adapter_config.json")))
def test_the_shipped_adapters_fit_the_bundled_model_and_carry_a_card(folder):
    folder = folder.parent
    validate_adapter_dir(folder, base_model="SmolLM2-135M-Instruct", max_lora_rank=64)
    card = json.loads((folder / "card.json").read_text())
    assert {"data", "steps", "settings", "metrics", "command"} <= card.keys()
    # Each beats the base model on its own validation measures.
    for measure in SHIPPED_MEASURES[card["agent"]]:
        assert card["metrics"][measure] > card["base_metrics"][measure], measure


@asynccontextmanager
async def serving_shipped(
    agent: str, model_dir: Path, tmp_path: Path
) -> AsyncIterator[InProcessBackend]:
    """The embedded engine with ``agent``'s shipped adapter loaded as "shipped", from a copy
    (converted to GGUF on first load beside it, as serve installs it)."""
    copy = shutil.copytree(adapters.DEFAULTS_DIR / agent, tmp_path / agent)
    backend = InProcessBackend(model_dir, BUNDLED_MODEL_NAME, 2, 64)
    try:
        await backend.load_adapter("shipped", str(copy))
        yield backend
    finally:
        await backend.close()


@pytest.mark.model
async def test_the_shipped_answer_adapter_serves_in_the_embedded_engine(
    serving_model_dir, tmp_path
):
    """Selected per request: it answers under the Answer Agent's schema."""
    memories = as_views(
        [(uuid.UUID(int=1), "On 8 May 2023, Ann adopted a dog named Buddy.", "Ann", None)]
    )
    async with serving_shipped("answer", serving_model_dir, tmp_path) as backend:
        for adapter in (None, "shipped"):
            result = await answer_question(
                backend, "What is the name of Ann's dog?", memories, adapter=adapter
            )
            assert result.error is None and result.answer
            assert result.completion is not None and result.completion.adapter == adapter


@pytest.mark.model
async def test_the_shipped_extractor_adapter_serves_in_the_embedded_engine(
    serving_model_dir, tmp_path
):
    at = datetime(2026, 11, 20, tzinfo=UTC)
    async with serving_shipped("extractor", serving_model_dir, tmp_path) as backend:
        extraction = await extract_facts(
            backend,
            speaker="Ann",
            text="I adopted a dog named Buddy last week.",
            occurred_at=at,
            adapter="shipped",
        )
        assert extraction.error is None and extraction.completion is not None
        assert extraction.completion.adapter == "shipped"
        assert any("Buddy" in fact.text for fact in extraction.facts), extraction.facts


@pytest.mark.model
async def test_the_shipped_manager_adapter_serves_in_the_embedded_engine(
    serving_model_dir, tmp_path
):
    at = datetime(2026, 11, 20, tzinfo=UTC)
    buddy = as_views(
        [(uuid.UUID(int=1), "On 2 November 2026, Ann adopted a dog named Buddy.", "Ann", None)]
    )
    fact = Fact("On 20 November 2026, Ann adopted another dog, Scout.", "Ann", at)
    async with serving_shipped("manager", serving_model_dir, tmp_path) as backend:
        for candidates in (buddy, []):
            decision = await decide(backend, fact, candidates, adapter="shipped")
            assert decision.error is None and decision.completion is not None
            assert decision.completion.adapter == "shipped"
            # Under each decision's schema, nothing it names is missing from what it was shown.
            assert not [r for r in decision.rejected if "unknown memory id" in r.reason]
