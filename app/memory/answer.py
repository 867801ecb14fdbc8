"""The Answer Agent: from the retrieved memories, select the few that matter, then answer.

Selecting first is the paper's "memory distillation": the model names the memories it relies
on (by key) before it answers, and the answer is short because the reward is exact match
against short gold answers.
"""

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from app.core.errors import UnusableOutput
from app.llm.backend import Completion, LLMBackend
from app.memory.guard import drop_repeats
from app.memory.prompts import ANSWER_MAX_TOKENS, answer_messages, answer_schema, format_date
from app.memory.schemas import MemoryView, rekey

PER_SPEAKER = 30
# A machine timestamp ("2023-05-08", "2023-05-08 23:30:52", "2023-05-08T23:30:52Z").
_TIMESTAMP = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})(?:[T ]\d{1,2}:\d{2}(?::\d{2})?Z?)?\b")


@dataclass(frozen=True)
class AnswerResult:
    answer: str | None  # None when error is set
    selected: list[MemoryView]  # the memories the model relied on, in its order
    completion: Completion | None  # None when the backend returned nothing usable
    error: str | None


def parse_answer(
    parsed: object, memories: list[MemoryView]
) -> tuple[list[MemoryView], str | None, str | None]:
    """``(selected, answer, error)`` from an Answer Agent output.

    Keys that name no shown memory are dropped, as are repeats, and so are sentences of the
    answer said before in it ("I am heartbroken. I am heartbroken. I"); a timestamp is written
    as the memories write dates ("2023-05-08 23:30:52" -> "8 May 2023": memories are dated by
    the day, so its time of day is the model's own); a blank answer is an error."""
    if (
        not isinstance(parsed, dict)
        or not isinstance(parsed.get("selected"), list)
        or not isinstance(parsed.get("answer"), str)
    ):
        return [], None, f'expected {{"selected": [...], "answer": "..."}}, got {parsed!r:.200}'
    by_key = {m.key: m for m in memories}
    selected: list[MemoryView] = []
    for key in parsed["selected"]:
        if isinstance(key, str) and key in by_key and by_key[key] not in selected:
            selected.append(by_key[key])
    answer = drop_repeats(_TIMESTAMP.sub(_as_date, parsed["answer"]))
    if not answer:
        return selected, None, "empty answer"
    return selected, answer, None


def _as_date(match: re.Match[str]) -> str:
    try:
        return format_date(datetime(int(match[1]), int(match[2]), int(match[3])))
    except ValueError:  # not a calendar date: left as written
        return match[0]


async def answer_question(
    llm: LLMBackend, question: str, memories: list[MemoryView], *, adapter: str | None = None
) -> AnswerResult:
    """Answer ``question`` from ``memories`` (already retrieved and keyed). Unusable output
    gives a result with ``error`` set; ``app.core.errors.Upstream`` propagates."""
    messages = answer_messages(question, memories)
    try:
        completion = await llm.complete(
            messages,
            json_schema=answer_schema([m.key for m in memories], messages[-1]["content"]),
            adapter=adapter,
            temperature=0.0,
            max_tokens=ANSWER_MAX_TOKENS,
        )
    except UnusableOutput as exc:
        return AnswerResult(None, [], completion=None, error=f"unusable model output: {exc.detail}")
    selected, answer, error = parse_answer(completion.parsed, memories)
    return AnswerResult(answer, selected, completion=completion, error=error)


def split_per_speaker(
    ranked: list[MemoryView], speakers: tuple[str, str], per_speaker: int = PER_SPEAKER
) -> list[MemoryView]:
    """The paper's retrieval for two-speaker conversations: the best ``per_speaker`` memories of
    each speaker, in rank order, keyed m1..mN afresh so the set can be shown as it is.

    Memories of anyone else, or of no speaker, are left out: callers use this only where the
    data has the two speakers."""
    taken: Counter[str] = Counter()
    kept: list[MemoryView] = []
    for memory in ranked:
        if memory.speaker in speakers and taken[memory.speaker] < per_speaker:
            taken[memory.speaker] += 1
            kept.append(memory)
    return rekey(kept)
