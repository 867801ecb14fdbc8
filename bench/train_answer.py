"""GRPO for the Answer Agent on the paper's split, with the bundled SmolLM2-135M on this CPU.

Trains a LoRA adapter on conv-26's 152 questions (category 5 excluded; the 42 whose answer is
a list of short items twice, ``--list-repeat``) for a wall-clock budget, then scores the base
model and the adapter on conv-30's 81 validation questions through the serving backend (greedy,
schema-constrained): F1, BLEU-1, EM and wall time. Writes
``bench/out/train_answer.json`` and ``bench/out/train_answer.png`` (before/after bars and the
reward curve).

    python -m bench.train_answer                      # ~1 h of training plus two evaluations
    python -m bench.train_answer --minutes 5 --val-limit 8 --train-limit 16   # a smoke run

Target: the adapter's validation F1 beats the base model's by >= 30% relative.

The memories shown are LoCoMo's observations by default. With ``--train-run`` and ``--val-run``
they are the ones the service itself showed its Answer Agent in a ``memory-r1 eval`` run of
conv-26 and of conv-30 (read from the runs' episodes): the banks the pipeline's extractor and
Manager wrote, retrieved as ``/ask`` retrieves. ``--start-from`` goes on training an adapter
(the shipped one) instead of a fresh one:

    memory-r1 eval --data .../locomo_train_conv26.json --configs trained-both \
        --answer-adapter active --manager-adapter active --top-k 10 --out RUN26
    memory-r1 eval --data .../locomo_val_conv30.json (the same) --out RUN30
    python -m bench.train_answer --train-run RUN26 --val-run RUN30 \
        --start-from app/adapters/defaults/answer --max-steps 20 --minutes 100000

With ``--ship`` an adapter that meets the target replaces the one shipped for its agent in
``app/adapters/defaults/<agent>/`` (weights, config and ``card.json``); ``memory-r1 serve``
registers it as the global default on its next start. The shipped answer adapter's card has
the command that makes it again:

    python -m bench.train_answer --max-steps 51 --minutes 100000 --ship
"""

import argparse
import asyncio
import json
import re
import shutil
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from sqlalchemy import select

from app.adapters.service import DEFAULTS_DIR
from app.cli import database
from app.core.config import get_settings
from app.core.db import create_engine, session_factory, transaction
from app.llm.bundled import ensure_bundled_model
from app.models import Episode
from bench.common import OUT_DIR, Target, print_targets, write_json
from training.config import GRPOJobConfig
from training.datasets import (
    Retriever,
    answer_rows_from_eval,
    answer_rows_from_locomo,
    load_encoder,
)
from training.eval.harness import QUESTIONS_FILE
from training.grpo import TrainResult, run_grpo
from training.sft import run_sft
from training.validate import evaluate_adapter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo"
TRAIN_FILE = DATA / "locomo_train_conv26.json"
VAL_FILE = DATA / "locomo_val_conv30.json"
TARGET_GAIN = 0.30

Row = dict[str, Any]


