"""Shared fixtures: real Postgres (embedded), real MiniLM embeddings, a scripted LLM for
pipeline logic, and the API driven through httpx's ASGI transport.

Each API test runs inside one connection-level transaction that is rolled back afterwards;
the service's own transactions become savepoints inside it."""

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import create_engine, session_factory
from app.core.runtime import Runtime
from app.embeddings import InProcessEmbedder
from app.llm.bundled import ensure_bundled_gguf, ensure_bundled_model
from app.main import create_app
from app.models import Scope
from app.tenants import service as tenants
from tests.fixtures.database import database_url, pg_server  # noqa: F401  (fixtures)
from tests.fixtures.fake_llm import FakeLLM
from tests.fixtures.otlp import Traced

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The shared benchmark data lives next to the repository (../shared/data); a checkout elsewhere
# points MEMR1_SHARED_DATA at it.
SHARED_DATA = Path(
    os.environ.get("MEMR1_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:  # noqa: F811
    return Settings(
        database_url=database_url,
        data_dir=Path(os.environ.get("MEMR1_TEST_DATA_DIR", tmp_path_factory.mktemp("data"))),
        start_worker=False,
        bootstrap_admin=False,
        dataset_dirs=[SHARED_DATA, tmp_path_factory.getbasetemp()],
    )


@pytest.fixture(scope="session")
def bundled_model_dir(settings: Settings) -> Path:
    """The converted SmolLM2, once per test session (MEMR1_TEST_DATA_DIR keeps it between
    sessions; the conversion takes about 25 s)."""
    return ensure_bundled_model(settings.data_dir)


@pytest.fixture(scope="session")
def serving_model_dir(settings: Settings) -> Path:
    """The bundled SmolLM2 as the in-process backend serves it (GGUF + tokenizer), once per
    test session."""
    return ensure_bundled_gguf(settings.data_dir, settings.llm.weights)


@pytest.fixture(scope="session")
def traced() -> Traced:
    """Tracing on in this process from the first test that asks, for the rest of the session
    (one global tracer provider per process), spans kept in memory."""
    return Traced()


@pytest.fixture(scope="session")
def embedder() -> InProcessEmbedder:
    return InProcessEmbedder()


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url or "")
    yield engine
    await engine.dispose()


@dataclass
class QueueRecorder:
    ingestion: list[uuid.UUID]
    training: list[uuid.UUID]


@pytest.fixture
def fake_llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
def queued() -> QueueRecorder:
    return QueueRecorder([], [])


@pytest.fixture
async def runtime(
    settings: Settings,
    engine: AsyncEngine,
    embedder: InProcessEmbedder,
    fake_llm: FakeLLM,
    queued: QueueRecorder,
) -> AsyncIterator[Runtime]:
    """A runtime whose every transaction is a savepoint in one rolled-back transaction."""
    async with engine.connect() as conn:
        outer = await conn.begin()
        sessions = async_sessionmaker(
            bind=conn, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        yield Runtime(
            settings=settings,
            engine=engine,
            sessions=sessions,
            embedder=embedder,
            llm=fake_llm,
            enqueue_ingestion=queued.ingestion.append,
            enqueue_training=queued.training.append,
        )
        await outer.rollback()


@pytest.fixture
async def db(runtime: Runtime) -> AsyncIterator[AsyncSession]:
    async with runtime.sessions() as session:
        yield session


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime.settings, runtime)
    app.state.runtime = runtime
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@dataclass
class TenantKeys:
    tenant_id: uuid.UUID
    admin: dict[str, str]  # headers with a key holding both scopes
    memory: dict[str, str]  # headers with a memory-only key
    admin_only: dict[str, str]  # headers with an admin-only key


async def make_tenant(runtime: Runtime, name: str) -> TenantKeys:
    async with runtime.sessions() as db:
        full = await tenants.create_key(
            db, tenant_id=None, name="full", scopes=[Scope.admin, Scope.memory], tenant_name=name
        )
        memory = await tenants.create_key(
            db, tenant_id=full.tenant_id, name="memory", scopes=[Scope.memory]
        )
        admin = await tenants.create_key(
            db, tenant_id=full.tenant_id, name="admin", scopes=[Scope.admin]
        )
        await db.commit()

    def bearer(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    return TenantKeys(
        full.tenant_id, bearer(full.plaintext), bearer(memory.plaintext), bearer(admin.plaintext)
    )


@pytest.fixture
async def tenant_a(runtime: Runtime) -> TenantKeys:
    return await make_tenant(runtime, "tenant-a")


@pytest.fixture
async def tenant_b(runtime: Runtime) -> TenantKeys:
    return await make_tenant(runtime, "tenant-b")


@pytest.fixture
async def committed_runtime(
    settings: Settings,
    engine: AsyncEngine,
    embedder: InProcessEmbedder,
    fake_llm: FakeLLM,
    queued: QueueRecorder,
) -> Runtime:
    """A runtime whose transactions really commit, for concurrency tests (one connection per
    transaction). Tests using it work in tenants of their own."""
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        embedder=embedder,
        llm=fake_llm,
        enqueue_ingestion=queued.ingestion.append,
        enqueue_training=queued.training.append,
    )


@pytest.fixture
async def committed_client(committed_runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(committed_runtime.settings, committed_runtime)
    app.state.runtime = committed_runtime
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as http:
        yield http
