"""Validation of an adapter (or of the base model) on held-out rows, to gate adapters.

Generation goes through the serving backend itself, so the figures are what a user of the
service would get with that adapter active: the in-process engine (llama.cpp, greedy decoding
constrained by the agent's JSON schema, the adapter converted and loaded the way serving loads
it) or, with the openai backend, the model server (vLLM), which loads the adapter by its path
for the run and unloads it after.

Answer rows: the Answer Agent answers each row's prompt; F1 / BLEU-1 / EM against the gold
answer. Manager rows: the Manager (with the adapter) decides on the row's fact, its operations
are applied to the row's bank, and the frozen base Answer Agent answers the row's question
from the memories retrieved from that bank; the metrics score that answer (the paper's outcome).
Rows that say which operations they call for (``expected_ops``, as generated rows do) are also
counted as decided right or not.

Extractor rows (``evaluate_extractor``): the extractor, guard included, reads each turn; its kept
facts are compared with the turn's LoCoMo observations by token F1.
"""

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from app.core.config import LLMBackendKind, LLMSettings, get_settings
from app.core.errors import UnusableOutput
from app.episodes.views import fact_from_json
from app.llm.backend import LLMBackend
from app.llm.bundled import serving_dir
from app.llm.factory import openai_backend
from app.llm.inprocess import InProcessBackend
from app.memory.answer import answer_question, parse_answer
from app.memory.extractor import extract_facts
from app.memory.manager import apply_to_bank, malformed_reason, validate_operations
from app.memory.prompts import ANSWER_MAX_TOKENS, MANAGER_MAX_TOKENS
from app.memory.schemas import MemoryView
from training.datasets import Retriever, load_encoder, memory_from_dict, serving_schema
from training.eval.metrics import AnswerScores, score_answer, token_f1

MAX_LORA_RANK = 256

Row = dict[str, Any]
Progress = Callable[[int, int], None]


def open_backend(llm: LLMSettings, base_model_dir: Path, max_batch_size: int = 8) -> LLMBackend:
    """The serving backend ``llm`` configures, for the model trained from ``base_model_dir``:
    the model server itself (openai backend), or an in-process engine on that model."""
    if llm.backend is LLMBackendKind.openai:
        return openai_backend(llm)
    return InProcessBackend(
        serving_dir(base_model_dir, llm.weights),
        base_model=str(base_model_dir),
        max_batch_size=max_batch_size,
        max_lora_rank=MAX_LORA_RANK,
        flash_attention=llm.flash_attention,
    )


class ServingAnswerer:
    """The Answer Agent as serving runs it, callable synchronously on a batch of requests.

    With ``adapter=None`` it is the frozen base model: the Manager's reward judges the bank
    with an answerer that does not move while the Manager trains. Every call runs on one event
    loop of its own, since a model server's HTTP connections belong to the loop that opened
    them; ``close`` closes the backend, then the loop."""

    def __init__(self, llm: LLMBackend, adapter: str | None = None) -> None:
        self.llm = llm
        self.adapter = adapter
        self._runner = asyncio.Runner()

    def __call__(self, requests: Sequence[tuple[str, list[MemoryView]]]) -> list[str | None]:
        return self._runner.run(self.answer_all(requests))

    async def answer_all(
        self, requests: Sequence[tuple[str, list[MemoryView]]]
    ) -> list[str | None]:
        results = await asyncio.gather(
            *(answer_question(self.llm, q, m, adapter=self.adapter) for q, m in requests)
        )
        return [result.answer for result in results]

    def close(self) -> None:
        self._runner.run(self.llm.close())
        self._runner.close()