def arguments(description: str, **defaults: Any) -> argparse.ArgumentParser:
    """The options both training benchmarks share, with per-agent defaults."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--minutes", type=float, default=defaults.get("minutes", 60.0))
    p.add_argument("--max-steps", type=int, default=defaults.get("max_steps", 200))
    p.add_argument("--reward", choices=["em", "f1"], default="f1")
    # A small format term: larger ones let a constant well-formed reply outscore real answers.
    p.add_argument("--format-weight", type=float, default=defaults.get("format_weight", 0.1))
    p.add_argument("--lr", type=float, default=defaults.get("lr", 2e-4))
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--prompts-per-step", type=int, default=2)
    # Room for a full answer: clipping real answers rewards the shortest constant reply.
    p.add_argument("--max-completion-length", type=int, default=defaults.get("completion", 48))
    # The KL term keeps the policy near the base model instead of collapsing to one reply.
    p.add_argument("--beta", type=float, default=0.04)
    # Samples near greedy are mostly valid JSON that differ in content: that is the signal.
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None, help="use only N training rows")
    p.add_argument("--val-limit", type=int, default=None, help="score only N validation rows")
    p.add_argument("--data-dir", type=Path, default=None, help="where the bundled model lives")
    p.add_argument("--out", type=Path, default=OUT_DIR)
    # Alone on 2 cores, two threads take an answer step in 60 s where one takes 110 s; beside
    # another heavy job one thread is 2-3x faster than two (a descheduled thread stalls every
    # parallel op of the other).
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads (default: one per core; 1 beside another heavy job)",
    )
    p.add_argument(
        "--ship",
        action="store_true",
        help=f"an adapter that meets the target becomes the shipped default ({DEFAULTS_DIR})",
    )
    return p


def job_config(args: argparse.Namespace, agent: str, output_dir: Path) -> GRPOJobConfig:
    base = ensure_bundled_model(args.data_dir or get_settings().data_dir)
    return GRPOJobConfig(
        agent=agent,
        output_dir=output_dir,
        base_model_dir=base,
        reward=args.reward,
        format_weight=args.format_weight,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        learning_rate=args.lr,
        max_steps=args.max_steps,
        num_generations=args.num_generations,
        # One micro-batch per prompt group keeps activation memory at one group's worth.
        per_device_train_batch_size=args.num_generations,
        gradient_accumulation_steps=args.prompts_per_step,
        max_completion_length=args.max_completion_length,
        beta=args.beta,
        temperature=args.temperature,
        seed=args.seed,
        max_train_rows=args.train_limit,
    )


def sft_job_config(args: argparse.Namespace, agent: str, name: str) -> GRPOJobConfig:
    """A supervised benchmark's job config: ``--batch`` rows in one micro-batch per optimizer
    step. SFT has no sample groups; ``num_generations`` is set to the batch only so the GRPO
    config's group check holds."""
    return replace(
        job_config(args, agent, args.out / "adapters" / name),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        num_generations=args.batch,
    )


def _print_progress(report: dict[str, Any]) -> None:
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items()]
    print("step", " ".join(parts), flush=True)


def run_bench(
    name: str,
    config: GRPOJobConfig,
    train_rows: list[Row],
    val_rows: list[Row],
    *,
    minutes: float,
    retriever: Retriever | None = None,
    settings: dict[str, Any],
    out_dir: Path,
    start_from: Path | None = None,
) -> dict[str, Any]:
    """Evaluate the base model, train for at most ``minutes``, evaluate the adapter; print,
    write ``<name>.json`` and ``<name>.png``; return the result."""

    def evaluate(adapter: Path | None) -> dict[str, Any]:
        return evaluate_adapter(
            config.agent,
            adapter,
            val_rows,
            base_model_dir=config.base_model_dir,
            retriever=retriever,
        )

    print(f"[{name}] evaluating the base model on {len(val_rows)} validation rows", flush=True)
    before = evaluate(None)
    print(f"[{name}] base: {_scores(before)} in {before['seconds']} s", flush=True)

    result = train_grpo(
        name, config, train_rows, minutes, retriever=retriever, start_from=start_from
    )

    after = evaluate(result.adapter_dir)
    print(f"[{name}] adapter: {_scores(after)} in {after['seconds']} s", flush=True)

    # A zero baseline has no relative gain: it is reported as such and fails the target.
    gain = (after["f1"] - before["f1"]) / before["f1"] if before["f1"] > 0 else None
    if gain is None:
        print(f"[{name}] the base model scores F1 0: no relative gain to measure", flush=True)
    measured = round(gain, 4) if gain is not None else float("nan")
    targets = [Target("relative F1 gain", measured, TARGET_GAIN, "x", True)]
    print_targets(targets)
    payload = {
        "settings": settings,
        "config": {k: str(v) for k, v in vars(config).items()},
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "before": before,
        "after": after,
        "relative_f1_gain": gain,
        "train": {"metrics": result.metrics, "stopped_by_budget": result.stopped},
        "history": result.history,
        "wall_seconds": {
            "eval_before": before["seconds"],
            "train": result.metrics["train_seconds"],
            "eval_after": after["seconds"],
        },
        "targets": [t.as_dict() for t in targets],
    }
    json_path = write_json(name, payload, out_dir)
    png_path = plot(name, before, after, result.history, out_dir)
    print(f"[{name}] wrote {json_path} and {png_path}", flush=True)
    if settings.get("ship"):
        if all(t.passed for t in targets):
            shipped = ship(name, payload, config, result.adapter_dir)
            print(f"[{name}] shipped as the default {config.agent} adapter in {shipped}")
        else:
            print(f"[{name}] not shipped: the target failed", flush=True)
    return payload


