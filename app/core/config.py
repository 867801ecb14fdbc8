"""The one settings object. Nothing else in the project reads the environment.

Every field can be set as ``MEMR1_<FIELD>``; nested groups use ``__``
(``MEMR1_LLM__BACKEND=openai``). ``.env.example`` documents them all.
"""

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LLMBackendKind(StrEnum):
    inprocess = "inprocess"
    openai = "openai"


class Weights(StrEnum):
    """Weight types llama.cpp serves the bundled model in (requantised from its Q4_1 GGUF).
    ``auto`` is bf16 where llama.cpp computes bf16 dot products natively, else q8_0."""

    auto = "auto"
    bf16 = "bf16"
    f16 = "f16"
    f32 = "f32"
    q8_0 = "q8_0"
    q4_1 = "q4_1"


class StructuredOutput(StrEnum):
    """How a request asks an OpenAI-compatible server for JSON under a schema."""

    # "response_format": {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}:
    # OpenAI's form; vLLM, SGLang, llama.cpp's llama-server, Ollama.
    json_schema = "json_schema"
    # "response_format": {"type": "json_object", "schema": {...}}: llama-cpp-python's server.
    json_object = "json_object"
    # "structured_outputs": {"json": {...}}: vLLM's own parameter (0.12 and later).
    structured_outputs = "structured_outputs"


# The LoRA ranks vLLM's --max-lora-rank accepts.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class EmbeddingBackendKind(StrEnum):
    inprocess = "inprocess"
    openai = "openai"


class LLMSettings(BaseModel):
    backend: LLMBackendKind = Field(
        LLMBackendKind.inprocess,
        description="inprocess: bundled SmolLM2 on llama.cpp in process; openai: an "
        "OpenAI-compatible server such as vLLM.",
    )
    base_url: str = Field(
        "http://localhost:8000/v1", description="OpenAI-compatible endpoint (openai backend)."
    )
    api_key: SecretStr | None = Field(None, description="Bearer token for the LLM endpoint.")
    model: str = Field(
        "SmolLM2-135M-Instruct",
        description="Base model name served by the endpoint (openai backend) or a local "
        "HF model directory (inprocess backend; empty name means the bundled SmolLM2).",
    )
    model_path: Path | None = Field(
        None,
        description="inprocess backend: a local model directory holding one .gguf file (served "
        "by llama.cpp) and the Hugging Face tokenizer and weights (training). Unset means the "
        "bundled SmolLM2, prepared once from its GGUF in <data_dir>/models/. openai backend: a "
        "local copy of the served model's Hugging Face weights for training; unset, training "
        "reads `model` from the Hugging Face cache (HF_HOME) and never downloads it.",
    )
    weights: Weights = Field(
        Weights.auto,
        description="inprocess, bundled model: the weight type llama.cpp serves. auto: bf16 "
        "where llama.cpp was built with AVX512_BF16 (on a 2-core AMD EPYC with it, conv-26 "
        "ingested in 3.6 min against q8_0's 4.6 and /ask over 60 memories took 2.8 s against "
        "3.4, though free-text decoding was 11-28 % slower), else q8_0 (bench/engine.py and "
        "bench/ingest.py measure them).",
    )
    threads: int | None = Field(
        None, ge=1, description="inprocess: llama.cpp threads. Unset: one per CPU core."
    )
    flash_attention: bool = Field(
        True,
        description="inprocess: llama.cpp's flash attention. On a 2-core AMD EPYC it made every "
        "measure faster: ingestion 30 % (bench/ingest.py), /ask over 60 memories 5.5 s -> 4.3 s, "
        "decoding 36 -> 84 tok/s and prefill 223 -> 487 tok/s with other prompts cached "
        "(bench/engine.py). Off, decoding was faster on an Intel machine measured earlier; "
        "measure yours with those two benchmarks.",
    )
    context_tokens: int = Field(
        16384,
        ge=512,
        description="inprocess: key/value cache size in tokens, shared by all sequences (and "
        "the prompt starts kept for reuse).",
    )
    extractor_model: str | None = Field(None, description="Model/adapter for fact extraction.")
    manager_model: str | None = Field(None, description="Model/adapter for the Memory Manager.")
    answer_model: str | None = Field(None, description="Model/adapter for the Answer Agent.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout to the LLM endpoint.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries on connection errors and 5xx.")
    max_lora_rank: int = Field(
        64,
        ge=1,
        description="Largest LoRA rank the server accepts (openai backend: one of vLLM's "
        f"--max-lora-rank values, {', '.join(map(str, VLLM_LORA_RANKS))}).",
    )
    structured_output: StructuredOutput = Field(
        StructuredOutput.json_schema,
        description="openai backend: how requests ask for JSON under a schema. json_schema "
        "(vLLM, SGLang, llama.cpp's llama-server, Ollama), json_object (llama-cpp-python's "
        "server), structured_outputs (vLLM's own parameter).",
    )
    max_batch_size: int = Field(
        8, ge=1, le=64, description="inprocess: requests decoded together (llama.cpp sequences)."
    )
    adapter_idle_s: float | None = Field(
        600.0,
        gt=0,
        description="inprocess: free a LoRA adapter's weights after this many seconds unused; "
        "its next request loads them again from the converted file. Unset: never.",
    )

    @model_validator(mode="after")
    def _rank_vllm_accepts(self) -> "LLMSettings":
        if self.backend == LLMBackendKind.openai and self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank {self.max_lora_rank} is not a rank vLLM starts with; use one of "
                f"{', '.join(map(str, VLLM_LORA_RANKS))} (and the same --max-lora-rank for vLLM)"
            )
        return self


