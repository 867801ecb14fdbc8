"""GRPO with a LoRA adapter for either agent, on TRL's GRPOTrainer.

The policy is the base model with a fresh PEFT LoRA adapter; GRPO's reference model is the same
model with the adapter disabled, so no second copy is held. For the Manager, the frozen Answer
Agent that turns its banks into rewards is the serving backend on the base model.
"""

import json
import logging
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import (
    BatchEncoding,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from app.core.config import LLMSettings, get_settings
from app.llm.grammar import JsonGrammar
from training.config import GRPOJobConfig
from training.datasets import Retriever, load_encoder, serving_schema
from training.model import load_base_model, training_dtype
from training.rewards import RewardFunc, answer_reward, manager_outcome_reward
from training.validate import ServingAnswerer, open_backend

logger = logging.getLogger(__name__)

Row = dict[str, Any]
Progress = Callable[[dict[str, Any]], None]
ShouldStop = Callable[[], bool]

# Serving decodes under the agent's JSON grammar, which forces these first characters (the
# schemas fix the property order, xgrammar the separators). Prompts are rendered with them
# already in place, so the adapter learns in the very token context serving runs it in.
RESPONSE_PREFIX = {
    "answer": '{"selected": [',
    "manager": '{"operations": [',
    "extractor": '{"facts": [',
}
GRPO_AGENTS = ("answer", "manager")

# TRL's log keys -> the names progress reports use.
_REPORTED = {
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "kl": "kl",
    "loss": "loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "completions/mean_length": "completion_length",
    "outcome": "outcome",
    "format": "format",
    "decision": "decision",
    "mean_token_accuracy": "token_accuracy",
}


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    metrics: dict[str, Any]  # summary: steps done, wall time, rows used, last rewards
    history: list[dict[str, Any]]  # one progress report per optimizer step
    stopped: bool = False  # True when should_stop ended the run early


class Reporter(TrainerCallback):
    """Turns TRL's per-step logs into progress reports and honours ``should_stop``. A log
    without ``step_key`` (GRPO's reward, SFT's loss) is the end-of-training summary."""

    def __init__(
        self, progress: Progress | None, should_stop: ShouldStop | None, step_key: str = "reward"
    ) -> None:
        self.progress = progress
        self.should_stop = should_stop
        self.step_key = step_key
        self.history: list[dict[str, Any]] = []
        self.stopped = False
        self._started = time.perf_counter()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        logs = logs or {}
        if self.step_key not in logs:
            return
        report: dict[str, Any] = {"step": state.global_step, "total": state.max_steps}
        report.update({name: logs[key] for key, name in _REPORTED.items() if key in logs})
        report["elapsed_s"] = round(time.perf_counter() - self._started, 1)
        self.history.append(report)
        if self.progress is not None:
            self.progress(report)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.should_stop is not None and self.should_stop():
            self.stopped = True
            control.should_training_stop = True


def select_rows(
    rows: Sequence[Row], config: GRPOJobConfig, tokenizer: PreTrainedTokenizerBase
) -> list[Row]:
    """Rows whose prompt fits ``max_prompt_length``, shuffled with the seed and cut to
    ``max_train_rows`` (a seeded shuffle keeps a cut representative of every category)."""
    fitting = [row for row in rows if _prompt_tokens(row, tokenizer) <= config.max_prompt_length]
    if len(fitting) < len(rows):
        logger.warning(
            "%d of %d rows exceed max_prompt_length=%d tokens and are skipped",
            len(rows) - len(fitting),
            len(rows),
            config.max_prompt_length,
        )
    random.Random(config.seed).shuffle(fitting)
    return fitting[: config.max_train_rows] if config.max_train_rows else fitting


def render_rows(rows: Sequence[Row], agent: str, tokenizer: PreTrainedTokenizerBase) -> list[Row]:
    """Rows with ``prompt`` rendered to text through the chat template, followed by the
    agent's forced reply prefix, which the rewards put back (``response_prefix`` column)."""
    prefix = RESPONSE_PREFIX[agent]
    return [
        {**row, "prompt": _chat_text(row, tokenizer) + prefix, "response_prefix": prefix}
        for row in rows
    ]


def prompt_schemas(
    rows: Sequence[Row], agent: str, tokenizer: PreTrainedTokenizerBase
) -> dict[str, str]:
    """Each row's rendered prompt -> the JSON schema (text) serving decodes its reply under:
    the schemas depend on the prompt (the keys shown, the question's words)."""
    rendered = render_rows(rows, agent, tokenizer)
    return {
        text["prompt"]: json.dumps(serving_schema(agent, row))
        for row, text in zip(rows, rendered, strict=True)
    }


def _chat_text(row: Row, tokenizer: PreTrainedTokenizerBase) -> str:
    return cast(
        str,
        tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False),
    )


