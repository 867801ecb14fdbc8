"""Supervised fine-tuning of a LoRA adapter on expected replies, on TRL's SFTTrainer: the warm
start an agent gets before (or instead of) GRPO where the data says what it should write.

Each row holds the agent's chat prompt (``prompt``) and the reply it should give
(``completion``, the JSON as serving's grammar writes it). The prompt is rendered as GRPO renders
it, through the chat template and followed by the reply's forced prefix, so the adapter learns
in the token context serving runs it in; the loss covers the completion only.
"""

import time
from collections.abc import Sequence
from typing import Any, cast

import torch
from datasets import Dataset
from peft import PeftModel
from trl import SFTConfig, SFTTrainer

from training.config import GRPOJobConfig
from training.grpo import (
    RESPONSE_PREFIX,
    Progress,
    Reporter,
    ShouldStop,
    TrainResult,
    lora_config,
    render_rows,
    select_rows,
    trainer_args,
)
from training.model import load_base_model

Row = dict[str, Any]


def sft_config(config: GRPOJobConfig) -> SFTConfig:
    return SFTConfig(
        **trainer_args(config),
        completion_only_loss=True,
        max_length=config.max_prompt_length + config.max_completion_length,
    )


def run_sft(
    config: GRPOJobConfig,
    rows: Sequence[Row],
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> TrainResult:
    """Train a LoRA adapter for ``config.agent`` on ``rows`` (``prompt`` messages and the
    ``completion`` that should follow them) and save it to ``config.output_dir``.

    From ``config`` it takes the agent, the model and output directories, the LoRA settings,
    the learning rate, ``max_steps`` optimizer steps of ``per_device_train_batch_size`` x
    ``gradient_accumulation_steps`` rows, the seed, ``max_prompt_length`` and
    ``max_train_rows``; the GRPO-only settings are not used. Progress and early stopping work
    as in ``run_grpo``."""
    started = time.perf_counter()
    prefix = RESPONSE_PREFIX[config.agent]
    if any(not row["completion"].startswith(prefix) for row in rows):
        raise ValueError(f"every completion must start with the reply prefix {prefix!r}")
    torch.manual_seed(config.seed)
    model, tokenizer = load_base_model(config.base_model_dir)
    chosen = select_rows(rows, config, tokenizer)
    if not chosen:
        raise ValueError("no training rows fit max_prompt_length; raise it or shorten prompts")
    eos = cast(str, tokenizer.eos_token)
    data = [
        {"prompt": row["prompt"], "completion": source["completion"][len(prefix) :] + eos}
        for row, source in zip(render_rows(chosen, config.agent, tokenizer), chosen, strict=True)
    ]
    reporter = Reporter(progress, should_stop, step_key="loss")
    trainer = SFTTrainer(
        model=model,
        args=sft_config(config),
        train_dataset=Dataset.from_list(data),
        processing_class=tokenizer,
        callbacks=[reporter],
        peft_config=lora_config(config),
    )
    trainer.train()
    config.output_dir.mkdir(parents=True, exist_ok=True)
    cast(PeftModel, trainer.model).save_pretrained(str(config.output_dir))
    tokenizer.save_pretrained(str(config.output_dir))
    history = reporter.history
    metrics = {
        "steps": history[-1]["step"] if history else 0,
        "rows": len(chosen),
        "train_seconds": round(time.perf_counter() - started, 1),
        "loss_first": history[0].get("loss") if history else None,
        "loss_last": history[-1].get("loss") if history else None,
    }
    return TrainResult(config.output_dir, metrics, history, reporter.stopped)
