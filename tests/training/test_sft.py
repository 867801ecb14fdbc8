import json
from pathlib import Path

import pytest

from app.llm.backend import validate_adapter_dir
from app.llm.bundled import BUNDLED_MODEL_NAME
from training.config import GRPOJobConfig
from training.sft import run_sft
from training.warm_start import manager_warm_start_rows


def _config(base: Path, out: Path, steps: int = 3) -> GRPOJobConfig:
    return GRPOJobConfig(
        agent="manager",
        output_dir=out,
        base_model_dir=base,
        lora_r=4,
        lora_alpha=8,
        learning_rate=3e-3,
        max_steps=steps,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        seed=0,
    )


def test_a_completion_without_the_reply_prefix_is_refused(tmp_path: Path) -> None:
    row = manager_warm_start_rows(1)[0]
    wrong = {**row, "completion": '{"ops": []}'}
    with pytest.raises(ValueError, match="reply prefix"):
        run_sft(_config(tmp_path, tmp_path / "out"), [wrong])


@pytest.mark.model
def test_sft_learns_the_replies_and_saves_a_servable_adapter(
    bundled_model_dir: Path, tmp_path: Path
) -> None:
    rows = manager_warm_start_rows(2)
    reports: list[dict] = []
    result = run_sft(_config(bundled_model_dir, tmp_path / "out"), rows, progress=reports.append)
    assert [r["step"] for r in reports] == [1, 2, 3]
    # The same two rows every step: their loss falls.
    assert reports[-1]["loss"] < reports[0]["loss"]
    assert result.metrics["rows"] == 2 and not result.stopped
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    validate_adapter_dir(result.adapter_dir, base_model=BUNDLED_MODEL_NAME, max_lora_rank=16)
