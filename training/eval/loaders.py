"""Conversations with questions, read from LoCoMo-format JSON and MSC-format JSONL files.

Both formats become the same :class:`Conversation`, so ingestion, training and evaluation code
never look at the raw files. Categories keep the official LoCoMo numbering (the one its
evaluation code uses): 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial.
"""

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CATEGORY_NAMES: dict[int, str] = {
    1: "multi-hop",
    2: "temporal",
    3: "open-domain",
    4: "single-hop",
    5: "adversarial",
}
# The paper (and every published LoCoMo table it is compared with) leaves out adversarial items.
DEFAULT_CATEGORIES: frozenset[int] = frozenset({1, 2, 3, 4})

# Adversarial questions ask about something the conversation never says; the official scorer
# counts an answer as right when it says so, whatever the trap answer in the file is.
ADVERSARIAL_GOLD = "Not mentioned in the conversation"

# Turns of one session share the session's timestamp in the data; this offset keeps their order
# when memories are sorted by time, without moving any turn into another minute of the day.
TURN_OFFSET = timedelta(seconds=1)

# MSC gives only the gap between sessions, not dates: sessions are laid out from this origin.
MSC_ORIGIN = datetime(2023, 1, 1, 9, 0, tzinfo=UTC)

_LOCOMO_DATE_FORMAT = "%I:%M %p on %d %B, %Y"  # "1:56 pm on 8 May, 2023"
_SESSION_KEY = re.compile(r"^session_(\d+)$")


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str
    dia_id: str  # LoCoMo's "D<session>:<turn>", which QA evidence and observations refer to
    occurred_at: datetime


@dataclass(frozen=True)
class Observation:
    """A ready-made fact about one speaker, with the dia_ids of the turns that support it."""

    speaker: str
    text: str
    evidence: list[str]


@dataclass(frozen=True)
class Session:
    index: int  # 1-based, as in the file
    occurred_at: datetime
    turns: list[Turn]
    observations: list[Observation]


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    category: int
    evidence: list[str]
    adversarial_answer: str | None = None  # the trap answer of a category-5 item


@dataclass(frozen=True)
class Conversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: list[Session]
    qa: list[QA]

    @property
    def turns(self) -> list[Turn]:
        return [turn for session in self.sessions for turn in session.turns]

    def questions(self, categories: Iterable[int] = DEFAULT_CATEGORIES) -> list[tuple[int, QA]]:
        """``(position in qa, item)`` for the chosen categories; the position identifies the
        question across runs, so results can be resumed and compared."""
        wanted = frozenset(categories)
        return [(i, qa) for i, qa in enumerate(self.qa) if qa.category in wanted]


