"""Fact extraction: one turn in, a few self-contained facts out.

Every fact names its speaker and, when the turn has a date, starts with that date: memories are
later read out of context, and LoCoMo's temporal questions ("When did Caroline ...?") can only
be answered if the date travels with the fact. The model is asked to write them; when it does
not, ``anchor_fact`` adds them. Before that, ``app.memory.guard`` drops what the turn does not
support and resolves relative dates against the turn's date.
"""

from dataclasses import dataclass, field
from datetime import datetime

from app.core.errors import UnusableOutput
from app.llm.backend import Completion, LLMBackend
from app.memory.guard import (
    check,
    content_stems,
    gives_time,
    has_date,
    resolve_dates,
    sentences,
    turn_time,
    undated,
)
from app.memory.prompts import (
    DEFAULT_MAX_FACTS,
    extract_max_tokens,
    extract_schema,
    extraction_messages,
    format_date,
    mentions,
)
from app.memory.schemas import Fact, text_key


@dataclass(frozen=True)
class Extraction:
    facts: list[Fact]
    completion: Completion | None  # None when the backend returned nothing usable
    error: str | None  # why the output was unusable; facts is then empty
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (text, why), by the guard


def parse_facts(parsed: object, max_facts: int) -> tuple[list[str], str | None]:
    """The fact texts of an extraction output (blank ones and repeats dropped, at most
    ``max_facts``), or an error when the output does not have the schema's shape."""
    if not isinstance(parsed, dict) or not isinstance(parsed.get("facts"), list):
        return [], f'expected {{"facts": [...]}}, got {parsed!r:.200}'
    items: list[object] = parsed["facts"]
    if not all(isinstance(item, str) for item in items):
        return [], f"every fact must be a string, got {items!r:.200}"
    texts: list[str] = []
    seen: set[str] = set()
    for item in items:
        text = " ".join(str(item).split())
        if text and text_key(text) not in seen:
            seen.add(text_key(text))
            texts.append(text)
    return texts[:max_facts], None


def anchor_fact(text: str, speaker: str, occurred_at: datetime | None) -> str:
    """``text`` with the speaker's name and the date added where it lacks them."""
    has_speaker = mentions(text, speaker)
    if occurred_at is None or format_date(occurred_at) in text:
        return text if has_speaker else f"{speaker}: {text}"
    date = format_date(occurred_at)
    return f"On {date}, {text}" if has_speaker else f"{speaker} on {date}: {text}"


async def extract_facts(
    llm: LLMBackend,
    *,
    speaker: str,
    text: str,
    occurred_at: datetime | None,
    adapter: str | None = None,
    max_facts: int = DEFAULT_MAX_FACTS,
) -> Extraction:
    """Ask the model for the facts in one turn. Unusable output gives an Extraction with
    ``error`` set and no facts; ``app.core.errors.Upstream`` from the backend propagates."""
    messages = extraction_messages(speaker, text, occurred_at, max_facts)
    try:
        completion = await llm.complete(
            messages,
            json_schema=extract_schema(max_facts),
            adapter=adapter,
            temperature=0.0,
            max_tokens=extract_max_tokens(max_facts),
        )
    except UnusableOutput as exc:
        return Extraction(facts=[], completion=None, error=f"unusable model output: {exc.detail}")
    texts, error = parse_facts(completion.parsed, max_facts)
    if error is not None:
        return Extraction(facts=[], completion=completion, error=error)
    facts, dropped = checked_facts(texts, text, speaker, occurred_at)
    return Extraction(facts=facts, completion=completion, error=None, dropped=dropped)


def checked_facts(
    texts: list[str], turn: str, speaker: str, occurred_at: datetime | None
) -> tuple[list[Fact], list[tuple[str, str]]]:
    """The facts of ``texts`` that the turn supports, with their dates resolved, speaker and
    date anchored, and repeats dropped; and what was dropped, with why."""
    kept: list[tuple[str, frozenset[str]]] = []  # each resolved text with what it says
    dropped: list[tuple[str, str]] = []
    mention = {format_date(occurred_at)} if occurred_at is not None else set()
    for candidate in texts:
        checked = check(candidate, [turn], speaker, occurred_at)
        dropped += checked.dropped
        if checked.text is None:
            continue
        resolved = resolve_dates(checked.text, occurred_at)
        # The date of mention is left out of what it says: every fact of the turn has it.
        says = content_stems(resolved, speaker) - mention
        same = [(text, other) for text, other in kept if says <= other or other <= says]
        if same and says <= same[0][1]:
            dropped.append((candidate, "repeats an earlier fact"))
            continue
        if same:  # this one says what an earlier one said, and more: it takes its place
            dropped.append((same[0][0], "repeated by a later fact that says more"))
            kept.remove(same[0])
        kept.append((resolved, says))
    kept = _timed(kept, turn, speaker, occurred_at)
    facts = []
    for resolved, _ in kept:
        # A fact that dates itself ("... on 2 December 2026") needs no date of mention.
        at = None if has_date(resolved) else occurred_at
        facts.append(Fact(anchor_fact(resolved, speaker, at), speaker, occurred_at))
    return facts, dropped


def _timed(
    kept: list[tuple[str, frozenset[str]]], turn: str, speaker: str, occurred_at: datetime | None
) -> list[tuple[str, frozenset[str]]]:
    """The model often leaves out when ("Yesterday I ran my first marathon!" -> "Jack ran his
    first marathon."). When the turn gives one time, in one of its sentences, a fact gets it
    if it is the turn's only fact or says more of that sentence than of any other (all of
    the turn's facts, when that sentence is the whole turn); not when it already says when,
    resolved or not ("last year" -> "in 2022", which names no full date)."""
    when = turn_time(turn, occurred_at)
    if when is None:
        return kept
    split = sentences(turn)
    parts = [content_stems(part, speaker) for part in split]
    timed = [i for i, part in enumerate(split) if turn_time(part, occurred_at)]

    def about_the_time(says: frozenset[str]) -> bool:
        if len(kept) == 1:
            return True
        shared = [len(says & part) for part in parts]
        others = [n for i, n in enumerate(shared) if i not in timed]
        return len(timed) == 1 and shared[timed[0]] > max(others, default=0)

    return [
        (_with_time(text, when), says)
        if when.casefold() not in text.casefold()
        and not gives_time(text, occurred_at)
        and about_the_time(says)
        else (text, says)
        for text, says in kept
    ]


def _with_time(text: str, when: str) -> str:
    """``text`` saying ``when``, in place of the date of mention it may open with."""
    if len(sentences(text)) == 1:
        text = undated(text)
    body = text.rstrip(" .!?")
    return f"{body} {when}{text[len(body) :].strip() or '.'}"
