"""GPU training, checked on the machine it will run on: ``scripts/gpu-smoke.sh`` (``python -m
training.smoke``) runs a few GRPO steps and an adapter load on the CUDA device and prints one
PASS or FAIL line per check; it exits 1 when any fails.

What each check would catch:
- ``cuda``: no usable device, or one without bfloat16 (training then runs in float32).
- ``model``: the base model not loading onto the device in the training dtype.
- ``rollout``: samples that change when gradient checkpointing is on (transformers dropping
  the key/value cache while generate still feeds one token a step) or do not parse under the
  agent's schema.
- ``backward``: no gradient reaching the LoRA weights, or a non-finite one, with checkpointing on.
- ``grpo``: GRPO steps that do not run to the end on the device or report a non-finite loss.
- ``adapter``: the trained adapter failing the serving checks, not loading back onto the
  device with the weights it was saved with, or not answering under the schema.

``--model`` names the model to check (a directory, or a Hugging Face id in the local cache);
without it a tiny randomly initialised model of the bundled SmolLM2's architecture stands in,
so the script needs no weights. ``--allow-cpu`` runs the checks on a machine without a GPU,
to try the script itself.
"""

import argparse
import json
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from app.core.config import LLMBackendKind, LLMSettings
from app.llm.backend import validate_adapter_dir
from app.llm.bundled import ensure_bundled_model
from app.memory.prompts import ANSWER_MAX_TOKENS
from app.memory.schemas import as_views
from training.config import GRPOJobConfig
from training.datasets import answer_row
from training.grpo import (
    RESPONSE_PREFIX,
    constrained_rollout,
    prompt_schemas,
    render_rows,
    run_grpo,
)
from training.model import load_base_model, training_dtype, training_model_dir

