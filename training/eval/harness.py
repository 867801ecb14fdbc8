"""Runs every configuration over the same conversations and questions, scores the answers and
writes the results directory:

- ``questions.jsonl``: one row per (configuration, conversation, question), appended as soon as
  the answer is scored, so an interrupted run loses at most the questions in flight;
- ``state.json``: the run id, the settings results were made with, and which conversations each
  memory bank has ingested, so a rerun neither redoes ingestion nor mixes settings;
- ``errors.jsonl``: questions and conversations that failed this time (retried by a rerun);
- ``summary.json``, ``results.md``, ``chart.png`` (see :mod:`training.eval.report`).

Each conversation gets a fresh user id per run (and per memory bank), so runs never see each
other's memories, and a conversation whose ingestion was interrupted starts over as a new user.
"""

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.memory.prompts import ANSWER_PROMPT_VERSION
from training.eval.judge import JudgeError, LLMJudge
from training.eval.loaders import CATEGORY_NAMES, DEFAULT_CATEGORIES, QA, Conversation
from training.eval.metrics import reference_answer, score_answer
from training.eval.report import aggregate, write_report
from training.eval.targets import Target, TargetError

QUESTIONS_FILE = "questions.jsonl"
ERRORS_FILE = "errors.jsonl"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class EvalOptions:
    out_dir: Path
    categories: frozenset[int] = DEFAULT_CATEGORIES
    limit_questions: int | None = None  # per conversation, sampled with ``seed``
    seed: int = 0
    concurrency: int = 1  # questions in flight per configuration
    progress: bool = True
    data_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.categories) - set(CATEGORY_NAMES))
        if unknown or not self.categories:
            raise ValueError(
                f"categories must be a non-empty subset of {sorted(CATEGORY_NAMES)} "
                f"(1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial); "
                f"got {sorted(self.categories)}"
            )
        if self.limit_questions is not None and self.limit_questions < 1:
            raise ValueError("limit_questions must be at least 1, or None for every question")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


def select_questions(
    conversation: Conversation,
    categories: frozenset[int],
    limit: int | None,
    seed: int,
) -> list[tuple[int, QA]]:
    """The questions to ask, as ``(position in qa, item)``: all of the chosen categories, or a
    sample of ``limit`` that depends only on the seed and the conversation."""
    items = conversation.questions(categories)
    if limit is None or limit >= len(items):
        return items
    rng = random.Random(f"{seed}:{conversation.sample_id}")
    return sorted(rng.sample(items, limit), key=lambda item: item[0])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


class ResultsFile:
    """The per-question JSONL: read once at start, then appended to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        # A run killed mid-write leaves a partial last line: drop it, so the next append
        # starts on a line of its own and the question is asked again.
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            self.path.write_bytes(complete)
        self.rows = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line]

    def keys(self) -> set[tuple[str, str, int]]:
        return {(r["config"], r["conversation"], int(r["qa_index"])) for r in self.rows}

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows.append(row)


class RunState:
    """``state.json``: settings of the run and ingestion progress per memory bank."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            self.data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        else:
            self.data = {
                "run_id": os.urandom(4).hex(),
                "created_at": _now(),
                "selection": None,
                "targets": {},
                "prepared": {},
            }

    @property
    def run_id(self) -> str:
        return str(self.data["run_id"])

    def check(self, targets: Sequence[Target], options: EvalOptions) -> None:
        """Refuse to add results made with other settings to the same directory."""
        selection = {"seed": options.seed, "limit_questions": options.limit_questions}
        recorded = self.data["selection"]
        if recorded is not None and recorded != selection:
            raise ValueError(
                f"{self.path.parent} holds results for {recorded}, not {selection}: "
                "use the same --seed/--limit-questions to resume, or a new --out"
            )
        for target in targets:
            before = self.data["targets"].get(target.name)
            if before is not None and before != target.describe():
                raise ValueError(
                    f"{self.path.parent} holds '{target.name}' results made with {before}, not "
                    f"{target.describe()}: use the same settings to resume, or a new --out"
                )
        self.data["selection"] = selection
        for target in targets:
            self.data["targets"][target.name] = target.describe()
        self.save()

    def entry(self, bank: str, sample_id: str) -> dict[str, Any] | None:
        entry: dict[str, Any] | None = self.data["prepared"].get(bank, {}).get(sample_id)
        return entry

    def record(self, bank: str, sample_id: str, entry: dict[str, Any]) -> None:
        self.data["prepared"].setdefault(bank, {})[sample_id] = entry
        self.save()

    def add_wall(self, seconds: float) -> float:
        """Count ``seconds`` more of running (one process's, interrupted or not); returns
        the run's total so far, over every resume."""
        self.data["wall_seconds"] = self.data.get("wall_seconds", 0.0) + seconds
        self.save()
        return float(self.data["wall_seconds"])

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def _bank(target: Target) -> str:
    return target.bank_key or f"local-{target.name}"


