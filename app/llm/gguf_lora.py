"""PEFT LoRA adapters as llama.cpp loads them: a GGUF file of ``<tensor>.lora_a`` /
``<tensor>.lora_b`` pairs named after the base model's GGUF tensors.

The registry, training and vLLM keep the PEFT format; the embedded engine converts an adapter
once, on first load, into ``adapter.gguf`` beside its weights (redone when the weights are
newer). PEFT's scale (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA) is folded into B, so
the file carries no alpha and llama.cpp applies each pair as it is.
"""

import json
import math
import os
import re
import tempfile
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

from app.core.errors import Unprocessable

GGUF_NAME = "adapter.gguf"
_WEIGHTS = "adapter_model.safetensors"
# PEFT saves "base_model.model.<module path>.lora_A.weight" (adapter name stripped).
_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<half>[AB])\.weight")


def ensure_gguf_lora(adapter_dir: Path, base_gguf: Path) -> Path:
    """``adapter_dir/adapter.gguf``, converted from the PEFT weights unless an up-to-date one
    is there. Raises ``Unprocessable`` for an adapter llama.cpp could not apply."""
    target = adapter_dir / GGUF_NAME
    weights = adapter_dir / _WEIGHTS
    if not weights.is_file():
        raise Unprocessable(f"{adapter_dir} has no {_WEIGHTS}; the embedded engine reads only that")
    if target.is_file() and target.stat().st_mtime >= weights.stat().st_mtime:
        return target
    fd, staging = tempfile.mkstemp(prefix=".adapter.", suffix=".gguf", dir=adapter_dir)
    os.close(fd)
    try:
        convert(adapter_dir, base_gguf, Path(staging))
        os.replace(staging, target)
    finally:
        Path(staging).unlink(missing_ok=True)
    return target


def convert(adapter_dir: Path, base_gguf: Path, out: Path) -> None:
    """Write the PEFT adapter in ``adapter_dir`` as a GGUF LoRA for the model ``base_gguf``."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    _check_supported(adapter_dir, config)
    base = _BaseModel(base_gguf)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in load_file(str(adapter_dir / _WEIGHTS)).items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise Unprocessable(f"{adapter_dir}: tensor {key!r} is not a LoRA A/B weight")
        name = base.tensor_name(match["module"])
        pairs.setdefault(name, {})[match["half"]] = tensor.astype(np.float32)
    writer = gguf.GGUFWriter(str(out), arch=base.arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    for name, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise Unprocessable(f"{adapter_dir}: {name} has lora_{''.join(pair)} only")
        a, b = pair["A"], pair["B"]
        rank = a.shape[0]
        scale = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", base.to_gguf_rows(name, b * scale))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _check_supported(adapter_dir: Path, config: dict[str, object]) -> None:
    unsupported = {
        "use_dora": "DoRA",
        "alpha_pattern": "per-module alpha (alpha_pattern)",
        "modules_to_save": "fully trained modules (modules_to_save)",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise Unprocessable(f"adapter at {adapter_dir} uses {what}; llama.cpp cannot apply it")
    if config.get("bias", "none") != "none":
        raise Unprocessable(f"adapter at {adapter_dir} trains biases; llama.cpp cannot apply it")


class _BaseModel:
    """What the conversion needs of the base GGUF: its architecture, tensor names and the
    head counts of the rotary layout llama.cpp's converter gave Q and K."""

    def __init__(self, path: Path) -> None:
        reader = gguf.GGUFReader(path)
        self.arch = _string(reader, "general.architecture")
        self._tensors = {tensor.name for tensor in reader.tensors}
        arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == self.arch)
        self._names = gguf.get_tensor_name_map(arch, _int(reader, f"{self.arch}.block_count"))
        # convert_hf_to_gguf.py permutes the rows of LLaMA's Q and K projections.
        self._permuted_heads = (
            {
                "attn_q": _int(reader, "llama.attention.head_count"),
                "attn_k": _int(reader, "llama.attention.head_count_kv"),
            }
            if self.arch == "llama"
            else {}
        )

    def tensor_name(self, module: str) -> str:
        name = f"{self._names.get_name(module)}.weight"
        if name not in self._tensors:
            raise Unprocessable(f"LoRA module {module!r} has no weight in the base GGUF")
        return name

    def to_gguf_rows(self, name: str, b: np.ndarray) -> np.ndarray:
        heads = self._permuted_heads.get(name.split(".")[-2])
        if heads is None:
            return b
        return (
            b.reshape(heads, 2, b.shape[0] // heads // 2, b.shape[1])
            .swapaxes(1, 2)
            .reshape(b.shape)
        )


def _string(reader: gguf.GGUFReader, key: str) -> str:
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode()


def _int(reader: gguf.GGUFReader, key: str) -> int:
    field = reader.fields[key]
    return int(field.parts[field.data[0]][0])
