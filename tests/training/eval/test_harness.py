"""The harness with a tiny deterministic target: every output file, resuming, failures."""

import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHARED_DATA
from training.eval import harness
from training.eval.harness import (
    ERRORS_FILE,
    QUESTIONS_FILE,
    STATE_FILE,
    EvalOptions,
    run_eval,
    select_questions,
)
from training.eval.judge import LLMJudge
from training.eval.loaders import ADVERSARIAL_GOLD, DEFAULT_CATEGORIES, Conversation, load_locomo
from training.eval.targets import PrepareReport, ShownMemory, TargetAnswer, TargetError

CONV30 = SHARED_DATA / "locomo" / "locomo_val_conv30.json"


class Stop(Exception):
    """Stands in for an interruption (Ctrl-C, a crash) in the middle of a run."""


class ScriptedTarget:
    """Answers single-hop questions with the gold answer and everything else wrongly."""

    def __init__(
        self,
        name: str = "scripted",
        bank_key: str | None = "bank-a",
        *,
        version: int = 1,
        stop_after: int | None = None,
        stop_in_prepare: bool = False,
        unavailable_for: frozenset[int] = frozenset(),
    ) -> None:
        self.name = name
        self.bank_key = bank_key
        self.version = version
        self.stop_after = stop_after
        self.stop_in_prepare = stop_in_prepare
        self.unavailable_for = unavailable_for
        self.prepared: list[tuple[str, str]] = []
        self.asked: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted", "version": self.version}

    async def prepare(self, conversation: Conversation, user_id: str) -> PrepareReport:
        self.prepared.append((conversation.sample_id, user_id))
        if self.stop_in_prepare:
            raise Stop
        return PrepareReport(operations=7)

    async def answer(self, conversation: Conversation, user_id: str, question: str) -> TargetAnswer:
        if self.stop_after is not None and len(self.asked) >= self.stop_after:
            raise Stop
        index, qa = next((i, qa) for i, qa in enumerate(conversation.qa) if qa.question == question)
        if index in self.unavailable_for:
            raise TargetError("model unavailable")
        self.asked.append(question)
        answer = qa.answer if qa.category == 4 else "no idea"
        memory = ShownMemory(id="D1:1", text="a memory", speaker="Jon", occurred_at=None)
        return TargetAnswer(answer=answer, selected=[memory], model="fake-model", adapter=None)


@pytest.fixture(scope="module")
def conversation() -> Conversation:
    (conv,) = load_locomo(CONV30)
    return conv


def _options(out: Path, **kw: Any) -> EvalOptions:
    defaults: dict[str, Any] = {"limit_questions": 10, "seed": 3, "progress": False}
    return EvalOptions(out_dir=out, **{**defaults, **kw})


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / QUESTIONS_FILE).read_text().splitlines()]