class _Run:
    def __init__(
        self,
        conversations: Sequence[Conversation],
        targets: Sequence[Target],
        options: EvalOptions,
        judge: LLMJudge | None,
    ) -> None:
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"configuration names must be unique: {names}")
        self.conversations = conversations
        self.targets = targets
        self.options = options
        self.judge = judge
        options.out_dir.mkdir(parents=True, exist_ok=True)
        self.state = RunState(options.out_dir / STATE_FILE)
        self.state.check(targets, options)
        if judge is not None:
            # Kept in the state so a later run without the judge still names the one whose
            # labels its results hold.
            self.state.data["judge"] = judge.describe()
            self.state.save()
        self.results = ResultsFile(options.out_dir / QUESTIONS_FILE)
        self.selection = {
            c.sample_id: select_questions(
                c, options.categories, options.limit_questions, options.seed
            )
            for c in conversations
        }

    def log_error(self, **fields: Any) -> None:
        with (self.options.out_dir / ERRORS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps({"at": _now(), **fields}, ensure_ascii=False) + "\n")

    async def run(self) -> None:
        done = self.results.keys()
        bar = tqdm(self.conversations, desc="conversations", disable=not self.options.progress)
        for conversation in bar:
            bar.set_postfix_str(conversation.sample_id)
            for target in self.targets:
                pending = [
                    (index, qa)
                    for index, qa in self.selection[conversation.sample_id]
                    if (target.name, conversation.sample_id, index) not in done
                ]
                if not pending:
                    continue
                user_id = await self.prepare(target, conversation)
                if user_id is not None:
                    await self.ask_all(target, conversation, user_id, pending)

    async def prepare(self, target: Target, conversation: Conversation) -> str | None:
        """The user id whose memory answers for ``conversation``: a bank ingested by an earlier
        run is reused; otherwise the conversation is ingested now as a new user."""
        bank, sample_id = _bank(target), conversation.sample_id
        entry = self.state.entry(bank, sample_id)
        if entry is not None and entry["done"] and target.bank_key is not None:
            return str(entry["user_id"])
        attempt = 1 if entry is None else int(entry["attempt"]) + 1
        user_id = f"eval-{self.state.run_id}-{_slug(bank)}-{_slug(sample_id)}-{attempt}"
        self.state.record(bank, sample_id, {"user_id": user_id, "attempt": attempt, "done": False})
        started = time.perf_counter()
        try:
            report = await target.prepare(conversation, user_id)
        except TargetError as exc:
            self.log_error(
                config=target.name, conversation=sample_id, stage="ingest", error=str(exc)
            )
            return None
        self.state.record(
            bank,
            sample_id,
            {
                "user_id": user_id,
                "attempt": attempt,
                "done": True,
                "seconds": time.perf_counter() - started,
                "operations": report.operations,
                "notes": report.notes,
                "finished_at": _now(),
            },
        )
        return user_id

    async def ask_all(
        self,
        target: Target,
        conversation: Conversation,
        user_id: str,
        pending: list[tuple[int, QA]],
    ) -> None:
        semaphore = asyncio.Semaphore(self.options.concurrency)
        bar = tqdm(
            total=len(pending),
            desc=f"{target.name} {conversation.sample_id}",
            leave=False,
            disable=not self.options.progress,
        )

        async def one(index: int, qa: QA) -> None:
            async with semaphore:
                try:
                    row = await self.ask(target, conversation, user_id, index, qa)
                except TargetError as exc:
                    self.log_error(
                        config=target.name,
                        conversation=conversation.sample_id,
                        qa_index=index,
                        stage="answer",
                        error=str(exc),
                    )
                else:
                    self.results.append(row)
                bar.update()

        tasks = [asyncio.create_task(one(index, qa)) for index, qa in pending]
        try:
            await asyncio.gather(*tasks)
        finally:
            # A refusal from the service stops the run; the questions still in flight are
            # cancelled rather than left to fail the same way.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()

    async def ask(
        self, target: Target, conversation: Conversation, user_id: str, index: int, qa: QA
    ) -> dict[str, Any]:
        started = time.perf_counter()
        reply = await target.answer(conversation, user_id, qa.question)
        latency_ms = (time.perf_counter() - started) * 1000
        scores = asdict(score_answer(reply.answer, qa.answer, qa.category))
        judged = await self.judge_answer(qa, reply.answer)
        return {
            "config": target.name,
            "conversation": conversation.sample_id,
            "qa_index": index,
            "question": qa.question,
            "gold": qa.answer,
            "category": qa.category,
            "category_name": CATEGORY_NAMES[qa.category],
            "evidence": qa.evidence,
            "prediction": reply.answer,
            "selected": [asdict(m) for m in reply.selected],
            "scores": {**scores, "judge": judged["judge"]},
            "judge_reason": judged["reason"],
            "judge_error": judged["error"],
            "latency_ms": round(latency_ms, 1),
            "model": reply.model,
            "adapter": reply.adapter,
            "episode_id": reply.episode_id,
            "user_id": user_id,
            "error": reply.error,
            "note": reply.note,
        }

    async def judge_answer(self, qa: QA, prediction: str) -> dict[str, Any]:
        """J for one answer: None without a judge or when the judge failed (recorded)."""
        if self.judge is None:
            return {"judge": None, "reason": None, "error": None}
        if not prediction.strip():
            return {"judge": 0.0, "reason": "empty answer", "error": None}
        gold = reference_answer(qa.answer, qa.category)
        try:
            verdict = await self.judge.judge(qa.question, gold, prediction)
        except JudgeError as exc:
            return {"judge": None, "reason": None, "error": str(exc)}
        return {"judge": 1.0 if verdict.correct else 0.0, "reason": verdict.reason, "error": None}

    def summary(self, wall_seconds: float) -> dict[str, Any]:
        selected = {
            (c.sample_id, index)
            for c in self.conversations
            for index, _ in self.selection[c.sample_id]
        }
        configs = {target.name: self.config_summary(target, selected) for target in self.targets}
        notes = []
        banks = [t.bank_key for t in self.targets if t.bank_key is not None]
        if len(set(banks)) < len(banks):
            notes.append(
                "Configurations with the same manager adapter answer from one memory bank per "
                "conversation (ingested once); its ingestion time is listed under each of them."
            )
        return {
            "run_id": self.state.run_id,
            "created_at": self.state.data["created_at"],
            "updated_at": _now(),
            "data": list(self.options.data_files),
            "conversations": [c.sample_id for c in self.conversations],
            "categories": sorted(self.options.categories),
            "limit_questions": self.options.limit_questions,
            "seed": self.options.seed,
            "answer_prompt_version": ANSWER_PROMPT_VERSION,
            "judge": self.state.data.get("judge"),
            "run_wall_seconds": round(wall_seconds, 1),
            "configs": configs,
            "notes": notes,
        }

    def config_summary(self, target: Target, selected: set[tuple[str, int]]) -> dict[str, Any]:
        rows = [
            r
            for r in self.results.rows
            if r["config"] == target.name and (r["conversation"], int(r["qa_index"])) in selected
        ]
        bank = _bank(target)
        ingest = 0.0
        notes = []
        for conversation in self.conversations:
            entry = self.state.entry(bank, conversation.sample_id)
            if entry is not None and entry["done"]:
                ingest += float(entry["seconds"])
                notes += [f"{conversation.sample_id}: {note}" for note in entry["notes"]]
        answer = sum(float(r["latency_ms"]) for r in rows) / 1000
        if len(rows) < len(selected):
            notes.append(
                f"{len(selected) - len(rows)} of {len(selected)} questions have no answer yet "
                f"(see {ERRORS_FILE}); running again retries them"
            )
        unusable = sum(1 for r in rows if r["error"])
        if unusable:
            notes.append(f"{unusable} answers were unusable model output, scored as empty")
        noted = [r["note"] for r in rows if r["note"]]
        if noted:
            notes.append(f"{len(noted)} of {len(rows)} answers carry a note, e.g.: {noted[0]}")
        return {
            "target": target.describe(),
            "models": sorted({r["model"] for r in rows if r["model"]}),
            "adapters": sorted({r["adapter"] for r in rows if r["adapter"]}),
            "questions": len(selected),
            "answered": len(rows),
            "ingest_seconds": round(ingest, 1),
            "answer_seconds": round(answer, 1),
            "wall_seconds": round(ingest + answer, 1),
            "scores": aggregate(rows),
            "notes": notes,
        }


async def run_eval(
    conversations: Sequence[Conversation],
    targets: Sequence[Target],
    options: EvalOptions,
    *,
    judge: LLMJudge | None = None,
) -> Path:
    """Evaluate ``targets`` on ``conversations``; returns the results directory.

    Rerunning with the same ``options.out_dir`` resumes: answered questions are not asked
    again and ingested conversations are not ingested again."""
    started = time.perf_counter()
    run = _Run(conversations, targets, options, judge)
    try:
        await run.run()
    finally:
        wall = run.state.add_wall(time.perf_counter() - started)
    summary = run.summary(wall)
    write_report(options.out_dir, summary)
    return options.out_dir
