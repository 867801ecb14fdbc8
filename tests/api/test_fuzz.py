"""Schemathesis over every route of the real app, served by uvicorn on localhost with the real
database and embedder and a scripted LLM (the real one would take minutes per case): whatever
the schemas let a client send, the answer is never a server error."""

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
import uvicorn
from schemathesis.checks import not_a_server_error
from sqlalchemy import delete

from app.core.config import Settings
from app.core.db import create_engine, session_factory, transaction
from app.core.runtime import Runtime
from app.embeddings import build_embedder
from app.main import create_app
from app.models import Scope, Tenant
from app.tenants import service as tenants
from tests.api.helpers import add_op, answered, extracted
from tests.fixtures.fake_llm import FakeCall, FakeLLM, Reply

EXAMPLES_PER_ROUTE = 40


def _reply(call: FakeCall) -> Reply:
    """A valid reply for whichever agent asks."""
    properties = (call.json_schema or {}).get("properties", {})
    if "facts" in properties:
        return extracted("The user said something.")
    if "operations" in properties:
        return add_op("The user said something.")
    return answered("unknown")


class _Served:
    """The app under uvicorn in a thread of its own, with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready = threading.Event()
        self.key = ""
        self.tenant_id: uuid.UUID | None = None
        self.server: uvicorn.Server | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="fuzz-api", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by the fixture, not lost in the thread
            self.error = exc
            self.ready.set()

    async def _serve(self) -> None:
        assert self.settings.database_url
        engine = create_engine(self.settings.database_url)
        runtime = Runtime(
            settings=self.settings,
            engine=engine,
            sessions=session_factory(engine),
            embedder=build_embedder(self.settings.embedding),
            llm=FakeLLM(responder=_reply),
            enqueue_ingestion=lambda job_id: None,
            enqueue_training=lambda job_id: None,
        )
        async with transaction(runtime.sessions) as db:
            issued = await tenants.create_key(
                db,
                tenant_id=None,
                name="fuzz",
                scopes=[Scope.admin, Scope.memory],
                tenant_name=f"fuzz-{uuid.uuid4().hex[:6]}",
            )
        self.key, self.tenant_id = issued.plaintext, issued.tenant_id
        app = create_app(self.settings, runtime)
        app.state.runtime = runtime
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started and not serving.done():
            await asyncio.sleep(0.01)
        self.ready.set()
        try:
            await serving
        finally:
            async with transaction(runtime.sessions) as db:  # everything the fuzzing stored
                await db.execute(delete(Tenant).where(Tenant.id == self.tenant_id))
            await runtime.close()

    @property
    def base_url(self) -> str:
        assert self.server is not None
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[_Served]:
    served = _Served(settings)
    served.thread.start()
    served.ready.wait(timeout=120)
    if served.error is not None:
        raise served.error
    try:
        yield served
    finally:
        assert served.server is not None
        served.server.should_exit = True
        served.thread.join(timeout=30)


# The OpenAPI document needs no runtime: build it once at collection, one test per route.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(database_url="postgresql://")).openapi()
)


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_ROUTE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_server_errors(case: Any, served: _Served) -> None:
    case.call_and_validate(
        base_url=served.base_url,
        headers={"Authorization": f"Bearer {served.key}"},
        checks=[not_a_server_error],
        timeout=30,
    )
