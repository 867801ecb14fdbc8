"""OpenTelemetry traces, off by default (``MEMR1_TRACING__ENABLED=true`` turns them on).

When on, each process (API, workers) exports its spans over OTLP/HTTP (or prints them, with
``exporter=console``): one span per API request (FastAPI's instrumentation; health and metrics
routes left out), Celery's publish and run spans, which carry the trace from the request that
queued a job into the worker that runs it, and the pipeline's own spans, named below, with the
model, adapter and token counts of each model call. When off, nothing is installed and the
spans below are OpenTelemetry's no-ops."""

import logging
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span

from app.core.config import TracingSettings
from app.llm.backend import Completion

log = logging.getLogger(__name__)
tracer = trace.get_tracer("memory_r1")

# Span names: a job run by a worker, and the steps of the pipeline inside it or a request.
INGESTION_JOB = "ingestion.job"
TRAINING_JOB = "training.job"
EXTRACT = "memory.extract"
MANAGE = "memory.manage"
APPLY = "memory.apply"
RETRIEVE = "answer.retrieve"
ANSWER = "answer.generate"

_provider: TracerProvider | None = None


def configure_tracing(
    settings: TracingSettings, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install this process's tracer provider, once, when tracing is on (``exporter``
    replaces the configured one). Returns the provider, or None when tracing is off."""
    global _provider
    if not settings.enabled:
        return None
    if _provider is None:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        if exporter is None:
            exporter = ConsoleSpanExporter() if settings.exporter == "console" else _otlp(settings)
        resource = Resource.create({"service.name": settings.service_name})
        _provider = TracerProvider(resource=resource)
        _provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(_provider)
        CeleryInstrumentor().instrument(tracer_provider=_provider)
        log.info("tracing on: spans go to %s", settings.endpoint or settings.exporter)
    return _provider


def _otlp(settings: TracingSettings) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Without an endpoint the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, as usual.
    return OTLPSpanExporter(endpoint=settings.endpoint) if settings.endpoint else OTLPSpanExporter()


def instrument_app(app: FastAPI, settings: TracingSettings) -> None:
    """A span per request of ``app``, when tracing is on."""
    if configure_tracing(settings) is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_provider, excluded_urls="healthz,readyz,metrics"
    )


def record_completion(span: Span, completion: Completion | None, **attributes: Any) -> None:
    """The model call's attributes (OpenTelemetry's GenAI names where there is one), and
    ``attributes``, on ``span``."""
    if completion is not None:
        span.set_attributes(
            {
                "gen_ai.request.model": completion.model,
                "gen_ai.usage.input_tokens": completion.prompt_tokens,
                "gen_ai.usage.output_tokens": completion.completion_tokens,
                "memory_r1.adapter": completion.adapter or "",
                "memory_r1.cached_tokens": completion.cached_tokens,
                "memory_r1.latency_ms": round(completion.latency_ms, 1),
            }
        )
    span.set_attributes({k: v for k, v in attributes.items() if v is not None})
