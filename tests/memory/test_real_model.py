"""The three agents on the bundled SmolLM2 with real LoCoMo turns and questions.

A 135M model's judgement is not what is tested here; what is: under the schemas, with the
prompts as written and the token limits as set, its output always parses into facts,
operations and answers."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from app.llm.bundled import BUNDLED_MODEL_NAME
from app.llm.inprocess import InProcessBackend
from app.memory.answer import answer_question, split_per_speaker
from app.memory.extractor import extract_facts
from app.memory.manager import decide
from app.memory.schemas import Fact, MemoryView, as_views

pytestmark = pytest.mark.model

LOCOMO_TRAIN = (
    Path(__file__).resolve().parents[2].parent / "shared/data/locomo/locomo_train_conv26.json"
)


def session_date(conversation: dict[str, Any], session: int) -> datetime:
    # LoCoMo writes session dates as "1:56 pm on 8 May, 2023".
    return datetime.strptime(conversation[f"session_{session}_date_time"], "%I:%M %p on %d %B, %Y")


@pytest.fixture(scope="module")
def conversation_record() -> dict[str, Any]:
    record: dict[str, Any] = json.loads(LOCOMO_TRAIN.read_text())[0]
    return record


@pytest.fixture(scope="module")
def conversation(conversation_record: dict[str, Any]) -> dict[str, Any]:
    conv: dict[str, Any] = conversation_record["conversation"]
    return conv


@pytest.fixture(scope="module")
async def llm(serving_model_dir: Path) -> AsyncIterator[InProcessBackend]:
    backend = InProcessBackend(
        serving_model_dir, BUNDLED_MODEL_NAME, max_batch_size=4, max_lora_rank=64
    )
    yield backend
    await backend.close()


@pytest.fixture(scope="module")
def turn_memories(conversation: dict[str, Any]) -> list[MemoryView]:
    """Raw turns of the first sessions as a ranked bank, as a plain RAG baseline stores them."""
    rows = [
        (uuid.uuid4(), turn["text"], turn["speaker"], session_date(conversation, s))
        for s in (1, 2, 3, 4)
        for turn in conversation[f"session_{s}"]
    ]
    return as_views(rows)


async def test_extraction_parses_on_real_turns(
    llm: InProcessBackend, conversation: dict[str, Any]
) -> None:
    at = session_date(conversation, 1)
    turns = [t for t in conversation["session_1"] if len(t["text"]) > 60][:3]

    # Concurrent calls with the same schema share one batch in the backend.
    extractions = await asyncio.gather(
        *(
            extract_facts(
                llm, speaker=turn["speaker"], text=turn["text"], occurred_at=at, max_facts=3
            )
            for turn in turns
        )
    )

    for turn, extraction in zip(turns, extractions, strict=True):
        assert extraction.error is None, (turn["text"], extraction.completion)
        assert len(extraction.facts) <= 3
        for fact in extraction.facts:
            assert turn["speaker"] in fact.text and "8 May 2023" in fact.text
            assert fact.speaker == turn["speaker"] and fact.occurred_at == at


async def test_manager_output_parses_and_names_only_candidates(
    llm: InProcessBackend, conversation: dict[str, Any], turn_memories: list[MemoryView]
) -> None:
    at = session_date(conversation, 1)
    facts = [
        Fact("On 8 May 2023, Caroline went to an LGBTQ support group.", "Caroline", at),
        Fact("On 8 May 2023, Melanie said she painted a lake sunrise last year.", "Melanie", at),
    ]
    candidates = turn_memories[:5]
    ids = {m.id for m in candidates}

    decisions = await asyncio.gather(*(decide(llm, fact, candidates) for fact in facts))

    for decision in decisions:
        assert decision.error is None, decision.completion
        assert all(op.memory_id is None or op.memory_id in ids for op in decision.operations)
        assert all(r.reason for r in decision.rejected)


async def test_answer_agent_parses_with_sixty_memories(
    llm: InProcessBackend,
    conversation_record: dict[str, Any],
    conversation: dict[str, Any],
    turn_memories: list[MemoryView],
) -> None:
    speakers = (conversation["speaker_a"], conversation["speaker_b"])
    memories = split_per_speaker(turn_memories, speakers)
    assert len(memories) == 60
    questions = [qa["question"] for qa in conversation_record["qa"] if qa["category"] != 5][:2]

    results = await asyncio.gather(*(answer_question(llm, q, memories) for q in questions))

    for question, result in zip(questions, results, strict=True):
        assert result.error is None, (question, result.completion)
        assert result.answer
        assert all(m in memories for m in result.selected)
        assert result.completion is not None and result.completion.prompt_tokens < 8192