# What the bundled model is called on Hugging Face; serving compares by basename.
BUNDLED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_CARD_SETTINGS = (
    "reward", "format_weight", "lora_r", "lora_alpha", "target_modules", "learning_rate",
    "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_completion_length", "beta", "temperature", "seed",
)  # fmt: skip
# What a supervised run's card lists (training/sft.py uses no GRPO setting).
SFT_CARD_SETTINGS = (
    "lora_r", "lora_alpha", "target_modules", "learning_rate", "per_device_train_batch_size",
    "seed",
)  # fmt: skip


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def ship(
    name: str,
    payload: dict[str, Any],
    config: GRPOJobConfig,
    adapter_dir: Path,
    card_fields: dict[str, Any] | None = None,
    settings: tuple[str, ...] = _CARD_SETTINGS,
) -> Path:
    """Copy a trained adapter into the shipped defaults with its card: data, steps,
    settings, metrics and the command that makes it again. ``card_fields`` replace the GRPO
    benchmarks' entries and must then hold the metrics; ``settings`` names the config fields
    listed."""
    target = DEFAULTS_DIR / config.agent
    steps = payload["train"]["metrics"]["steps"]
    settings_used = payload["settings"]
    # Inputs made before this run are named in the command and described in "inputs".
    inputs = {
        option: (placeholder, text)
        for option, placeholder, text in (
            (
                "train_run",
                "RUN26",
                f"memory-r1 eval --data {TRAIN_FILE.name} --configs "
                f"{settings_used.get('run_config')} --answer-adapter active "
                "--manager-adapter active --top-k 10 --out RUN26",
            ),
            ("val_run", "RUN30", f"the same on {VAL_FILE.name} --out RUN30"),
            ("start_from", "PREVIOUS", "the adapter this one went on training (card: previous)"),
        )
        if settings_used.get(option)
    }
    flags = [f"--{option.replace('_', '-')} {p}" for option, (p, _) in inputs.items()]
    runs = [p for option, (p, _) in inputs.items() if option in ("train_run", "val_run")]
    previous_card = (
        Path(settings_used["start_from"]) / "card.json" if "start_from" in inputs else None
    )
    previous = (
        json.loads(previous_card.read_text())
        if previous_card is not None and previous_card.is_file()
        else None
    )
    card = {
        "agent": config.agent,
        "base_model": BUNDLED_MODEL_ID,
        "method": "GRPO + LoRA (training/grpo.py) on this project's CPU path",
        # The learning rate is constant, so a run stopped by its time budget at step N is
        # the run with --max-steps N.
        "command": " ".join(
            [f"python -m bench.{name} --max-steps {steps} --minutes 100000", *flags, "--ship"]
        ),
        **({"inputs": {p: text for p, text in inputs.values()}} if inputs else {}),
        "produced_by": payload["settings"].get("argv"),
        "data": {
            "train": TRAIN_FILE.name,
            "train_rows": payload["train_rows"],
            "validation": VAL_FILE.name,
            "validation_rows": payload["val_rows"],
            # Rows from eval runs show the memories the pipeline wrote, not the observations.
            **({"memories": f"shown by the service in {' and '.join(runs)}"} if runs else {}),
            # train_rows counts each copy of a repeated list row.
            **({"list_repeat": n} if (n := payload["settings"].get("list_repeat")) else {}),
        },
        # What "metrics" measure: the agent's own task on the validation conversation (for
        # the answer agent, questions over LoCoMo's gold observations), not the full pipeline.
        "validation": f"bench.{name}: {config.agent} agent alone, conv-30's questions"
        + (" over the memories the service showed" if settings_used.get("val_run") else ""),
        "steps": steps,
        "train_seconds": payload["train"]["metrics"]["train_seconds"],
        "settings": {key: _plain(getattr(config, key)) for key in settings},
        "trained_at": datetime.now(UTC).date().isoformat(),
        **({"previous": previous} if previous is not None else {}),
    }
    if card_fields is None:
        answer_metrics = ("f1", "bleu1", "em", "unusable", "rows")
        card["metrics"] = {k: payload["after"][k] for k in answer_metrics}
        card["base_metrics"] = {k: payload["before"][k] for k in answer_metrics}
    card.update(card_fields or {})
    # The card is made first: the adapter it went on training may be the one replaced here.
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = BUNDLED_MODEL_ID
    (target / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    shutil.copy(adapter_dir / "adapter_model.safetensors", target)
    (target / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return target


def _scores(report: dict[str, Any]) -> str:
    return (
        f"F1 {report['f1']:.4f}  BLEU-1 {report['bleu1']:.4f}  EM {report['em']:.4f}  "
        f"unusable {report['unusable']:.2%}"
    )


def plot(
    name: str,
    before: dict[str, Any],
    after: dict[str, Any],
    history: list[dict[str, Any]],
    out_dir: Path,
) -> Path:
    # The object API needs no GUI backend, so this runs headless.
    fig = Figure(figsize=(11, 4))
    bars, curve = fig.subplots(1, 2)
    metrics = ["f1", "bleu1", "em"]
    xs = range(len(metrics))
    width = 0.38
    bars.bar([x - width / 2 for x in xs], [before[m] for m in metrics], width, label="base")
    bars.bar([x + width / 2 for x in xs], [after[m] for m in metrics], width, label="GRPO adapter")
    bars.set_xticks(list(xs), ["F1", "BLEU-1", "EM"])
    bars.set_title(f"validation ({before['rows']} questions)")
    bars.legend()
    steps = [h["step"] for h in history]
    rewards = [h["reward_mean"] for h in history]
    curve.plot(steps, rewards, ".-", label="reward", alpha=0.5)
    if history and "outcome" in history[0]:
        outcomes = [h["outcome"] for h in history]
        curve.plot(steps, outcomes, ".-", label="outcome (F1/EM)", alpha=0.5)
    curve.plot(steps, _smooth(rewards), label="reward (avg of 5)")
    curve.set_xlabel("optimizer step")
    curve.set_title("training reward")
    curve.legend()
    fig.suptitle(f"{name}: GRPO + LoRA on SmolLM2-135M (CPU)")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=110)
    return path


def train_grpo(
    name: str,
    config: GRPOJobConfig,
    rows: list[Row],
    minutes: float,
    *,
    retriever: Retriever | None = None,
    start_from: Path | None = None,
) -> TrainResult:
    """GRPO for at most ``minutes`` (from the adapter at ``start_from`` if given), each step
    printed as it ends."""
    deadline = time.monotonic() + minutes * 60
    print(f"[{name}] GRPO on {len(rows)} rows for <= {minutes:g} min", flush=True)
    result = run_grpo(
        config,
        rows,
        progress=_print_progress,
        should_stop=lambda: time.monotonic() > deadline,
        retriever=retriever,
        start_from=start_from,
    )
    print(f"[{name}] trained: {result.metrics}", flush=True)
    return result


def train_sft(name: str, config: GRPOJobConfig, rows: list[Row], minutes: float) -> TrainResult:
    """SFT for at most ``minutes``, each step printed as it ends."""
    deadline = time.monotonic() + minutes * 60
    print(f"[{name}] SFT on {len(rows)} rows, {config.max_steps} steps", flush=True)
    result = run_sft(
        config,
        rows,
        progress=_print_progress,
        should_stop=lambda: time.monotonic() > deadline,
    )
    print(f"[{name}] trained: {result.metrics}", flush=True)
    return result


def sft_payload(
    args: argparse.Namespace,
    train_rows: list[Row],
    val_rows: list[Row],
    before: dict[str, Any],
    after: dict[str, Any],
    result: TrainResult,
    targets: list[Target],
    **counts: int,
) -> dict[str, Any]:
    """What a supervised benchmark writes (and ``ship`` reads): its settings, its row counts
    (``counts`` adds more), both evaluations, the run and the targets."""
    return {
        "settings": bench_settings(args),
        "train_rows": len(train_rows),
        **counts,
        "val_rows": len(val_rows),
        "before": before,
        "after": after,
        "train": {"metrics": result.metrics, "stopped_by_budget": result.stopped},
        "history": result.history,
        "targets": [t.as_dict() for t in targets],
    }


def plot_sft(
    name: str,
    labels: list[str],
    sides: dict[str, list[float]],
    history: list[dict[str, Any]],
    title: str,
    out_dir: Path,
    *,
    curves: tuple[str, ...] = ("loss",),
    method: str = "SFT + LoRA",
) -> Path:
    """Base and adapter side by side on ``labels`` (``sides``: label -> values), and the
    training curves (``curves``: history keys; the loss of a supervised run)."""
    fig = Figure(figsize=(11, 4))
    bars, curve = fig.subplots(1, 2)
    xs = range(len(labels))
    width = 0.8 / len(sides)
    for i, (side, values) in enumerate(sides.items()):
        offset = (i - (len(sides) - 1) / 2) * width
        bars.bar([x + offset for x in xs], values, width, label=side)
    bars.set_xticks(list(xs), labels)
    bars.set_title(title)
    bars.legend()
    for key in curves:
        curve.plot([h["step"] for h in history], [h.get(key) for h in history], ".-", label=key)
    curve.set_xlabel("optimizer step")
    if curves == ("loss",):
        curve.set_title("training loss (completion tokens)")
    else:
        curve.set_title("training")
        curve.legend()
    fig.suptitle(f"{name}: {method} on SmolLM2-135M (CPU)")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=110)
    return path


