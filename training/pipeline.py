"""One training job, end to end, in its own (spawned) process: rows -> GRPO -> validation.

The worker that supervises it (workers/tasks/train.py) reads the events it puts on a queue:
``("log", str)``, ``("metrics", dict)``, ``("result", dict)`` and ``("error", str)``."""

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.config import LLMSettings
from app.llm.factory import served_model_name
from app.supervise import exit_with_parent
from training.config import GRPOJobConfig
from training.datasets import (
    Retriever,
    Row,
    answer_rows_from_locomo,
    load_encoder,
    manager_rows_from_locomo,
    rows_from_episodes,
)
from training.grpo import run_grpo
from training.model import training_model_dir
from training.validate import evaluate_adapter


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    agent: str
    params: dict[str, Any]
    dataset: str | None
    validation_dataset: str | None
    adapter_name: str
    output_dir: str
    data_dir: str
    serving: LLMSettings  # the model serving runs: the one trained, and what validates
    baseline_adapter_dir: str | None  # the active adapter the candidate must beat
    episodes: list[dict[str, Any]] = field(default_factory=list)


def locomo_rows(agent: str, path: str, retriever: Retriever) -> list[Row]:
    if agent == "answer":
        return answer_rows_from_locomo(path, retriever)
    return manager_rows_from_locomo(path, retriever)


def _train_rows(spec: JobSpec, retriever: Retriever) -> list[Row]:
    if spec.dataset:
        return locomo_rows(spec.agent, spec.dataset, retriever)
    rows = rows_from_episodes(spec.episodes, spec.agent)
    if not rows:
        raise ValueError(
            f"no {spec.agent} episodes with usable feedback yet: send POST /feedback with gold "
            "answers (or ratings) first, or train from a dataset"
        )
    return rows


def _validate(
    spec: JobSpec, adapter_dir: Path, model_dir: Path, retriever: Retriever, events: Any
) -> dict[str, Any]:
    if not spec.validation_dataset:
        return {}
    rows = locomo_rows(spec.agent, spec.validation_dataset, retriever)
    events.put(("log", f"validating on {len(rows)} rows"))
    baseline = Path(spec.baseline_adapter_dir) if spec.baseline_adapter_dir else None
    results: dict[str, Any] = {}
    for label, adapter in (("candidate", adapter_dir), ("baseline", baseline)):
        results[label] = evaluate_adapter(
            spec.agent,
            adapter,
            rows,
            base_model_dir=model_dir,
            llm=spec.serving,
            retriever=retriever,
        )
        events.put(("log", f"{label}: f1={results[label]['f1']:.4f}"))
    results["baseline_adapter"] = spec.baseline_adapter_dir
    return results


def run_job(spec: JobSpec, events: Any) -> None:
    """The spawned process's entry point. Never raises past the queue: errors become events
    and a non-zero exit code. It ends when the worker that spawned it is gone."""
    exit_with_parent()
    try:
        model_dir = training_model_dir(spec.serving, Path(spec.data_dir))
        config = GRPOJobConfig.from_params(
            spec.params,
            agent=spec.agent,
            output_dir=Path(spec.output_dir),
            base_model_dir=model_dir,
        )
        retriever = Retriever(load_encoder())
        rows = _train_rows(spec, retriever)
        events.put(("log", f"{len(rows)} training rows for the {spec.agent} agent"))
        trained = run_grpo(
            config,
            rows,
            progress=lambda m: events.put(("metrics", m)),
            retriever=retriever,
            serving=spec.serving,
        )
        events.put(("metrics", trained.metrics))
        validation = _validate(spec, trained.adapter_dir, model_dir, retriever, events)
        events.put(
            (
                "result",
                {
                    "adapter_dir": str(trained.adapter_dir),
                    "base_model": served_model_name(spec.serving),
                    "rank": config.lora_r,
                    "validation": validation,
                },
            )
        )
    except Exception as exc:
        events.put(("error", f"{type(exc).__name__}: {exc}"))
        events.put(("log", traceback.format_exc()))
        raise SystemExit(1) from exc
