import json
import os
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from app.llm.backend import validate_adapter_dir
from app.llm.bundled import BUNDLED_MODEL_NAME, ensure_bundled_model
from app.llm.grammar import JsonGrammar
from app.memory.prompts import ANSWER_MAX_TOKENS, MANAGER_MAX_TOKENS
from app.memory.schemas import Fact, as_views
from tests.memory.test_prompts import accepts
from training import grpo
from training.config import GRPOJobConfig
from training.datasets import manager_row, serving_schema
from training.grpo import (
    TrainResult,
    constrained_rollout,
    prompt_schemas,
    render_rows,
    run_grpo,
    select_rows,
)
from training.model import load_base_model
from training.rewards import RewardFunc, completion_text
from training.smoke import FACTS, rollout_view
from training.smoke import rows as tiny_rows
from training.warm_start import manager_warm_start_rows

MAX_TOKENS = {"answer": ANSWER_MAX_TOKENS, "manager": MANAGER_MAX_TOKENS}

grpo_answer_reward = grpo.answer_reward  # the real one, before the test patches it


def answer_reward_without_ties(kind: str, format_weight: float) -> RewardFunc:
    """The real Answer Agent reward plus a tiny term that differs between different texts.

    Two samples of a 135M model often score the same, and a group whose rewards tie has no
    advantage and gives no update; in a two-step run that would leave the adapter untouched."""
    reward = grpo_answer_reward(kind, format_weight)

    def untied(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        rewards = reward(prompts, completions, **kwargs)
        texts = [completion_text(c) for c in completions]
        return [r + sum(map(ord, t)) % 997 / 10_000 for r, t in zip(rewards, texts, strict=True)]

    untied.__name__ = reward.__name__
    return untied


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = os.environ.get("MEMR1_TEST_DATA_DIR") or tmp_path_factory.mktemp("grpo-data")
    return ensure_bundled_model(Path(data_dir))


def tiny_config(output_dir: Path, base_dir: Path, **settings: Any) -> GRPOJobConfig:
    """An Answer Agent run small enough for a test: groups of 2, one per step, 16 tokens."""
    return GRPOJobConfig(
        agent="answer",
        output_dir=output_dir,
        base_model_dir=base_dir,
        learning_rate=1e-3,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_completion_length=16,
        **settings,
    )


class Trained:
    def __init__(self, result: TrainResult, reports: list[dict[str, Any]], model: Any) -> None:
        self.result = result
        self.reports = reports
        self.model = model  # the very model object GRPO trained (LoRA injected in place)


@pytest.fixture(scope="module")
def trained(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    loaded: list[Any] = []

    def recording_loader(model_dir: Path) -> Any:
        model, tokenizer = load_base_model(model_dir)
        loaded.append(model)
        return model, tokenizer

    config = tiny_config(
        tmp_path_factory.mktemp("adapter"),
        base_dir,
        lora_r=4,
        lora_alpha=8,
        max_steps=4,
        beta=0.04,
        seed=1,
    )
    reports: list[dict[str, Any]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grpo, "load_base_model", recording_loader)
        patch.setattr(grpo, "answer_reward", answer_reward_without_ties)
        # Asked to stop once a step has been reported: training ends after step 2 of 4.
        result = run_grpo(
            config, tiny_rows(), progress=reports.append, should_stop=lambda: bool(reports)
        )
    return Trained(result, reports, loaded[0])


@pytest.mark.model
class TestTinyRun:
    def test_reports_every_step_and_stops_when_asked(self, trained: Trained) -> None:
        assert [r["step"] for r in trained.reports] == [1, 2]
        assert all(r["total"] == 4 for r in trained.reports)
        for key in ("reward_mean", "reward_std", "kl", "loss", "outcome", "format"):
            assert key in trained.reports[0], key
        assert trained.result.stopped
        assert trained.result.history == trained.reports
        assert trained.result.metrics["steps"] == 2
        assert trained.result.metrics["rows"] == 4

    def test_lora_weights_changed_and_base_weights_did_not(
        self, trained: Trained, base_dir: Path
    ) -> None:
        fresh, _ = load_base_model(base_dir)
        reference = dict(fresh.named_parameters())
        lora_b = []
        for name, param in trained.model.named_parameters():
            if "lora_B" in name:
                lora_b.append(param.detach())
            elif "lora_" not in name:
                assert torch.equal(param, reference[name.replace(".base_layer", "")]), name
        assert lora_b and any(b.abs().max() > 0 for b in lora_b)  # B starts at zero

    def test_adapter_is_saved_for_serving(self, trained: Trained, base_dir: Path) -> None:
        adapter_dir = trained.result.adapter_dir
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == 4
        assert Path(config["base_model_name_or_path"]).name == BUNDLED_MODEL_NAME
        weights = load_file(adapter_dir / "adapter_model.safetensors")
        assert weights and all("lora_" in key for key in weights)
        validate_adapter_dir(adapter_dir, base_model=BUNDLED_MODEL_NAME, max_lora_rank=16)

    def test_loading_the_adapter_changes_the_outputs(
        self, trained: Trained, base_dir: Path
    ) -> None:
        model, tokenizer = load_base_model(base_dir)
        prompt = tiny_rows()[0]["prompt"]
        ids = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            base_logits = model(**ids).logits
        adapted = PeftModel.from_pretrained(model, str(trained.result.adapter_dir))
        with torch.inference_mode():
            adapted_logits = adapted(**ids).logits
        assert (adapted_logits - base_logits).abs().max() > 1e-5

    def test_training_goes_on_from_a_trained_adapter(
        self, trained: Trained, base_dir: Path, tmp_path: Path
    ) -> None:
        """``start_from`` trains the given adapter further: its rank stands (the config's
        16 does not), its weights move, and what is saved still loads for serving."""
        start = trained.result.adapter_dir
        config = tiny_config(tmp_path / "further", base_dir, max_steps=1, seed=2)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(grpo, "answer_reward", answer_reward_without_ties)
            result = run_grpo(config, tiny_rows(), start_from=start)
        saved = json.loads((result.adapter_dir / "adapter_config.json").read_text())
        assert saved["r"] == 4
        before = load_file(start / "adapter_model.safetensors")
        after = load_file(result.adapter_dir / "adapter_model.safetensors")
        assert before.keys() == after.keys()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        validate_adapter_dir(result.adapter_dir, base_model=BUNDLED_MODEL_NAME, max_lora_rank=16)


@pytest.mark.model
def test_rows_longer_than_max_prompt_length_are_skipped(base_dir: Path, tmp_path: Path) -> None:
    _, tokenizer = load_base_model(base_dir)
    rows = tiny_rows()
    config = GRPOJobConfig(
        agent="answer", output_dir=tmp_path, base_model_dir=base_dir, max_prompt_length=32
    )
    assert select_rows(rows, config, tokenizer) == []
    roomy = GRPOJobConfig(
        agent="answer", output_dir=tmp_path, base_model_dir=base_dir, max_train_rows=3
    )
    picked = select_rows(rows, roomy, tokenizer)
    assert len(picked) == 3 and all(row in rows for row in picked)
    assert select_rows(rows, roomy, tokenizer) == picked  # seeded, so repeatable


@pytest.mark.model
def test_the_rollout_samples_the_same_with_gradient_checkpointing_on(base_dir: Path) -> None:
    """Training on a GPU turns gradient checkpointing on; the rollout generates as without
    it and leaves it on for the backward pass."""
    model, tokenizer = load_base_model(base_dir)
    policy = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = rollout_view(policy, tokenizer, 48, do_sample=False)
    prompts = [row["prompt"] for row in render_rows(tiny_rows()[:2], "answer", tokenizer)]
    rollout = constrained_rollout("answer", prompt_schemas(tiny_rows()[:2], "answer", tokenizer))

    policy.eval()
    plain = rollout(prompts, trainer)["completion_ids"]
    policy.train()
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert policy.is_gradient_checkpointing
    checkpointed = rollout(prompts, trainer)["completion_ids"]

    assert checkpointed == plain
    assert policy.is_gradient_checkpointing  # restored for the backward pass
    assert all(len(c) > 4 for c in plain)


def manager_rows() -> list[dict[str, Any]]:
    """Manager rows: a new fact about Ann, the four smoke facts as candidates."""
    when = datetime(2023, 5, 9, tzinfo=UTC)
    views = as_views([(uuid.UUID(int=i + 1), t, w, when) for i, (w, t, _, _) in enumerate(FACTS)])
    fact = Fact("Ann adopted a second puppy, Rex.", "Ann", when)
    question = {"question": "Ann's puppies?", "gold": "Scout, Rex", "category": 1}
    return [manager_row(fact, views[:n], views, **question) for n in (4, 2)]


@pytest.mark.model
@pytest.mark.parametrize("agent", ["answer", "manager"])
def test_constrained_rollout_samples_only_replies_that_parse(agent: str, base_dir: Path) -> None:
    """Free sampling of the base model rarely yields valid JSON; under the serving grammar
    every sample is a complete reply in the schema serving decodes its prompt under."""
    model, tokenizer = load_base_model(base_dir)
    eos = [int(tokenizer.eos_token_id)]
    trainer = rollout_view(model, tokenizer, MAX_TOKENS[agent], do_sample=True, temperature=1.0)
    source = tiny_rows()[:2] if agent == "answer" else manager_rows()
    rows = render_rows(source, agent, tokenizer)
    prompts = [row["prompt"] for row in rows for _ in range(2)]
    torch.manual_seed(0)
    output = constrained_rollout(agent, prompt_schemas(source, agent, tokenizer))(prompts, trainer)
    assert output["prompt_ids"] == [
        tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts
    ]
    for completion, prompt in zip(output["completion_ids"], prompts, strict=True):
        assert completion[-1] == eos[0]
        text = rows[0]["response_prefix"] + tokenizer.decode(completion, skip_special_tokens=True)
        source_row = source[[r["prompt"] for r in rows].index(prompt)]
        assert accepts(serving_schema(agent, source_row), text), text


@pytest.mark.model
def test_each_row_of_a_rollout_batch_is_masked_by_its_own_schema(base_dir: Path) -> None:
    """A rollout batch mixes prompts whose serving schemas differ (an answer offers only
    the words of its own prompt); each row's next tokens are those of its own schema."""
    _, tokenizer = load_base_model(base_dir)
    vocab = len(tokenizer)
    grammar = JsonGrammar(tokenizer, vocab, [int(tokenizer.eos_token_id)])
    schemas = [
        json.dumps({"type": "object", "properties": {"a": {"enum": [word]}}, "required": ["a"]})
        for word in ("yes", "no")
    ]
    mask = grammar.mask(schemas, prefix='{"a": "')
    scores = mask(torch.zeros((2, 1), dtype=torch.long), torch.zeros((2, vocab)))
    yes, no = (tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no"))
    assert scores[0, yes] == 0 and scores[0, no] == float("-inf")
    assert scores[1, no] == 0 and scores[1, yes] == float("-inf")


def test_grpo_leaves_the_extractor_to_sft(tmp_path: Path) -> None:
    config = GRPOJobConfig(agent="extractor", output_dir=tmp_path, base_model_dir=tmp_path)
    with pytest.raises(ValueError, match="SFT"):
        run_grpo(config, tiny_rows())


@pytest.mark.model
def test_generated_manager_rows_hand_the_reward_the_decision_they_expect(
    base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL hands a reward every dataset column but ``completion``: the decision reward reads
    the expected reply from ``expected_reply``, which generated rows carry."""
    seen: list[Any] = []

    def recording(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        seen.extend(kwargs["expected_reply"])
        return [float(i % 2) for i in range(len(completions))]

    monkeypatch.setattr(grpo, "_reward", lambda *_: (recording, lambda: None))
    rows = manager_warm_start_rows(2)
    config = replace(tiny_config(tmp_path, base_dir, max_steps=1), agent="manager")
    run_grpo(config, rows)
    assert seen and set(seen) <= {row["expected_reply"] for row in rows}