def _smooth(values: list[float], window: int = 5) -> list[float]:
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]


# Between the items of a list answer: "Oliver, Luna, Bailey", "clarinet and violin".
_LIST_SEPARATOR = re.compile(r",|;|\band\b", re.IGNORECASE)
_LIST_ITEM_WORDS = 4  # longer parts are clauses ("Yes, since she collects classic books")


def is_list_answer(gold: str) -> bool:
    """Whether a gold answer names several short items."""
    items = [part.split() for part in _LIST_SEPARATOR.split(gold) if part.strip()]
    return len(items) > 1 and all(len(item) <= _LIST_ITEM_WORDS for item in items)


def repeat_lists(rows: list[Row], times: int) -> list[Row]:
    """``rows`` with each row whose gold answer is a list there ``times`` times (temporal rows
    aside: "19 January, 2023" is a date). The F1 reward credits every item a list answer names,
    but lists are a quarter of the rows: without more of them the agent learns to name one item
    ("What are the names of Ann's dogs?" -> "Scout")."""

    def copies(row: Row) -> int:
        return times if row["category"] != 2 and is_list_answer(row["gold"]) else 1

    return [r for row in rows for r in [row] * copies(row)]


def service_rows(config: str, *run_dirs: Path) -> list[list[Row]]:
    """Answer rows from ``memory-r1 eval`` runs of the in-process service, one list per run:
    ``config``'s questions with the memories the service showed for each (read from the
    episodes in the service's database, the one ``memory-r1`` uses with these settings; it is
    started once for all the runs)."""
    questions: list[list[dict[str, Any]]] = []
    ids: list[uuid.UUID] = []
    for run_dir in run_dirs:
        path = run_dir / QUESTIONS_FILE
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: pass the --out directory of a memory-r1 eval")
        lines = path.read_text().splitlines()
        asked = [q for q in map(json.loads, filter(None, lines)) if q["config"] == config]
        answered = [uuid.UUID(q["episode_id"]) for q in asked if q.get("episode_id")]
        if not answered:
            raise SystemExit(f"{path}: no {config!r} answers with an episode")
        questions.append(asked)
        ids += answered
    with database(get_settings()) as settings:  # its database_url is set
        shown = asyncio.run(_shown_memories(str(settings.database_url), ids))
    rows = [answer_rows_from_eval(asked, shown) for asked in questions]
    for run_dir, run_rows in zip(run_dirs, rows, strict=True):
        print(f"{len(run_rows)} rows from {config!r} in {run_dir}", flush=True)
    return rows