def parse_locomo_date(text: str) -> datetime:
    """``"1:56 pm on 8 May, 2023"`` as a UTC datetime (LoCoMo gives no time zone)."""
    try:
        return datetime.strptime(text.strip(), _LOCOMO_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(
            f"session date {text!r} is not in LoCoMo's form, e.g. '1:56 pm on 8 May, 2023'"
        ) from exc


def load_locomo(path: Path | str) -> list[Conversation]:
    """Every conversation of a LoCoMo-format file (a JSON list of samples, as locomo10.json)."""
    with Path(path).open(encoding="utf-8") as f:
        samples = json.load(f)
    if not isinstance(samples, list):
        raise ValueError(f"{path}: expected a JSON list of LoCoMo samples")
    return [_locomo_conversation(sample) for sample in samples]


def _locomo_conversation(sample: dict[str, Any]) -> Conversation:
    conv = sample["conversation"]
    observations = sample.get("observation") or {}
    indices = sorted(int(m.group(1)) for key in conv if (m := _SESSION_KEY.match(key)))
    sessions = [
        _locomo_session(
            index,
            conv[f"session_{index}"],
            conv[f"session_{index}_date_time"],
            observations.get(f"session_{index}_observation") or {},
        )
        for index in indices
    ]
    return Conversation(
        sample_id=str(sample["sample_id"]),
        speaker_a=conv["speaker_a"],
        speaker_b=conv["speaker_b"],
        sessions=sessions,
        qa=[_locomo_qa(item) for item in sample.get("qa", [])],
    )


def _locomo_session(
    index: int, raw_turns: list[dict[str, Any]], date: str, observations: dict[str, Any]
) -> Session:
    start = parse_locomo_date(date)
    turns = [
        Turn(
            speaker=raw["speaker"],
            text=_turn_text(raw),
            dia_id=raw["dia_id"],
            occurred_at=start + i * TURN_OFFSET,
        )
        for i, raw in enumerate(raw_turns)
    ]
    facts = [
        Observation(speaker=speaker, text=text, evidence=_evidence_list(evidence))
        for speaker, items in observations.items()
        for text, evidence in items
    ]
    return Session(index=index, occurred_at=start, turns=turns, observations=facts)


def _turn_text(raw: dict[str, Any]) -> str:
    """The turn as a reader of the chat saw it: a shared photo is known by its caption."""
    text = str(raw.get("text", "")).strip()
    caption = raw.get("blip_caption")
    if caption:
        text = f"{text} [shares a photo: {caption}]".strip()
    return text


def _evidence_list(evidence: str | list[str]) -> list[str]:
    # A few observations cite several turns as a list instead of one dia_id string.
    return [evidence] if isinstance(evidence, str) else [str(e) for e in evidence]


def _locomo_qa(item: dict[str, Any]) -> QA:
    category = int(item["category"])
    adversarial = item.get("adversarial_answer")
    if category == 5:
        answer = ADVERSARIAL_GOLD
    else:
        # Years and counts are JSON numbers in the file ("answer": 2022).
        answer = str(item["answer"])
    return QA(
        question=item["question"],
        answer=answer,
        category=category,
        evidence=[str(e) for e in item.get("evidence", [])],
        adversarial_answer=None if adversarial is None else str(adversarial),
    )


def load_msc(path: Path | str) -> list[Conversation]:
    """Multi-Session Chat episodes (ParlAI MSC JSONL): earlier sessions then the current one.

    MSC has no questions (``qa`` is empty); each session's personas become its observations.
    """
    conversations = []
    with Path(path).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                conversations.append(_msc_conversation(json.loads(line), line_no))
    return conversations


_MSC_SPEAKERS = ("Speaker 1", "Speaker 2")
_MSC_UNITS = {"hour": "hours", "hours": "hours", "day": "days", "days": "days"}


def _msc_conversation(episode: dict[str, Any], line_no: int) -> Conversation:
    raw_sessions = [*episode.get("previous_dialogs", []), episode]
    sample_id = f"msc-{episode['metadata']['initial_data_id']}-{line_no}"
    sessions = []
    start = MSC_ORIGIN
    for index, raw in enumerate(raw_sessions, start=1):
        sessions.append(_msc_session(index, raw, start))
        if "time_num" in raw:
            start += _msc_gap(raw)
    return Conversation(
        sample_id=sample_id,
        speaker_a=_MSC_SPEAKERS[0],
        speaker_b=_MSC_SPEAKERS[1],
        sessions=sessions,
        qa=[],
    )


def _msc_session(index: int, raw: dict[str, Any], start: datetime) -> Session:
    # Speakers strictly alternate, starting with Speaker 1; earlier sessions carry no speaker
    # ids at all, and a few current sessions mislabel their first turn with a numeric id.
    turns = [
        Turn(
            speaker=_MSC_SPEAKERS[i % 2],
            text=str(item["text"]).strip(),
            dia_id=f"D{index}:{i + 1}",
            occurred_at=start + i * TURN_OFFSET,
        )
        for i, item in enumerate(raw["dialog"])
    ]
    observations = [
        Observation(speaker=speaker, text=text, evidence=[])
        for speaker, persona in zip(_MSC_SPEAKERS, raw.get("personas", []), strict=False)
        for text in persona
    ]
    return Session(index=index, occurred_at=start, turns=turns, observations=observations)


def _msc_gap(raw: dict[str, Any]) -> timedelta:
    unit = _MSC_UNITS.get(str(raw["time_unit"]))
    if unit is None:
        raise ValueError(f"MSC time unit {raw['time_unit']!r} is not one of {sorted(_MSC_UNITS)}")
    return timedelta(**{unit: float(raw["time_num"])})


def load_conversations(paths: Sequence[Path | str]) -> list[Conversation]:
    """All conversations of the given files: ``.jsonl`` is MSC, anything else LoCoMo JSON."""
    conversations: list[Conversation] = []
    for path in paths:
        loader = load_msc if str(path).endswith(".jsonl") else load_locomo
        conversations.extend(loader(path))
    counts = Counter(c.sample_id for c in conversations)
    duplicates = sorted(sample_id for sample_id, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"conversations appear more than once: {', '.join(duplicates)}")
    return conversations
