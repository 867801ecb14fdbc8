"""Builds the one LLM backend the settings ask for."""

from typing import assert_never

from app.core.config import LLMBackendKind, Settings
from app.llm.backend import LLMBackend
from app.llm.openai_compat import OpenAICompatBackend


def build_backend(settings: Settings) -> LLMBackend:
    """Create the configured backend. The in-process one loads its model here (a second; the
    first run also requantises the bundled GGUF), so call this once, at startup."""
    llm = settings.llm
    match llm.backend:
        case LLMBackendKind.inprocess:
            # Imported here so an API talking to vLLM never loads llama.cpp.
            from app.llm.bundled import BUNDLED_MODEL_NAME, ensure_bundled_gguf
            from app.llm.inprocess import InProcessBackend

            if llm.model_path is None:
                model_dir = ensure_bundled_gguf(settings.data_dir, llm.weights)
                base_model = BUNDLED_MODEL_NAME
            else:
                # Adapters trained from this directory record it as their base model path,
                # whose basename is what validate_adapter_dir compares.
                model_dir, base_model = llm.model_path, llm.model_path.name
            return InProcessBackend(
                model_dir,
                base_model,
                llm.max_batch_size,
                llm.max_lora_rank,
                context_tokens=llm.context_tokens,
                threads=llm.threads,
                adapter_idle_s=llm.adapter_idle_s,
            )
        case LLMBackendKind.openai:
            return OpenAICompatBackend(
                base_url=llm.base_url,
                base_model=llm.model,
                api_key=llm.api_key.get_secret_value() if llm.api_key else None,
                timeout_s=llm.timeout_s,
                max_retries=llm.max_retries,
                max_lora_rank=llm.max_lora_rank,
                structured_output=llm.structured_output,
            )
        case _:
            assert_never(llm.backend)
