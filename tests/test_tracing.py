"""OpenTelemetry traces: off by default; on, a request's span holds the pipeline's spans, each
model call with its model, adapter and token counts."""

from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from app.core import tracing
from app.core.config import TracingSettings
from app.main import create_app
from tests.api.helpers import add_op, answered, extracted, turns_body
from tests.fixtures.otlp import Traced, otlp_collector


def test_off_by_default_installs_nothing() -> None:
    assert TracingSettings().enabled is False
    assert tracing.configure_tracing(TracingSettings()) is None


@pytest.fixture
async def traced_client(runtime, traced: Traced) -> AsyncIterator[httpx.AsyncClient]:
    settings = runtime.settings.model_copy(update={"tracing": TracingSettings(enabled=True)})
    app = create_app(settings, runtime)
    app.state.runtime = runtime
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        traced.take()  # only what the test does
        yield http


async def test_a_request_traces_the_pipeline_inside_it(
    traced_client, traced, fake_llm, tenant_a
) -> None:
    fake_llm.push(extracted("Alice adopted a dog named Buddy."), add_op())
    response = await traced_client.post(
        "/sessions/s1/turns?wait=true",
        json=turns_body("alice", "I adopted a dog named Buddy."),
        headers=tenant_a.memory,
    )
    assert response.status_code == 200, response.text
    spans = traced.take()
    [request] = [s for s in spans if s.name == "POST /sessions/{session_id}/turns"]
    assert request.attributes is not None and request.attributes["http.route"] == (
        "/sessions/{session_id}/turns"
    )
    inside = {s.name: s for s in spans if s.context.trace_id == request.context.trace_id}
    assert {"ingestion.job", "memory.extract", "memory.manage", "memory.apply"} <= set(inside)

    extract = inside["memory.extract"].attributes
    assert extract is not None
    assert extract["gen_ai.request.model"] == "fake-model"
    assert extract["gen_ai.usage.input_tokens"] > 0
    assert extract["memory_r1.facts"] == 1
    manage = inside["memory.manage"].attributes
    assert manage is not None
    assert manage["memory_r1.operations"] == ("ADD",)
    assert manage["gen_ai.usage.output_tokens"] > 0
    assert manage["memory_r1.adapter"] == ""  # the base model
    assert inside["memory.apply"].attributes == {"memory_r1.applied": 1, "memory_r1.stale": 0}
    job = inside["ingestion.job"]
    assert job.parent is not None and inside["memory.manage"].parent is not None
    assert inside["memory.manage"].parent.span_id == job.context.span_id


async def test_ask_traces_retrieval_and_the_answer(
    traced_client, traced, fake_llm, tenant_a
) -> None:
    await traced_client.post(
        "/users/bob/memories", json={"text": "Bob lives in Oslo."}, headers=tenant_a.memory
    )
    fake_llm.push(answered("Oslo", "m1"))
    response = await traced_client.post(
        "/ask", json={"user_id": "bob", "question": "Where does Bob live?"}, headers=tenant_a.memory
    )
    assert response.status_code == 200, response.text
    await traced_client.get("/healthz")
    spans = traced.take()
    names = [s.name for s in spans]
    assert "GET /healthz" not in names  # probes are left out
    [ask] = [s for s in spans if s.name == "POST /ask"]
    inside = {s.name: s for s in spans if s.context.trace_id == ask.context.trace_id}
    retrieve, answer = inside["answer.retrieve"].attributes, inside["answer.generate"].attributes
    assert retrieve is not None and answer is not None
    assert retrieve["memory_r1.retrieved"] == 1 and retrieve["memory_r1.top_k"] == 10
    assert answer["memory_r1.selected"] == 1
    assert answer["gen_ai.request.model"] == "fake-model"


def test_spans_reach_an_otlp_endpoint(traced: Traced) -> None:
    """The OTLP/HTTP exporter the settings build posts the spans where the endpoint says."""
    with otlp_collector() as collector:
        exporter = tracing._otlp(TracingSettings(enabled=True, endpoint=collector.endpoint))
        span = traced.provider.get_tracer("probe").start_span("probe", attributes={"n": 1})
        span.end()
        assert exporter.export([span]) == SpanExportResult.SUCCESS
    [(path, _)] = collector.received
    assert path == "/v1/traces"
    [(resource, sent)] = collector.spans()
    assert sent.name == "probe" and resource["service.name"] == "memory-r1"
