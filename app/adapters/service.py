"""The adapter registry. Postgres is the source of truth; what the serving backend has loaded
is a cache that is filled on demand and reconciled on start."""

import asyncio
import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters import repository
from app.adapters.schemas import AdapterRead
from app.core.config import LLMBackendKind, Settings
from app.core.db import transaction
from app.core.errors import Conflict, NotFound, Unprocessable, Upstream
from app.core.runtime import Runtime
from app.core.schemas import ADD_ONLY
from app.llm.backend import validate_adapter_dir
from app.llm.factory import served_model_name
from app.models import Adapter, AdapterStatus, Agent
from app.tenants import repository as tenants

log = logging.getLogger(__name__)

# Adapters trained for the bundled model, one folder per agent (see its card.json).
DEFAULTS_DIR = Path(__file__).parent / "defaults"


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
    if adapter.status == AdapterStatus.withdrawn:
        raise Conflict(f"adapter {choice} was withdrawn: it was trained on an erased user's data")
    return adapter


async def check_choice(runtime: Runtime, tenant_id: uuid.UUID, agent: str, choice: str) -> None:
    """NotFound unless ``choice`` ('active', 'base', the Manager's 'add-only' or an adapter id)
    names a usable adapter."""
    if choice in ("active", "base", ADD_ONLY):
        return
    async with transaction(runtime.sessions) as db:
        await _chosen(db, tenant_id, agent, choice)


async def resolve(runtime: Runtime, tenant_id: uuid.UUID, agent: str, choice: str) -> str | None:
    """The adapter name to serve ``agent`` with (loaded on demand): None for the base model,
    which also serves 'active' while the active adapter is one serving failed to load at
    start (the error is in the log; activating an adapter again clears it), and the
    Manager's 'add-only', which calls no model."""
    if choice == ADD_ONLY:
        return None
    async with transaction(runtime.sessions) as db:
        adapter = await _chosen(db, tenant_id, agent, choice)
    if adapter is None or (choice == "active" and adapter.id in runtime.unloadable_adapters):
        return None
    return await ensure_loaded(runtime, adapter)


async def reconcile(runtime: Runtime) -> list[str]:
    """Load every active adapter into this process's backend (on start). One that fails to
    load is logged and its tenant's agent stays on the base model: one bad adapter never
    stops the API for every tenant."""
    async with transaction(runtime.sessions) as db:
        active = await repository.all_active(db)
    loaded = []
    for adapter in active:
        try:
            loaded.append(await ensure_loaded(runtime, adapter))
        except Upstream as exc:
            # The model server is not up yet (vLLM loading its weights): each request for
            # the agent loads the adapter, and answers 503 until the server is reachable.
            log.warning("active adapter %s not loaded yet: %s", adapter.name, exc.detail)
        except Exception as exc:
            runtime.unloadable_adapters.add(adapter.id)
            log.error(
                "active %s adapter %s of tenant %s cannot be loaded, serving the base model "
                "instead: %s",
                adapter.agent,
                adapter.id,
                adapter.tenant_id,
                getattr(exc, "detail", repr(exc)),
            )
    return loaded


async def reconcile_when_served(runtime: Runtime, every_s: float = 5.0) -> list[str]:
    """``reconcile`` as soon as the model can serve: a model server that is still loading
    (vLLM takes minutes) is asked again every ``every_s`` seconds, so the active adapters are
    loaded when it comes up rather than by the first requests that need them."""
    while True:
        try:
            await runtime.llm.ready()
        except Upstream as exc:
            log.info("model not ready (%s); active adapters load when it is", exc.detail)
            await asyncio.sleep(every_s)
            continue
        return await reconcile(runtime)


async def list_adapters(
    db: AsyncSession, tenant_id: uuid.UUID, agent: str | None
) -> list[AdapterRead]:
    rows = await repository.list_adapters(db, tenant_id, agent)
    return [AdapterRead.model_validate(a, from_attributes=True) for a in rows]


