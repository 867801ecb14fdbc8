"""The base model as training loads it: the weights of the model serving runs, as a local
Hugging Face directory; float32 on a CPU, bfloat16 on a GPU that has it."""

from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.core.config import LLMBackendKind, LLMSettings
from app.llm.bundled import ensure_bundled_model


def training_model_dir(llm: LLMSettings, data_dir: Path) -> Path:
    """The local directory of the model ``llm`` serves, which GRPO trains adapters for.

    ``model_path`` when it is set; otherwise, for an OpenAI-compatible server (vLLM), its model
    id looked up in the Hugging Face cache the server downloaded it into (never downloaded
    here), and for the in-process engine the bundled SmolLM2, de-quantised once."""
    if llm.model_path is not None:
        return llm.model_path
    if llm.backend is LLMBackendKind.inprocess:
        return ensure_bundled_model(data_dir)
    if Path(llm.model).is_dir():  # vLLM serving a local directory by its path
        return Path(llm.model)
    try:
        return Path(snapshot_download(llm.model, local_files_only=True))
    except LocalEntryNotFoundError as exc:
        raise ValueError(
            f"the weights of {llm.model!r}, the model the LLM server serves, are not in the "
            "Hugging Face cache of this process (HF_HOME): training reads the cache vLLM "
            "downloaded them into (docker compose mounts it at /hf-cache), or set "
            "MEMR1_LLM__MODEL_PATH to a local copy"
        ) from exc


def training_dtype() -> torch.dtype:
    """bfloat16 on a CUDA GPU that supports it (as vLLM serves), else float32."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_base_model(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local Hugging Face causal LM in ``training_dtype()``; the trainer places it.

    The weights are the ones serving runs (the bundled model: dequantised from the same GGUF),
    so an adapter trained on them fits the served model."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        # Batched generation and training pad; rows are masked, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=training_dtype())
    return model, tokenizer
