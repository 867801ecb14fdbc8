"""The adapter registry. Postgres is the source of truth; what the serving backend has loaded
is a cache that is filled on demand and reconciled on start."""

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters import repository
from app.adapters.schemas import AdapterRead
from app.core.db import transaction
from app.core.errors import Conflict, NotFound
from app.core.runtime import Runtime
from app.models import Adapter, AdapterStatus


async def ensure_loaded(runtime: Runtime, adapter: Adapter) -> str:
    if runtime.loaded_adapters.get(adapter.name) != adapter.path:
        await runtime.llm.load_adapter(adapter.name, adapter.path)
        runtime.loaded_adapters[adapter.name] = adapter.path
    return adapter.name


async def _chosen(
    db: AsyncSession, tenant_id: uuid.UUID, agent: str, choice: str
) -> Adapter | None:
    if choice == "base":
        return None
    if choice == "active":
        return await repository.get_active(db, tenant_id, agent)
    adapter = await repository.get(db, tenant_id, uuid.UUID(choice))
    if adapter is None or adapter.agent != agent:
        raise NotFound(f"no {agent} adapter with id {choice}")
    return adapter


async def check_choice(runtime: Runtime, tenant_id: uuid.UUID, agent: str, choice: str) -> None:
    """NotFound unless ``choice`` ('active', 'base' or an adapter id) names a usable adapter."""
    if choice in ("active", "base"):
        return
    async with transaction(runtime.sessions) as db:
        await _chosen(db, tenant_id, agent, choice)


async def resolve(runtime: Runtime, tenant_id: uuid.UUID, agent: str, choice: str) -> str | None:
    """The adapter name to serve ``agent`` with (loaded on demand): None for the base model."""
    async with transaction(runtime.sessions) as db:
        adapter = await _chosen(db, tenant_id, agent, choice)
    return None if adapter is None else await ensure_loaded(runtime, adapter)


async def reconcile(runtime: Runtime) -> list[str]:
    """Load every active adapter into this process's backend (on start)."""
    async with transaction(runtime.sessions) as db:
        active = await repository.all_active(db)
    return [await ensure_loaded(runtime, adapter) for adapter in active]


async def list_adapters(
    db: AsyncSession, tenant_id: uuid.UUID, agent: str | None
) -> list[AdapterRead]:
    rows = await repository.list_adapters(db, tenant_id, agent)
    return [AdapterRead.model_validate(a, from_attributes=True) for a in rows]


async def register_candidate(
    db: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    agent: str,
    name: str,
    base_model: str,
    path: str,
    rank: int,
    validation_metrics: dict[str, Any] | None,
    training_job_id: uuid.UUID | None,
) -> Adapter:
    return await repository.add(
        db,
        Adapter(
            tenant_id=tenant_id,
            agent=agent,
            name=name,
            base_model=base_model,
            path=path,
            rank=rank,
            validation_metrics=validation_metrics,
            status=AdapterStatus.candidate,
            training_job_id=training_job_id,
        ),
    )


async def set_active(db: AsyncSession, adapter: Adapter) -> None:
    """Move the active pointer of the adapter's agent to it (also a rollback to an older one)."""
    await repository.lock_agent(db, adapter.tenant_id, adapter.agent)
    await repository.set_active(db, adapter)


async def activate(runtime: Runtime, tenant_id: uuid.UUID, adapter_id: uuid.UUID) -> AdapterRead:
    """The database pointer moves first (committed); then this process's serving side loads
    the adapter. Requests already running finish on the adapter they started with; other
    processes load it on their next request for that agent."""
    async with transaction(runtime.sessions) as db:
        adapter = await repository.get(db, tenant_id, adapter_id)
        if adapter is None:
            raise NotFound(f"adapter {adapter_id} not found")
        if not Path(adapter.path, "adapter_config.json").is_file():
            raise Conflict(f"adapter {adapter_id} has no adapter_config.json at {adapter.path}")
        await set_active(db, adapter)
    await ensure_loaded(runtime, adapter)
    return AdapterRead.model_validate(adapter, from_attributes=True)