def evaluate_adapter(
    agent: str,
    adapter_dir: Path | None,
    val_rows: Sequence[Row],
    *,
    base_model_dir: Path,
    llm: LLMSettings | None = None,
    retriever: Retriever | None = None,
    max_batch_size: int = 8,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """F1 / BLEU-1 / EM (means, and per LoCoMo category) of ``agent`` with the adapter at
    ``adapter_dir`` (None: the base model) on ``val_rows``, plus the share of unusable outputs,
    served as ``llm`` (default: this process's settings) configures serving.

    Manager rows need a ``retriever`` (the bundled MiniLM is loaded when none is given)."""
    if agent not in ("answer", "manager"):
        raise ValueError(f"agent must be 'answer' or 'manager', got {agent!r}")
    if not val_rows:
        raise ValueError("no validation rows")
    if agent == "manager" and retriever is None:
        retriever = Retriever(load_encoder())
    backend = open_backend(llm or get_settings().llm, base_model_dir, max_batch_size)
    return asyncio.run(_evaluate(agent, adapter_dir, val_rows, backend, retriever, progress))


async def _evaluate(
    agent: str,
    adapter_dir: Path | None,
    rows: Sequence[Row],
    llm: LLMBackend,
    retriever: Retriever | None,
    progress: Progress | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    async with _serving(llm, adapter_dir) as adapter:
        done = 0

        async def one(row: Row) -> tuple[str | None, dict[str, Any]]:
            nonlocal done
            if agent == "answer":
                result = await _answer_row(llm, adapter, row)
            else:
                assert retriever is not None
                result = await _manager_row(llm, adapter, row, retriever)
            done += 1
            if progress is not None:
                progress(done, len(rows))
            return result

        outputs = await asyncio.gather(*(one(row) for row in rows))
    report = summarise([answer for answer, _ in outputs], rows)
    if agent == "manager":
        report["operations"] = dict(sum((Counter(info["ops"]) for _, info in outputs), Counter()))
        report.update(decisions_right(rows, [info["ops"] for _, info in outputs]))
    report.update(
        agent=agent,
        adapter=str(adapter_dir) if adapter_dir is not None else None,
        seconds=round(time.perf_counter() - started, 1),
    )
    return report


def decisions_right(rows: Sequence[Row], decided: Sequence[list[str]]) -> dict[str, Any]:
    """Generated rows know the decision they call for (``expected_ops``): the share of them
    decided so (``decisions_right``) and, where rows name their kind of decision
    (``decision``), the share by kind. Nothing for rows that know neither."""
    right: defaultdict[str, list[bool]] = defaultdict(list)
    for row, ops in zip(rows, decided, strict=True):
        if "expected_ops" in row:
            ok = sorted(row["expected_ops"]) == sorted(ops)
            right["all"].append(ok)
            if "decision" in row:
                right[row["decision"]].append(ok)
    shares = {kind: sum(oks) / len(oks) for kind, oks in sorted(right.items())}
    if not shares:
        return {}
    report: dict[str, Any] = {"decisions_right": shares.pop("all")}
    if shares:
        report["decisions_right_by_kind"] = shares
    return report


@asynccontextmanager
async def _serving(llm: LLMBackend, adapter_dir: Path | None) -> AsyncIterator[str | None]:
    """The name the adapter at ``adapter_dir`` is served under (None: the base model) while
    the block runs; unloaded after, and the backend closed. The name is its own on a shared
    model server, so neither concurrent jobs nor the adapters the API serves are replaced or
    unloaded by a validation run."""
    try:
        if adapter_dir is None:
            yield None
            return
        name = f"validate-{adapter_dir.name}"
        await llm.load_adapter(name, str(adapter_dir))
        try:
            yield name
        finally:
            await llm.unload_adapter(name)
    finally:
        await llm.close()


async def _answer_row(
    llm: LLMBackend, adapter: str | None, row: Row
) -> tuple[str | None, dict[str, Any]]:
    try:
        completion = await llm.complete(
            row["prompt"],
            json_schema=serving_schema("answer", row),
            adapter=adapter,
            temperature=0.0,
            max_tokens=ANSWER_MAX_TOKENS,
        )
    except UnusableOutput:
        return None, {}
    _, answer, _ = parse_answer(completion.parsed, [])
    return answer, {}


async def _manager_row(
    llm: LLMBackend, adapter: str | None, row: Row, retriever: Retriever
) -> tuple[str | None, dict[str, Any]]:
    candidates = [memory_from_dict(m) for m in row["candidates"]]
    bank = [memory_from_dict(m) for m in row["bank"]]
    try:
        completion = await llm.complete(
            row["prompt"],
            json_schema=serving_schema("manager", row),
            adapter=adapter,
            temperature=0.0,
            max_tokens=MANAGER_MAX_TOKENS,
        )
        parsed = completion.parsed
    except UnusableOutput:
        parsed = None
    ops = ["INVALID"]
    if malformed_reason(parsed) is None:
        fact = fact_from_json(row["fact"])
        operations, _ = validate_operations(parsed, candidates, fact=fact)
        bank = apply_to_bank(bank, operations, fact=fact)
        ops = [op.kind.value for op in operations] or ["NOOP"]
    memories = retriever.for_answer(row["question"], bank, row["speakers"])
    # The frozen Answer Agent: the base model, whatever adapter the Manager runs with.
    result = await answer_question(llm, row["question"], memories)
    return result.answer, {"ops": ops}


def evaluate_extractor(
    adapter_dir: Path | None,
    rows: Sequence[Row],
    *,
    base_model_dir: Path,
    llm: LLMSettings | None = None,
    max_batch_size: int = 8,
) -> dict[str, Any]:
    """How the extractor (with the adapter at ``adapter_dir``; None: the base model) does on
    extractor rows, served as ``llm`` configures serving: ``recall`` (mean over the rows'
    observations of the best token F1 of a kept fact), ``precision`` (mean over kept facts
    of the best F1 against the turn's observations; 0 for a fact of a turn without any),
    ``empty_right`` (share of turns without observations that kept no fact) and
    ``facts_per_turn``."""
    backend = open_backend(llm or get_settings().llm, base_model_dir, max_batch_size)
    return asyncio.run(_evaluate_extractor(adapter_dir, rows, backend))


async def _evaluate_extractor(
    adapter_dir: Path | None, rows: Sequence[Row], llm: LLMBackend
) -> dict[str, Any]:
    started = time.perf_counter()
    async with _serving(llm, adapter_dir) as adapter:
        extractions = await asyncio.gather(
            *(
                extract_facts(
                    llm,
                    speaker=row["speaker"],
                    text=row["turn"],
                    occurred_at=datetime.fromisoformat(row["occurred_at"]),
                    adapter=adapter,
                )
                for row in rows
            )
        )
    recall: list[float] = []
    precision: list[float] = []
    empty: list[bool] = []
    for row, extraction in zip(rows, extractions, strict=True):
        kept = [fact.text for fact in extraction.facts]
        gold: list[str] = row["facts"]
        recall += [max((token_f1(k, g) for k in kept), default=0.0) for g in gold]
        precision += [max((token_f1(k, g) for g in gold), default=0.0) for k in kept]
        if not gold:
            empty.append(not kept)
    return {
        "recall": sum(recall) / len(recall) if recall else 0.0,
        "precision": sum(precision) / len(precision) if precision else 0.0,
        "empty_right": sum(empty) / len(empty) if empty else 0.0,
        "facts_per_turn": len(precision) / len(rows),
        "unusable": sum(e.error is not None for e in extractions) / len(rows),
        "rows": len(rows),
        "adapter": str(adapter_dir) if adapter_dir is not None else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarise(answers: Sequence[str | None], rows: Sequence[Row]) -> dict[str, Any]:
    """Mean F1 / BLEU-1 / EM overall and per category; unusable answers score 0."""
    per_category: dict[int, list[AnswerScores]] = defaultdict(list)
    for answer, row in zip(answers, rows, strict=True):
        category = int(row["category"])
        scores = (
            score_answer(answer, row["gold"], category)
            if answer is not None
            else AnswerScores(0.0, 0.0, 0.0)
        )
        per_category[category].append(scores)
    everything = [s for scores in per_category.values() for s in scores]
    return {
        **_means(everything),
        "rows": len(rows),
        "unusable": sum(a is None for a in answers) / len(rows),
        "per_category": {c: _means(s) for c, s in sorted(per_category.items())},
    }


def _means(scores: Sequence[AnswerScores]) -> dict[str, float]:
    n = len(scores)
    return {
        "f1": sum(s.f1 for s in scores) / n,
        "bleu1": sum(s.bleu1 for s in scores) / n,
        "em": sum(s.em for s in scores) / n,
        "n": n,
    }
