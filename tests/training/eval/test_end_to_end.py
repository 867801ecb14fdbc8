"""`memory-r1 eval` end to end on the bundled model, through the real service in process:
a six-turn slice of conv-30, two questions, three configurations, every output written."""

import argparse
import json
import uuid
from pathlib import Path

import pytest

from app.core.config import Settings
from app.llm.bundled import BUNDLED_MODEL_NAME
from app.llm.inprocess import InProcessBackend
from app.main import create_app
from tests.conftest import SHARED_DATA, make_tenant
from training.eval.cli import add_arguments, run_from_args

pytestmark = pytest.mark.model


def one_session_slice(tmp_path: Path, turns: int = 6) -> Path:
    """conv-30 cut to the first turns of its first session and two questions on that session
    (answerable or not: this run checks the outputs, not the model)."""
    [conv] = json.loads((SHARED_DATA / "locomo" / "locomo_val_conv30.json").read_text())
    conversation = conv["conversation"]
    for key in [k for k in conversation if k.startswith("session_")]:
        if key not in ("session_1", "session_1_date_time"):
            del conversation[key]
    conversation["session_1"] = conversation["session_1"][:turns]
    conv["qa"] = [
        qa
        for qa in conv["qa"]
        if qa["category"] != 5 and all(e.startswith("D1:") for e in qa["evidence"])
    ][:2]
    path = tmp_path / "conv30-session1.json"
    path.write_text(json.dumps([conv]))
    return path


async def test_eval_run_writes_every_output(
    committed_runtime, settings: Settings, serving_model_dir: Path, tmp_path: Path
) -> None:
    committed_runtime.llm = InProcessBackend(
        serving_model_dir, BUNDLED_MODEL_NAME, max_batch_size=4, max_lora_rank=64
    )
    tenant = await make_tenant(committed_runtime, f"eval-{uuid.uuid4().hex[:6]}")
    app = create_app(settings, committed_runtime)
    app.state.runtime = committed_runtime
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "results"
    args = parser.parse_args(
        [
            "--data", str(one_session_slice(tmp_path)),
            "--configs", "full-context,rag,base",
            "--out", str(out),
            "--api-key", tenant.memory["Authorization"].removeprefix("Bearer "),
            "--no-progress",
        ]
    )  # fmt: skip
    result_dir = await run_from_args(
        args, app=app, llm=committed_runtime.llm, embedder=committed_runtime.embedder
    )
    for name in ("questions.jsonl", "summary.json", "results.md", "chart.png"):
        assert (result_dir / name).is_file(), name
    rows = [json.loads(line) for line in (result_dir / "questions.jsonl").read_text().splitlines()]
    assert {row["config"] for row in rows} == {"full-context", "rag", "base"}
    assert len(rows) == 6
    summary = json.loads((result_dir / "summary.json").read_text())
    assert "not configured" in (result_dir / "results.md").read_text()
    assert summary["seed"] is not None
    await committed_runtime.llm.close()
