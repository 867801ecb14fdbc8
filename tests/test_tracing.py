"""OpenTelemetry traces: off by default; on, a request's span holds the pipeline's spans, each
model call with its model, adapter and token counts."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.core import tracing
from app.core.config import TracingSettings
from app.main import create_app
from tests.api.helpers import add_op, answered, extracted, turns_body


def test_off_by_default_installs_nothing() -> None:
    assert TracingSettings().enabled is False
    assert tracing.configure_tracing(TracingSettings()) is None


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = tracing.configure_tracing(TracingSettings(enabled=True), exporter=exporter)
    assert provider is not None
    yield provider, exporter
    CeleryInstrumentor().uninstrument()
    provider.shutdown()


def finished(traced: tuple[TracerProvider, InMemorySpanExporter]) -> list[ReadableSpan]:
    provider, exporter = traced
    provider.force_flush()
    spans = list(exporter.get_finished_spans())
    exporter.clear()
    return spans


@pytest.fixture
async def traced_client(runtime, traced) -> Iterator[httpx.AsyncClient]:
    settings = runtime.settings.model_copy(update={"tracing": TracingSettings(enabled=True)})
    app = create_app(settings, runtime)
    app.state.runtime = runtime
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        finished(traced)  # only what the test does
        yield http


async def test_a_request_traces_the_pipeline_inside_it(
    traced_client, traced, fake_llm, tenant_a
) -> None:
    fake_llm.push(extracted("Alice adopted a dog named Buddy."), add_op("Alice has a dog, Buddy."))
    response = await traced_client.post(
        "/sessions/s1/turns?wait=true",
        json=turns_body("alice", "I adopted a dog named Buddy."),
        headers=tenant_a.memory,
    )
    assert response.status_code == 200, response.text
    spans = finished(traced)
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
    spans = finished(traced)
    names = [s.name for s in spans]
    assert "GET /healthz" not in names  # probes are left out
    [ask] = [s for s in spans if s.name == "POST /ask"]
    inside = {s.name: s for s in spans if s.context.trace_id == ask.context.trace_id}
    retrieve, answer = inside["answer.retrieve"].attributes, inside["answer.generate"].attributes
    assert retrieve is not None and answer is not None
    assert retrieve["memory_r1.retrieved"] == 1 and retrieve["memory_r1.top_k"] == 60
    assert answer["memory_r1.selected"] == 1
    assert answer["gen_ai.request.model"] == "fake-model"


def test_spans_reach_an_otlp_endpoint(traced) -> None:
    """The OTLP/HTTP exporter the settings build posts the spans where the endpoint says."""
    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces"
        exporter = tracing._otlp(TracingSettings(enabled=True, endpoint=endpoint))
        span = traced[0].get_tracer("probe").start_span("probe", attributes={"n": 1})
        span.end()
        assert exporter.export([span]) == SpanExportResult.SUCCESS
    finally:
        server.shutdown()
    [(path, body)] = received
    assert path == "/v1/traces"
    [resource] = ExportTraceServiceRequest.FromString(body).resource_spans
    [sent] = resource.scope_spans[0].spans
    assert sent.name == "probe"
    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
    assert service == "memory-r1"
