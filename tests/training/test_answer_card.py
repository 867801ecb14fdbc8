"""The card ``bench.train_answer --ship`` writes for an adapter trained on eval runs' memories,
going on from the adapter it replaces."""

import json
from pathlib import Path

import pytest

import bench.train_answer as train_answer
from training.config import GRPOJobConfig


def test_the_card_names_its_inputs_and_keeps_the_card_of_the_adapter_it_went_on_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = tmp_path / "defaults"
    shipped = defaults / "answer"
    shipped.mkdir(parents=True)
    (shipped / "card.json").write_text(json.dumps({"command": "python -m bench.train_answer"}))
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "adapter_config.json").write_text(json.dumps({"r": 16}))
    (trained / "adapter_model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(train_answer, "DEFAULTS_DIR", defaults)
    metrics = {"f1": 0.4, "bleu1": 0.3, "em": 0.1, "unusable": 0.0, "rows": 81}
    payload = {
        "settings": {
            "train_run": "/runs/26",
            "val_run": "/runs/30",
            "run_config": "trained-both",
            "start_from": str(shipped),  # the very folder the new adapter replaces
            "argv": "python -m bench.train_answer ...",
        },
        "train_rows": 194,
        "val_rows": 81,
        "train": {"metrics": {"steps": 20, "train_seconds": 1800.0}},
        "before": metrics | {"f1": 0.3},
        "after": metrics,
    }
    config = GRPOJobConfig(agent="answer", output_dir=trained, base_model_dir=tmp_path)

    target = train_answer.ship("train_answer", payload, config, trained)

    card = json.loads((target / "card.json").read_text())
    assert card["command"] == (
        "python -m bench.train_answer --max-steps 20 --minutes 100000 --train-run RUN26 "
        "--val-run RUN30 --start-from PREVIOUS --ship"
    )
    assert set(card["inputs"]) == {"RUN26", "RUN30", "PREVIOUS"}
    assert "--configs trained-both" in card["inputs"]["RUN26"]
    assert card["previous"] == {"command": "python -m bench.train_answer"}
    assert card["data"]["memories"] == "shown by the service in RUN26 and RUN30"
    assert (target / "adapter_model.safetensors").read_bytes() == b"weights"
    assert card["metrics"]["f1"] == 0.4 and card["base_metrics"]["f1"] == 0.3


def test_a_card_that_only_went_on_training_says_nothing_of_service_memories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--start-from alone trains on LoCoMo's observations: no runs in the command or data."""
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "adapter_config.json").write_text(json.dumps({"r": 16}))
    (trained / "adapter_model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(train_answer, "DEFAULTS_DIR", tmp_path / "defaults")
    metrics = {"f1": 0.4, "bleu1": 0.3, "em": 0.1, "unusable": 0.0, "rows": 81}
    payload = {
        "settings": {"start_from": str(tmp_path / "earlier"), "argv": "python -m ..."},
        "train_rows": 194,
        "val_rows": 81,
        "train": {"metrics": {"steps": 25, "train_seconds": 1000.0}},
        "before": metrics,
        "after": metrics,
    }
    config = GRPOJobConfig(agent="answer", output_dir=trained, base_model_dir=tmp_path)

    card = json.loads(
        (train_answer.ship("train_answer", payload, config, trained) / "card.json").read_text()
    )

    assert card["command"].endswith("--start-from PREVIOUS --ship")
    assert set(card["inputs"]) == {"PREVIOUS"}
    assert "memories" not in card["data"]
    assert "previous" not in card  # the earlier folder has no card