async def _shown_memories(database_url: str, ids: list[uuid.UUID]) -> dict[str, list[Any]]:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with transaction(session_factory(engine)) as db:
            found = await db.execute(select(Episode.id, Episode.input).where(Episode.id.in_(ids)))
            return {str(id_): data["memories"] for id_, data in found}
    finally:
        await engine.dispose()


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--per-speaker", type=int, default=3, help="memories per speaker shown")
    parser.add_argument(
        "--list-repeat", type=int, default=2, help="training rows with a list answer, N times"
    )
    parser.add_argument(
        "--train-run",
        type=Path,
        help="train on the memories the service showed in this `memory-r1 eval` run on conv-26 "
        "(its --out directory) instead of on LoCoMo's observations",
    )
    parser.add_argument(
        "--val-run", type=Path, help="validate the same way on a `memory-r1 eval` run on conv-30"
    )
    parser.add_argument(
        "--run-config", default="trained-both", help="the runs' configuration to read"
    )
    parser.add_argument(
        "--start-from",
        type=Path,
        help="go on training this adapter directory (e.g. app/adapters/defaults/answer)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retriever = Retriever(load_encoder())
    runs = [run for run in (args.train_run, args.val_run) if run]
    from_runs = dict(zip(runs, service_rows(args.run_config, *runs), strict=True)) if runs else {}
    train_rows = (
        from_runs[args.train_run]
        if args.train_run
        else answer_rows_from_locomo(TRAIN_FILE, retriever, per_speaker=args.per_speaker)
    )
    train_rows = repeat_lists(train_rows, args.list_repeat)
    val_rows = (
        from_runs[args.val_run]
        if args.val_run
        else answer_rows_from_locomo(VAL_FILE, retriever, per_speaker=args.per_speaker)
    )
    val_rows = val_rows[: args.val_limit] if args.val_limit else val_rows
    config = job_config(args, "answer", args.out / "adapters" / "answer")
    payload = run_bench(
        "train_answer",
        config,
        train_rows,
        val_rows,
        minutes=args.minutes,
        settings=bench_settings(args),
        out_dir=args.out,
        start_from=args.start_from,
    )
    return 0 if all(t["passed"] for t in payload["targets"]) else 1


def bench_settings(args: argparse.Namespace) -> dict[str, Any]:
    return vars(args) | {
        "out": str(args.out),
        "data_dir": str(args.data_dir),
        "argv": " ".join(["python -m bench." + Path(sys.argv[0]).stem, *sys.argv[1:]]),
    }


if __name__ == "__main__":
    raise SystemExit(main())