def _summary(out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


class TestSelectQuestions:
    def test_all_questions_of_the_categories_without_a_limit(
        self, conversation: Conversation
    ) -> None:
        chosen = select_questions(conversation, DEFAULT_CATEGORIES, None, 0)
        assert len(chosen) == 81

    def test_a_limited_sample_depends_only_on_the_seed(self, conversation: Conversation) -> None:
        first = select_questions(conversation, DEFAULT_CATEGORIES, 10, 1)
        assert first == select_questions(conversation, DEFAULT_CATEGORIES, 10, 1)
        assert first != select_questions(conversation, DEFAULT_CATEGORIES, 10, 2)
        indices = [i for i, _ in first]
        assert len(indices) == 10 and indices == sorted(indices)
        assert all(qa.category != 5 for _, qa in first)


async def test_run_writes_every_output_and_a_second_run_asks_nothing(
    tmp_path: Path, conversation: Conversation
) -> None:
    memory, local = ScriptedTarget("memory"), ScriptedTarget("local", bank_key=None)
    out = await run_eval([conversation], [memory, local], _options(tmp_path / "r"))

    for name in (QUESTIONS_FILE, STATE_FILE, "summary.json", "results.md", "chart.png"):
        assert (out / name).exists(), name
    rows = _rows(out)
    assert len(rows) == 20 and {r["config"] for r in rows} == {"memory", "local"}
    row = rows[0]
    assert set(row) >= {
        "config",
        "conversation",
        "question",
        "gold",
        "prediction",
        "selected",
        "scores",
        "category",
        "latency_ms",
    }
    assert row["conversation"] == "conv-30" and row["selected"][0]["id"] == "D1:1"
    assert row["user_id"] == memory.prepared[0][1]

    summary = _summary(out)
    scores = summary["configs"]["memory"]["scores"]
    assert scores["single-hop"]["f1"] == 1.0 and scores["single-hop"]["em"] == 1.0
    assert all(s["f1"] == 0.0 for c, s in scores.items() if c not in {"single-hop", "overall"})
    assert scores["overall"]["count"] == 10 and scores["overall"]["judge"] is None
    assert summary["seed"] == 3 and summary["limit_questions"] == 10
    assert summary["configs"]["memory"]["target"] == {"kind": "scripted", "version": 1}
    assert summary["configs"]["memory"]["models"] == ["fake-model"]
    assert "not configured" in (out / "results.md").read_text()

    again_memory, again_local = ScriptedTarget("memory"), ScriptedTarget("local", bank_key=None)
    await run_eval([conversation], [again_memory, again_local], _options(out))
    assert again_memory.asked == [] and again_local.asked == []
    assert again_memory.prepared == [] and again_local.prepared == []
    assert len(_rows(out)) == 20
    assert _summary(out)["configs"]["memory"]["scores"] == scores


async def test_configs_sharing_a_bank_ingest_once(
    tmp_path: Path, conversation: Conversation
) -> None:
    base, trained = ScriptedTarget("base"), ScriptedTarget("trained-answer")
    await run_eval([conversation], [base, trained], _options(tmp_path))
    assert len(base.prepared) == 1 and trained.prepared == []
    assert len(trained.asked) == 10
    rows = _rows(tmp_path)
    assert {r["user_id"] for r in rows} == {base.prepared[0][1]}
    assert any("one memory bank" in note for note in _summary(tmp_path)["notes"])


async def test_an_interrupted_run_resumes_where_it_stopped(
    tmp_path: Path, conversation: Conversation
) -> None:
    with pytest.raises(Stop):
        await run_eval([conversation], [ScriptedTarget(stop_after=3)], _options(tmp_path))
    assert len(_rows(tmp_path)) == 3

    resumed = ScriptedTarget()
    await run_eval([conversation], [resumed], _options(tmp_path))
    assert resumed.prepared == []  # the bank was ingested before the interruption
    assert len(resumed.asked) == 7
    rows = _rows(tmp_path)
    assert len({r["qa_index"] for r in rows}) == 10 == len(rows)


async def test_the_wall_time_counts_every_process_of_a_resumed_run(
    tmp_path: Path, conversation: Conversation, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = itertools.count(step=10.0)  # each reading of the clock 10 s after the last
    monkeypatch.setattr(harness.time, "perf_counter", lambda: next(clock))
    with pytest.raises(Stop):
        await run_eval([conversation], [ScriptedTarget(stop_after=3)], _options(tmp_path))
    first = json.loads((tmp_path / "state.json").read_text())["wall_seconds"]
    assert first > 0

    await run_eval([conversation], [ScriptedTarget()], _options(tmp_path))
    total = json.loads((tmp_path / "state.json").read_text())["wall_seconds"]
    assert total > first and _summary(tmp_path)["run_wall_seconds"] == total


async def test_interrupted_ingestion_starts_over_as_a_new_user(
    tmp_path: Path, conversation: Conversation
) -> None:
    first = ScriptedTarget(stop_in_prepare=True)
    with pytest.raises(Stop):
        await run_eval([conversation], [first], _options(tmp_path))
    second = ScriptedTarget()
    await run_eval([conversation], [second], _options(tmp_path))
    (first_user,) = [u for _, u in first.prepared]
    (second_user,) = [u for _, u in second.prepared]
    assert first_user.endswith("-1") and second_user.endswith("-2")
    assert {r["user_id"] for r in _rows(tmp_path)} == {second_user}


async def test_a_partial_last_line_is_dropped_and_asked_again(
    tmp_path: Path, conversation: Conversation
) -> None:
    await run_eval([conversation], [ScriptedTarget()], _options(tmp_path))
    path = tmp_path / QUESTIONS_FILE
    text = path.read_text()
    path.write_text(text[: len(text) - 40])
    again = ScriptedTarget()
    await run_eval([conversation], [again], _options(tmp_path))
    assert len(again.asked) == 1
    assert len(_rows(tmp_path)) == 10


async def test_unavailable_questions_are_logged_and_retried(
    tmp_path: Path, conversation: Conversation
) -> None:
    chosen = select_questions(conversation, DEFAULT_CATEGORIES, 10, 3)
    failing = chosen[0][0]
    await run_eval(
        [conversation], [ScriptedTarget(unavailable_for=frozenset({failing}))], _options(tmp_path)
    )
    assert len(_rows(tmp_path)) == 9
    (error,) = [json.loads(x) for x in (tmp_path / ERRORS_FILE).read_text().splitlines()]
    assert error["qa_index"] == failing and error["stage"] == "answer"
    notes = _summary(tmp_path)["configs"]["scripted"]["notes"]
    assert any("1 of 10 questions have no answer yet" in n for n in notes)

    retry = ScriptedTarget()
    await run_eval([conversation], [retry], _options(tmp_path))
    assert retry.asked == [conversation.qa[failing].question]
    assert _summary(tmp_path)["configs"]["scripted"]["answered"] == 10


async def test_results_made_with_other_settings_are_not_mixed(
    tmp_path: Path, conversation: Conversation
) -> None:
    await run_eval([conversation], [ScriptedTarget()], _options(tmp_path))
    with pytest.raises(ValueError, match="version"):
        await run_eval([conversation], [ScriptedTarget(version=2)], _options(tmp_path))
    with pytest.raises(ValueError, match="seed"):
        await run_eval([conversation], [ScriptedTarget()], _options(tmp_path, seed=4))


async def test_adversarial_questions_are_selectable(
    tmp_path: Path, conversation: Conversation
) -> None:
    await run_eval(
        [conversation], [ScriptedTarget()], _options(tmp_path, categories=frozenset({5}))
    )
    rows = _rows(tmp_path)
    assert len(rows) == 10
    assert {(r["category"], r["gold"]) for r in rows} == {(5, ADVERSARIAL_GOLD)}
    assert list(_summary(tmp_path)["configs"]["scripted"]["scores"]) == ["adversarial", "overall"]


async def test_concurrent_questions_give_the_same_results(
    tmp_path: Path, conversation: Conversation
) -> None:
    await run_eval([conversation], [ScriptedTarget()], _options(tmp_path / "a"))
    await run_eval([conversation], [ScriptedTarget()], _options(tmp_path / "b", concurrency=4))
    one = {r["qa_index"]: r["scores"] for r in _rows(tmp_path / "a")}
    four = {r["qa_index"]: r["scores"] for r in _rows(tmp_path / "b")}
    assert one == four


async def test_a_configured_judge_fills_the_j_column(
    tmp_path: Path, conversation: Conversation
) -> None:
    def judge(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["messages"][0]["content"]
        gold = prompt.split("Gold answer: ")[1].split("\n")[0]
        generated = prompt.split("Generated answer: ")[1].split("\n")[0]
        label = "CORRECT" if gold == generated else "WRONG"
        content = json.dumps({"reason": "compared", "label": label})
        return httpx.Response(200, json={"choices": [{"message": {"content": content}}]})

    client = httpx.AsyncClient(transport=httpx.MockTransport(judge))
    llm_judge = LLMJudge("http://judge/v1", "judge-model", client=client)
    await run_eval([conversation], [ScriptedTarget()], _options(tmp_path), judge=llm_judge)
    await client.aclose()

    summary = _summary(tmp_path)
    scores = summary["configs"]["scripted"]["scores"]
    assert scores["single-hop"]["judge"] == 1.0
    assert scores["overall"]["judged"] == 10
    assert scores["overall"]["judge"] == pytest.approx(scores["overall"]["f1"])
    assert summary["judge"]["model"] == "judge-model"
    assert "not configured" not in (tmp_path / "results.md").read_text()