async def register_candidate(
    db: AsyncSession,
    *,
    tenant_id: uuid.UUID | None,
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


async def _activatable(db: AsyncSession, tenant_id: uuid.UUID, adapter_id: uuid.UUID) -> Adapter:
    adapter = await repository.get(db, tenant_id, adapter_id)
    if adapter is None:
        raise NotFound(f"adapter {adapter_id} not found")
    if adapter.status == AdapterStatus.withdrawn:
        raise Conflict(
            f"adapter {adapter_id} was withdrawn: it was trained on the data of an erased user"
        )
    return adapter


async def activate(runtime: Runtime, tenant_id: uuid.UUID, adapter_id: uuid.UUID) -> AdapterRead:
    """This process's serving side loads the adapter first, so one that serving refuses is
    never made active; then the database pointer moves (committed). Requests already running
    finish on the adapter they started with; other processes load it on their next request
    for that agent. Activating the active global default puts the tenant's agent back on it:
    the tenant's own active adapter is retired."""
    async with transaction(runtime.sessions) as db:
        adapter = await _activatable(db, tenant_id, adapter_id)
    if adapter.tenant_id is None and adapter.status != AdapterStatus.active:
        raise Conflict(
            f"adapter {adapter_id} is a global default that no longer serves; a tenant can go "
            "back only to the active global default"
        )
    if not Path(adapter.path, "adapter_config.json").is_file():
        raise Conflict(f"adapter {adapter_id} has no adapter_config.json at {adapter.path}")
    await ensure_loaded(runtime, adapter)
    async with transaction(runtime.sessions) as db:
        # Read again: an erasure may have withdrawn it while serving loaded it.
        adapter = await _activatable(db, tenant_id, adapter_id)
        if adapter.tenant_id is None:
            await repository.lock_agent(db, tenant_id, adapter.agent)
            await repository.retire_active(db, tenant_id, adapter.agent)
        else:
            await set_active(db, adapter)
    runtime.unloadable_adapters.discard(adapter.id)
    return AdapterRead.model_validate(adapter, from_attributes=True)


async def import_adapter(
    db: AsyncSession,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    agent: str,
    source: Path,
    activate: bool = False,
) -> Adapter:
    """Register a LoRA adapter trained elsewhere (another machine, ``bench/train_*.py``) for
    one tenant's agent: checked as serving would check it, copied under the adapters
    directory that every serving process reads, registered as a candidate and, with
    ``activate``, made the agent's active adapter."""
    if agent not in {a.value for a in Agent}:
        raise Unprocessable(f"agent must be one of {[a.value for a in Agent]}, got {agent!r}")
    if await tenants.get_tenant(db, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id} does not exist")
    validate_adapter_dir(
        source, base_model=served_model_name(settings.llm), max_lora_rank=settings.llm.max_lora_rank
    )
    name = f"{agent}-import-{uuid.uuid4().hex[:12]}"
    adapter = await _copy_and_register(
        db, settings, source, tenant_id=tenant_id, agent=agent, name=name, metrics=None
    )
    if activate:
        await set_active(db, adapter)
    return adapter


async def _copy_and_register(
    db: AsyncSession,
    settings: Settings,
    source: Path,
    *,
    tenant_id: uuid.UUID | None,
    agent: str,
    name: str,
    metrics: dict[str, Any] | None,
) -> Adapter:
    """Copy a checked adapter directory under the adapters directory (``<tenant id>/`` or
    ``global/``) and register it as a candidate."""
    target = settings.adapter_root / (str(tenant_id) if tenant_id else "global") / name
    shutil.copytree(source, target, dirs_exist_ok=True)
    config = json.loads((target / "adapter_config.json").read_text())
    return await register_candidate(
        db,
        tenant_id=tenant_id,
        agent=agent,
        name=name,
        base_model=served_model_name(settings.llm),
        path=str(target),
        rank=int(config["r"]),
        validation_metrics=metrics,
        training_job_id=None,
    )


def _version(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(folder.glob("adapter_*")):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]


async def install_defaults(
    db: AsyncSession, settings: Settings, source: Path | None = None
) -> list[Adapter]:
    """Register the adapters shipped in ``source`` (``<agent>/`` folders) as the global
    defaults of their agents: copied under the adapters directory, made the active global
    adapter, serving every tenant that has no active adapter of its own. A shipped version
    already registered is made active again if it is not (a release that goes back to an
    earlier adapter), else left as it is, so this runs on every start; one trained on another
    base model than the served one is skipped (logged), and so are all of them on a model
    server (an OpenAI-compatible one may not load adapters at all: import them there)."""
    source = source or DEFAULTS_DIR
    installed: list[Adapter] = []
    if settings.llm.backend != LLMBackendKind.inprocess:
        log.info("shipped adapters are installed for the in-process backend only")
        return installed
    folders = sorted(source.glob("*/adapter_config.json")) if source.is_dir() else []
    for folder in (config.parent for config in folders):
        agent = folder.name
        if agent not in {a.value for a in Agent}:
            log.warning("shipped adapter folder %s is not named after an agent; skipped", folder)
            continue
        try:
            validate_adapter_dir(
                folder,
                base_model=served_model_name(settings.llm),
                max_lora_rank=settings.llm.max_lora_rank,
            )
        except Unprocessable as exc:
            log.info("the shipped %s adapter does not fit this server: %s", agent, exc.detail)
            continue
        name = f"{agent}-default-{_version(folder)}"
        await repository.lock_agent(db, None, agent)
        registered = await repository.get_by_name(db, name)
        if registered is not None:
            if registered.status != AdapterStatus.active:  # a release went back to this version
                await set_active(db, registered)
                log.info("the shipped %s adapter %s is the global default again", agent, name)
                installed.append(registered)
            continue
        card_file = folder / "card.json"
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        adapter = await _copy_and_register(
            db,
            settings,
            folder,
            tenant_id=None,
            agent=agent,
            name=name,
            metrics=card.get("metrics"),
        )
        await set_active(db, adapter)
        log.info("registered the shipped %s adapter %s as the global default", agent, name)
        installed.append(adapter)
    return installed
