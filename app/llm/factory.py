"""Builds the one LLM backend the settings ask for, and names the base model it serves."""

from typing import assert_never

from app.core.config import LLMBackendKind, LLMSettings, Settings
from app.llm.backend import LLMBackend
from app.llm.openai_compat import OpenAICompatBackend


def served_model_name(llm: LLMSettings) -> str:
    """The base model's identity: what serving checks an adapter's ``base_model_name_or_path``
    against, what training records on the adapters it writes and what the registry stores.
    The Hugging Face id the server serves (openai backend), the model directory's name
    (inprocess with ``model_path``) or the bundled SmolLM2's name."""
    match llm.backend:
        case LLMBackendKind.openai:
            return llm.model
        case LLMBackendKind.inprocess:
            from app.llm.bundled import BUNDLED_MODEL_NAME

            return llm.model_path.name if llm.model_path is not None else BUNDLED_MODEL_NAME
        case _:
            assert_never(llm.backend)


def build_backend(settings: Settings) -> LLMBackend:
    """Create the configured backend. The in-process one loads its model here (a second; the
    first run also requantises the bundled GGUF), so call this once, at startup."""
    llm = settings.llm
    match llm.backend:
        case LLMBackendKind.inprocess:
            # Imported here so an API talking to vLLM never loads llama.cpp.
            from app.llm.bundled import ensure_bundled_gguf
            from app.llm.inprocess import InProcessBackend

            model_dir = llm.model_path or ensure_bundled_gguf(settings.data_dir, llm.weights)
            return InProcessBackend(
                model_dir,
                served_model_name(llm),
                llm.max_batch_size,
                llm.max_lora_rank,
                context_tokens=llm.context_tokens,
                threads=llm.threads,
                adapter_idle_s=llm.adapter_idle_s,
                flash_attention=llm.flash_attention,
            )
        case LLMBackendKind.openai:
            return openai_backend(llm)
        case _:
            assert_never(llm.backend)


def openai_backend(llm: LLMSettings) -> OpenAICompatBackend:
    """The backend for the OpenAI-compatible server ``llm`` names (vLLM in production)."""
    return OpenAICompatBackend(
        base_url=llm.base_url,
        base_model=served_model_name(llm),
        api_key=llm.api_key.get_secret_value() if llm.api_key else None,
        timeout_s=llm.timeout_s,
        max_retries=llm.max_retries,
        max_lora_rank=llm.max_lora_rank,
        structured_output=llm.structured_output,
    )
