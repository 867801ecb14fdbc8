from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from training.config import GRPOJobConfig

FIXED = {"agent": "answer", "output_dir": "/tmp/adapter", "base_model_dir": "/tmp/base"}


def make(**params: object) -> GRPOJobConfig:
    return GRPOJobConfig.from_params(params, **FIXED)


class TestDefaults:
    def test_defaults_are_valid_and_typed(self) -> None:
        config = make()
        assert config.agent == "answer"
        assert config.output_dir == Path("/tmp/adapter")
        assert isinstance(config.base_model_dir, Path)
        assert config.num_generations >= 2
        assert config.constrained is True

    def test_every_field_has_help(self) -> None:
        for f in fields(GRPOJobConfig):
            assert f.metadata.get("help"), f.name
        assert set(GRPOJobConfig.help()) == {f.name for f in fields(GRPOJobConfig)}

    def test_frozen(self) -> None:
        config = make()
        with pytest.raises(FrozenInstanceError):
            config.lora_r = 4  # type: ignore[misc]

    def test_prompts_per_step(self) -> None:
        config = make(
            num_generations=4, per_device_train_batch_size=4, gradient_accumulation_steps=3
        )
        assert config.prompts_per_step == 3


class TestFromParams:
    def test_json_values_are_normalised(self) -> None:
        config = make(target_modules=["q_proj", "v_proj"], beta=0)
        assert config.target_modules == ("q_proj", "v_proj")
        assert config.beta == 0.0 and isinstance(config.beta, float)

    def test_unknown_key_lists_valid_ones(self) -> None:
        with pytest.raises(ValueError, match="Unknown training parameter") as info:
            make(lora_rank=8)
        assert "lora_r" in str(info.value) and "num_generations" in str(info.value)

    def test_vllm_generation_is_not_a_parameter(self) -> None:
        # Rollouts always use transformers generate; see GRPOJobConfig.
        with pytest.raises(ValueError, match=r"Unknown training parameter\(s\) \['use_vllm'\]"):
            make(use_vllm=True)

    def test_fixed_keys_cannot_be_overridden(self) -> None:
        with pytest.raises(ValueError, match="set by the service"):
            GRPOJobConfig.from_params({"output_dir": "/elsewhere"}, **FIXED)

    def test_wrong_type_says_what_was_expected(self) -> None:
        with pytest.raises(ValueError, match="lora_r must be an integer"):
            make(lora_r="16")
        with pytest.raises(ValueError, match="constrained must be true or false"):
            make(constrained="yes")
        with pytest.raises(ValueError, match="target_modules must be a list of strings"):
            make(target_modules="q_proj")

    def test_max_train_rows_accepts_none(self) -> None:
        assert make(max_train_rows=None).max_train_rows is None
        assert make(max_train_rows=10).max_train_rows == 10


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"agent": "judge"}, "agent must be one of"),
        ({"reward": "judge"}, "reward must be 'em'"),
        ({"format_weight": 1.5}, r"format_weight must be in \[0, 1\]"),
        ({"decision_weight": -0.5}, r"decision_weight must be in \[0, 1\]"),
        ({"lora_r": 0}, "lora_r must be between 1 and 256"),
        ({"lora_alpha": 0}, "lora_alpha must be > 0"),
        ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
        ({"target_modules": []}, "target_modules must name at least one module"),
        ({"learning_rate": 0}, r"learning_rate must be in \(0, 1\)"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"num_generations": 1, "per_device_train_batch_size": 1}, "num_generations must be >= 2"),
        ({"max_prompt_length": 8}, "max_prompt_length must be >= 32"),
        ({"max_completion_length": 0}, "max_completion_length must be >= 1"),
        ({"beta": -0.1}, "beta must be >= 0"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"max_train_rows": 0}, "max_train_rows must be >= 1"),
        ({"max_steps": 10**9}, "max_steps must be at most 100000"),
        (
            {"num_generations": 128, "per_device_train_batch_size": 128},
            "num_generations must be at most 64",
        ),
        ({"max_completion_length": 10**6}, "max_completion_length must be at most 4096"),
        ({"max_prompt_length": 10**6}, "max_prompt_length must be at most 32768"),
        (
            {"gradient_accumulation_steps": 10**6},
            "gradient_accumulation_steps must be at most 1024",
        ),
        ({"lora_alpha": 10**6}, "lora_alpha must be at most 4096"),
        ({"temperature": 1e9}, "temperature must be at most 10"),
        ({"beta": 1e9}, "beta must be at most 10"),
        ({"max_train_rows": 10**9}, "max_train_rows must be at most 1e"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"seed": 2**40}, "seed must be at most"),
        ({"target_modules": ["q_proj"] * 65}, "at most 64 modules"),
    ],
)
def test_invalid_values_are_explained(params: dict[str, object], message: str) -> None:
    fixed = {**FIXED, **params}
    with pytest.raises(ValueError, match=message):
        GRPOJobConfig(**fixed)  # type: ignore[arg-type]


def test_batch_must_hold_whole_groups() -> None:
    with pytest.raises(ValueError, match=r"multiple of num_generations \(3\)") as info:
        make(num_generations=3, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    assert "per_device_train_batch_size to 3" in str(info.value)
    config = make(num_generations=3, per_device_train_batch_size=3, gradient_accumulation_steps=2)
    assert config.prompts_per_step == 2
