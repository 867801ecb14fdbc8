"""The seam between the memory pipeline and whatever runs the model.

Two implementations: ``inprocess`` (llama.cpp + GGUF LoRA, the embedded default) and ``openai``
(any OpenAI-compatible server; vLLM in production). ``build_backend`` picks one from settings.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from app.core.errors import Unprocessable


@dataclass(frozen=True)
class Completion:
    text: str
    parsed: Any | None  # the JSON value when a schema was given, else None
    model: str  # the base model that produced it
    adapter: str | None  # the LoRA adapter name, None for the base model
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    cached_tokens: int = 0  # prompt tokens reused from an earlier request's key/value cache


class LLMBackend(Protocol):
    base_model: str

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None = None,
        adapter: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 256,
    ) -> Completion:
        """Chat completion. With ``json_schema`` the output is constrained to it and parsed.

        Raises ``app.core.errors.Upstream`` when the model cannot be reached or times out,
        ``app.core.errors.UnusableOutput`` when the reply cannot be used and
        ``app.core.errors.BadUpstreamResponse`` when the server refuses the request."""
        ...

    async def load_adapter(self, name: str, path: str) -> None:
        """Make a LoRA adapter servable under ``name`` (idempotent for the same name/path).

        The directory is checked with ``validate_adapter_dir`` first; a bad adapter raises
        ``app.core.errors.Unprocessable`` and leaves what is being served untouched."""
        ...

    async def unload_adapter(self, name: str) -> None:
        """Stop serving ``name``; unloading an adapter that is not loaded is a no-op."""
        ...

    async def loaded_adapters(self) -> set[str]: ...

    async def ready(self) -> None:
        """Return when the model can serve now; raise ``app.core.errors.Upstream`` saying why
        not (a model server still loading its weights, or unreachable). Asks once, quickly."""
        ...

    async def close(self) -> None: ...


_ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def validate_adapter_dir(path: Path, *, base_model: str, max_lora_rank: int) -> None:
    """Check a PEFT adapter directory before any server is asked to load it.

    Both backends refuse the same things: no ``adapter_config.json`` or weights, an adapter
    that is not LoRA, one trained on another base model (compared by name or by the basename
    of a path, so ``/models/Qwen2.5-7B`` matches ``Qwen/Qwen2.5-7B``, and a Hugging Face cache
    snapshot by the model it holds), or a rank above what
    the server was started with. Raises ``Unprocessable`` saying which."""
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise Unprocessable(f"{path} is not a PEFT adapter directory: no adapter_config.json")
    if not any((path / name).is_file() for name in _ADAPTER_WEIGHT_FILES):
        raise Unprocessable(f"{path} has no adapter weights ({' or '.join(_ADAPTER_WEIGHT_FILES)})")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise Unprocessable(f"{config_file} is not valid JSON: {exc}") from exc
    if config.get("peft_type") != "LORA":
        raise Unprocessable(
            f"adapter at {path} has peft_type {config.get('peft_type')!r}; only LORA is served"
        )
    trained_on = str(config.get("base_model_name_or_path") or "")
    if not _same_model(trained_on, base_model):
        raise Unprocessable(
            f"adapter at {path} was trained on {trained_on!r} but the served base model is "
            f"{base_model!r}"
        )
    rank = max(
        [int(config.get("r", 0)), *(int(r) for r in config.get("rank_pattern", {}).values())]
    )
    if rank > max_lora_rank:
        raise Unprocessable(
            f"adapter at {path} has LoRA rank {rank}, above the server limit {max_lora_rank}; "
            "retrain with a smaller r or raise MEMR1_LLM__MAX_LORA_RANK (and vLLM --max-lora-rank)"
        )


def _same_model(trained_on: str, served: str) -> bool:
    trained_id, served_id = _model_id(trained_on), _model_id(served)
    return trained_id == served_id or Path(trained_id).name == Path(served_id).name


def _model_id(name: str) -> str:
    """``org/name`` for a Hugging Face cache snapshot path (``.../models--org--name/snapshots/
    <commit>``, whose basename is a commit hash), else ``name`` as it is."""
    parts = Path(name).parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            return part.removeprefix("models--").replace("--", "/")
    return name