def _prompt_tokens(row: Row, tokenizer: PreTrainedTokenizerBase) -> int:
    encoded = cast(
        BatchEncoding,
        tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True),
    )
    return len(encoded["input_ids"])


def trainer_args(config: GRPOJobConfig) -> dict[str, Any]:
    """The trainer arguments GRPO and SFT share. Float32 on a CPU; bf16 and gradient
    checkpointing on a GPU, where larger models run; a constant learning rate, so a run
    stopped at step N is the run of N steps."""
    cuda = torch.cuda.is_available()
    return {
        "output_dir": str(config.output_dir),
        "learning_rate": config.learning_rate,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "seed": config.seed,
        "use_cpu": not cuda,
        "bf16": training_dtype() is torch.bfloat16,
        "gradient_checkpointing": cuda,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "lr_scheduler_type": "constant",
        "dataloader_num_workers": 0,
    }


def trl_config(config: GRPOJobConfig) -> GRPOConfig:
    """The GRPOConfig of a job. Rollouts use transformers generate (see ``GRPOJobConfig``)."""
    return GRPOConfig(
        **trainer_args(config),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        beta=config.beta,
        temperature=config.temperature,
    )


def run_grpo(
    config: GRPOJobConfig,
    train_rows: Sequence[Row],
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    retriever: Retriever | None = None,
    serving: LLMSettings | None = None,
    start_from: Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter for ``config.agent`` with GRPO on ``train_rows`` and save it (with
    an ``adapter_config.json`` naming the base model) to ``config.output_dir``.

    ``start_from`` is a trained adapter's directory to go on training (its LoRA settings then
    stand instead of the config's), and TRL keeps a frozen copy of it as the reference policy
    the KL term holds the policy near; without it a fresh adapter starts, against the base model.

    ``progress`` receives one dict per optimizer step (step, total, reward_mean, reward_std,
    kl, loss, ...); ``should_stop`` is polled after every step and ends training early when it
    returns True (the adapter trained so far is still saved, ``TrainResult.stopped`` says so).
    Manager rows need a ``retriever``; the bundled MiniLM is loaded when none is given. The
    Manager's frozen Answer Agent is the base model served as ``serving`` (default: this
    process's settings) configures serving."""
    if config.agent not in GRPO_AGENTS:
        raise ValueError(
            f"GRPO trains the {' and the '.join(GRPO_AGENTS)} agents; {config.agent} is trained "
            "with SFT (training/sft.py)"
        )
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model, tokenizer = load_base_model(config.base_model_dir)
    policy = (
        model
        if start_from is None
        else PeftModel.from_pretrained(model, str(start_from), is_trainable=True)
    )
    # Generation pads prompts on the left so every completion starts at the same column.
    tokenizer.padding_side = "left"
    rows = select_rows(train_rows, config, tokenizer)
    if not rows:
        raise ValueError("no training rows fit max_prompt_length; raise it or shorten prompts")
    reporter = Reporter(progress, should_stop)
    reward, close = _reward(config, retriever, serving or get_settings().llm)
    try:
        with warnings.catch_warnings():
            # rollout_func is marked experimental; constrained_rollout depends on it knowingly.
            warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
            trainer = GRPOTrainer(
                model=policy,
                # TRL types rewards as returning list[float | None]; list is invariant.
                reward_funcs=[reward],  # type: ignore[list-item]
                args=trl_config(config),
                train_dataset=Dataset.from_list(render_rows(rows, config.agent, tokenizer)),
                processing_class=tokenizer,
                callbacks=[reporter],
                peft_config=None if start_from is not None else lora_config(config),
                rollout_func=(
                    constrained_rollout(config.agent, prompt_schemas(rows, config.agent, tokenizer))
                    if config.constrained
                    else None
                ),
            )
        trainer.train()
    finally:
        close()
    config.output_dir.mkdir(parents=True, exist_ok=True)
    cast(PeftModel, trainer.model).save_pretrained(str(config.output_dir))
    tokenizer.save_pretrained(str(config.output_dir))
    metrics = _summary(reporter.history, len(rows), time.perf_counter() - started)
    return TrainResult(config.output_dir, metrics, reporter.history, reporter.stopped)


def constrained_rollout(
    agent: str, schemas: Mapping[str, str]
) -> Callable[[list[str], GRPOTrainer], dict[str, Any]]:
    """A TRL rollout function that samples each prompt under the JSON schema serving decodes
    its reply under (``schemas``: rendered prompt -> schema text).

    Free samples of a small model are rarely valid JSON, so every group would score the same
    format failure and GRPO would see no signal; under the grammar every sample parses and the
    rewards differ by content. The samples' log-probabilities are then taken under the
    unmasked policy, as TRL does for its own samples, which also teaches the format.

    Generation runs as TRL's own does: on the model unwrapped from its distributed wrapper,
    with gradient checkpointing (on for GPU training) off while it generates and restored
    for the backward pass."""
    prefix = RESPONSE_PREFIX[agent]
    grammar: JsonGrammar | None = None  # built on the first call, for the trainer's tokenizer

    def rollout(prompts: list[str], trainer: GRPOTrainer) -> dict[str, Any]:
        nonlocal grammar
        tokenizer = cast(PreTrainedTokenizerBase, trainer.processing_class)
        stop_ids = list(trainer.eos_token_ids)
        model: Any = trainer.model
        if grammar is None:
            grammar = JsonGrammar(tokenizer, int(model.config.vocab_size), stop_ids)
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        inputs = tokenizer.pad(
            {"input_ids": prompt_ids}, padding_side="left", return_tensors="pt"
        ).to(trainer.accelerator.device)
        with (
            torch.no_grad(),
            unwrap_model_for_generation(
                trainer.model_wrapped,
                trainer.accelerator,
                gradient_checkpointing_kwargs=cast(
                    dict[str, Any] | None, trainer.args.gradient_checkpointing_kwargs
                ),
            ) as policy,
        ):
            output = policy.generate(
                **inputs,
                generation_config=trainer.generation_config,
                logits_processor=LogitsProcessorList(
                    [grammar.mask([schemas[p] for p in prompts], prefix)]
                ),
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": [_through_stop(tokens, stop_ids) for tokens in new_tokens],
            "logprobs": None,  # TRL computes them from the policy
        }

    return rollout


def _through_stop(tokens: list[int], stop_ids: list[int]) -> list[int]:
    """``tokens`` up to and including the first stop token (generate() pads after it)."""
    end = next((i for i, token in enumerate(tokens) if token in stop_ids), len(tokens) - 1)
    return tokens[: end + 1]


def lora_config(config: GRPOJobConfig) -> LoraConfig:
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _reward(
    config: GRPOJobConfig, retriever: Retriever | None, serving: LLMSettings
) -> tuple[RewardFunc, Callable[[], None]]:
    """The job's reward function and what to call when training is over."""
    if config.agent == "answer":
        return answer_reward(config.reward, config.format_weight), lambda: None
    retriever = retriever or Retriever(load_encoder())
    answerer = ServingAnswerer(open_backend(serving, config.base_model_dir))
    reward = manager_outcome_reward(
        answerer,
        config.reward,
        config.format_weight,
        retrieve=retriever.for_answer,
        decision_weight=config.decision_weight,
    )
    return reward, answerer.close


def _summary(history: list[dict[str, Any]], rows: int, seconds: float) -> dict[str, Any]:
    last = history[-1] if history else {}
    tail = history[-5:]
    return {
        "steps": last.get("step", 0),
        "rows": rows,
        "train_seconds": round(seconds, 1),
        "reward_last": last.get("reward_mean"),
        "reward_tail_mean": (sum(h["reward_mean"] for h in tail) / len(tail) if tail else None),
        "reward_first": history[0]["reward_mean"] if history else None,
    }