class EmbeddingSettings(BaseModel):
    backend: EmbeddingBackendKind = Field(EmbeddingBackendKind.inprocess)
    base_url: str = Field("http://localhost:8001/v1", description="openai backend endpoint.")
    api_key: SecretStr | None = None
    model: str = Field("all-MiniLM-L6-v2", description="Embedding model name (384 dimensions).")
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    batch_size: int = Field(64, ge=1)


class LimitSettings(BaseModel):
    max_turn_chars: int = Field(8000, ge=1, description="Longest accepted turn text.")
    max_turns_per_request: int = Field(200, ge=1, description="Largest batch of turns per POST.")
    max_query_chars: int = Field(2000, ge=1, description="Longest question or search query.")
    max_top_k: int = Field(60, ge=1, le=60, description="Largest top_k for retrieval.")
    max_body_bytes: int = Field(2_000_000, ge=1024, description="Largest accepted request body.")
    max_memory_chars: int = Field(2000, ge=1, description="Longest memory text.")


class PipelineSettings(BaseModel):
    manager_candidates: int = Field(5, ge=1, le=50, description="Similar memories shown per fact.")
    max_facts_per_turn: int = Field(
        3, ge=1, le=20, description="Most facts extracted from one turn."
    )
    noop_min_similarity: float = Field(
        0.85,
        ge=0,
        le=1,
        description="A Manager NOOP says the fact is already stored; with no candidate at "
        "least this similar (cosine) the fact is added instead. 0 trusts every NOOP.",
    )
    extract_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Turns of a job whose facts are extracted at once (the in-process backend "
        "batches them, the next window's while the Manager decides on this one's); Manager "
        "decisions stay one at a time, in turn order.",
    )
    answer_top_k: int = Field(
        10,
        ge=1,
        le=60,
        description="Memories /ask retrieves for the Answer Agent unless a request sets top_k. "
        "The paper uses 60 with 7B models; the bundled 135M model answers conv-30 better and "
        "five times faster from 10 (docs/results).",
    )
    ingest_max_attempts: int = Field(
        8,
        ge=1,
        le=20,
        description="Tries before a job fails. With the backoff below, 8 ride out about four "
        "minutes of the model endpoint being down (a vLLM restart).",
    )
    ingest_retry_backoff_s: float = Field(
        5.0, ge=0, description="Wait before the first retry; doubled for each next one."
    )
    ingest_retry_max_backoff_s: float = Field(
        60.0, ge=0, description="The longest wait between two tries of a job."
    )
    heartbeat_s: float = Field(
        5.0, gt=0, description="How often a worker records that a job it runs is alive."
    )
    stale_after_s: float = Field(
        30.0,
        gt=0,
        description="A running ingestion or training job without a heartbeat for this long has "
        "lost its worker; the workers' sweep queues it again.",
    )
    sweep_every_s: float = Field(10.0, gt=0, description="How often each worker sweeps.")
    training_max_attempts: int = Field(
        2,
        ge=1,
        le=20,
        description="Runs of a training job (a lost worker's included) before it fails.",
    )


class TracingSettings(BaseModel):
    enabled: bool = Field(False, description="Export OpenTelemetry traces (see app.core.tracing).")
    exporter: Literal["otlp", "console"] = Field(
        "otlp", description="otlp: OTLP over HTTP; console: print spans to stdout."
    )
    endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces URL, e.g. http://localhost:4318/v1/traces. Unset: the "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT variables, else "
        "localhost:4318.",
    )
    service_name: str = Field("memory-r1", description="service.name of the spans.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MEMR1_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    data_dir: Path = Field(
        Path(platformdirs.user_data_dir("memory-r1")),
        description="Embedded database, converted models and adapters live here.",
    )
    database_url: str | None = Field(
        None,
        description="postgresql:// URL of a Postgres with pgvector. Unset: embedded Postgres "
        "(pgserver) in <data_dir>/pg.",
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker (redis://...). Unset: the same Postgres through kombu's "
        "SQLAlchemy transport.",
    )
    adapters_dir: Path | None = Field(
        None, description="Where trained LoRA adapters are written. Unset: <data_dir>/adapters."
    )
    dataset_dirs: list[Path] = Field(
        default_factory=list,
        description="Folders training jobs may read datasets from (a JSON list); a job's "
        "relative path is taken inside the first. Unset: <data_dir>/datasets.",
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    api_workers: int = Field(1, ge=1, description="uvicorn worker processes.")
    start_worker: bool = Field(
        True, description="serve also starts a Celery worker process (embedded mode)."
    )
    bootstrap_admin: bool = Field(
        True, description="On an empty database, create a tenant and print an admin key once."
    )
    default_adapters: bool = Field(
        True,
        description="serve registers the adapters shipped for the bundled model "
        "(app/adapters/defaults) as global defaults, serving every tenant that has not "
        "activated its own.",
    )
    log_level: str = "INFO"

    llm: LLMSettings = LLMSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    limits: LimitSettings = LimitSettings()
    pipeline: PipelineSettings = PipelineSettings()
    tracing: TracingSettings = TracingSettings()

    @property
    def adapter_root(self) -> Path:
        return self.adapters_dir or self.data_dir / "adapters"

    @property
    def dataset_roots(self) -> list[Path]:
        return self.dataset_dirs or [self.data_dir / "datasets"]


@lru_cache
def get_settings() -> Settings:
    return Settings()