FACTS = [
    (
        "Ann",
        "On 8 May 2023, Ann adopted a puppy named Scout.",
        "What is Ann's puppy called?",
        "Scout",
    ),
    ("Bob", "On 8 May 2023, Bob moved to Lisbon.", "Where did Bob move?", "Lisbon"),
    ("Ann", "On 8 May 2023, Ann started a pottery class.", "What class did Ann start?", "pottery"),
    ("Bob", "On 8 May 2023, Bob ran a marathon in 4 hours.", "How long was Bob's run?", "4 hours"),
]


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def tiny_model(source: Path, out: Path, hidden: int = 64) -> Path:
    """A randomly initialised model of ``source``'s architecture, ``hidden`` wide and two
    layers deep, with ``source``'s tokenizer, saved to ``out``."""
    config = AutoConfig.from_pretrained(source)
    config.update(
        {
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": hidden // 4,
        }
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def rollout_view(model: Any, tokenizer: Any, max_new_tokens: int, **sampling: Any) -> Any:
    """What ``constrained_rollout`` reads of a GRPOTrainer, to run it outside training on the
    device ``model`` is on."""
    eos = [int(tokenizer.eos_token_id)]
    return SimpleNamespace(
        model=model,
        model_wrapped=model,
        processing_class=tokenizer,
        eos_token_ids=eos,
        accelerator=Accelerator(cpu=model.device.type == "cpu"),
        args=SimpleNamespace(gradient_checkpointing_kwargs={"use_reentrant": False}),
        generation_config=GenerationConfig(
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        ),
    )


def rows() -> list[dict[str, Any]]:
    """Answer Agent rows: a question about each of ``FACTS``, all four shown as memories."""
    when = datetime(2023, 5, 8, tzinfo=UTC)
    views = as_views(
        [(uuid.UUID(int=i + 1), t, who, when) for i, (who, t, _, _) in enumerate(FACTS)]
    )
    return [answer_row(q, views, gold=gold, category=4) for _, _, q, gold in FACTS]


def _replies(model: Any, tokenizer: Any) -> list[list[int]]:
    """Greedy answer replies of ``model`` under the schema, one per row."""
    prompts = [row["prompt"] for row in render_rows(rows(), "answer", tokenizer)]
    view = rollout_view(model, tokenizer, ANSWER_MAX_TOKENS, do_sample=False)
    rollout = constrained_rollout("answer", prompt_schemas(rows(), "answer", tokenizer))
    return list(rollout(prompts, view)["completion_ids"])


def _parse(tokenizer: Any, completion: list[int]) -> Any:
    return json.loads(
        RESPONSE_PREFIX["answer"] + tokenizer.decode(completion, skip_special_tokens=True)
    )


def _train_checkpointed(policy: Any) -> None:
    """Training mode with gradient checkpointing on, as GRPO runs on a GPU."""
    policy.train()
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class Smoke:
    def __init__(self, model_dir: Path, model_name: str, device: str, work: Path, steps: int):
        self.model_dir = model_dir
        self.model_name = model_name
        self.device = device
        self.work = work
        self.steps = steps

    def load(self) -> tuple[Any, Any]:
        model, tokenizer = load_base_model(self.model_dir)
        # mypy reads the decorator on transformers' .to() as taking a model, not a device.
        return cast(Any, model).to(self.device), tokenizer

    def model(self) -> str:
        model, _ = self.load()
        dtype, device = next(model.parameters()).dtype, model.device.type
        if dtype != training_dtype() or device != self.device:
            raise AssertionError(f"loaded as {dtype} on {device}")
        params = sum(p.numel() for p in model.parameters())
        return f"{self.model_name}, {params / 1e6:.1f}M parameters, {dtype} on {device}"

    def policy(self) -> tuple[Any, Any]:
        """A fresh LoRA policy on the base model, and its tokenizer."""
        model, tokenizer = self.load()
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
        return get_peft_model(model, lora), tokenizer

    def rollout(self) -> str:
        policy, tokenizer = self.policy()
        policy.eval()
        plain = _replies(policy, tokenizer)
        _train_checkpointed(policy)
        checkpointed = _replies(policy, tokenizer)
        if checkpointed != plain:
            raise AssertionError("greedy samples differ with gradient checkpointing on")
        if not policy.is_gradient_checkpointing:
            raise AssertionError("gradient checkpointing was left off after the rollout")
        answers = [_parse(tokenizer, c)["answer"] for c in plain]
        return f"same samples with checkpointing on and off, all parse: {answers}"

    def backward(self) -> str:
        policy, tokenizer = self.policy()
        _train_checkpointed(policy)
        [row] = render_rows(rows()[:1], "answer", tokenizer)
        text = row["prompt"] + '"m1"], "answer": "Scout"}'
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        ids = ids.to(self.device)
        loss = policy(input_ids=ids, labels=ids).loss
        loss.backward()
        lora = {n: p.grad for n, p in policy.named_parameters() if "lora_B" in n}
        if any(g is None or not torch.isfinite(g).all() for g in lora.values()):
            raise AssertionError("a LoRA weight got no gradient or a non-finite one")
        if all(float(g.abs().sum()) == 0 for g in lora.values() if g is not None):
            raise AssertionError("every LoRA gradient is zero")
        base = [n for n, p in policy.named_parameters() if "lora_" not in n and p.grad is not None]
        if base:
            raise AssertionError(f"base weights got gradients: {base[:3]}")
        return f"loss {loss.item():.3f}, gradients on {len(lora)} LoRA matrices only"

    def grpo(self) -> str:
        config = GRPOJobConfig(
            agent="answer",
            output_dir=self.work / "adapter",
            base_model_dir=self.model_dir,
            lora_r=8,
            lora_alpha=16,
            learning_rate=1e-3,
            max_steps=self.steps,
            num_generations=2,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            max_completion_length=32,
        )
        started = time.perf_counter()
        result = run_grpo(config, rows())
        steps = [h["step"] for h in result.history]
        if steps != list(range(1, self.steps + 1)):
            raise AssertionError(f"reported steps {steps}, expected 1..{self.steps}")
        losses = [h["loss"] for h in result.history]
        if not all(math.isfinite(x) for x in losses):
            raise AssertionError(f"non-finite loss: {losses}")
        seconds = time.perf_counter() - started
        return f"{len(steps)} steps in {seconds:.1f} s, losses {losses}"

    def adapter(self) -> str:
        adapter_dir = self.work / "adapter"
        validate_adapter_dir(adapter_dir, base_model=self.model_name, max_lora_rank=64)
        model, tokenizer = self.load()
        loaded = PeftModel.from_pretrained(model, str(adapter_dir)).to(self.device)
        saved = load_file(adapter_dir / "adapter_model.safetensors")
        on_device = {
            n.replace(".default", ""): p for n, p in loaded.named_parameters() if "lora_" in n
        }
        for name, tensor in saved.items():
            if not torch.equal(on_device[name].detach().cpu().to(tensor.dtype), tensor):
                raise AssertionError(f"{name} differs from the saved weights")
            if on_device[name].device.type != self.device:
                raise AssertionError(f"{name} is on {on_device[name].device}")
        answers = [_parse(tokenizer, c)["answer"] for c in _replies(loaded, tokenizer)]
        return f"{len(saved)} LoRA tensors loaded on {self.device}, answers parse: {answers}"


def run(checks: list[tuple[str, Callable[[], str]]]) -> list[Result]:
    """Run each check in order and print its line as it ends; a check that raises fails."""
    results = []
    for name, check in checks:
        try:
            result = Result(name, True, check())
        except Exception as exc:
            result = Result(name, False, f"{type(exc).__name__}: {exc}")
        print(result.line(), flush=True)
        results.append(result)
    return results


def _model(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """The model directory to check and the name serving would know it by."""
    if args.model:
        served = LLMSettings(backend=LLMBackendKind.openai, model=args.model)
        return training_model_dir(served, args.data_dir), args.model
    bundled = ensure_bundled_model(args.data_dir)
    return tiny_model(bundled, work / "tiny-smollm2"), str(work / "tiny-smollm2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory or Hugging Face id (local cache)")
    parser.add_argument("--steps", type=int, default=2, help="GRPO steps (default 2)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "memory-r1-smoke",
        help="where the bundled model is prepared for the tiny stand-in",
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run on the CPU where there is no GPU"
    )
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()

    def device() -> str:
        if not cuda:
            if args.allow_cpu:
                return "no CUDA device; running on the CPU (--allow-cpu)"
            raise AssertionError("torch sees no CUDA device")
        name = torch.cuda.get_device_name(0)
        if not torch.cuda.is_bf16_supported():
            raise AssertionError(f"{name} has no bfloat16")
        return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, bf16"

    with tempfile.TemporaryDirectory(prefix="memory-r1-smoke-") as tmp:
        work = Path(tmp)
        [found] = run([("cuda", device)])
        if not found.ok:
            return 1
        model_dir, name = _model(args, work)
        smoke = Smoke(model_dir, name, "cuda" if cuda else "cpu", work, args.steps)
        results = run(
            [
                ("model", smoke.model),
                ("rollout", smoke.rollout),
                ("backward", smoke.backward),
                ("grpo", smoke.grpo),
                ("adapter", smoke.adapter),
            ]
        )
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) + 1 - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
