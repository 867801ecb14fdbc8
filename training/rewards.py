"""GRPO rewards for the Answer Agent and the Memory Manager.

Every reward is a plain function ``(prompts, completions, **columns) -> list[float]`` as TRL's
GRPOTrainer calls it: ``completions`` are chat messages (or strings), and the dataset's other
columns (``gold``, ``category``, ``memory_keys``, ``bank``...) arrive as keyword lists, one item
per completion.

Outcome rewards follow the paper: the Answer Agent is scored by its answer against the gold
answer (exact match, or the denser token F1); the Manager by the answer a frozen Answer Agent
gives from the bank its operations produced. A small format term rewards output that serving
can use (JSON under the agent's schema naming only memories that were shown), because a 135M
model sampling freely produces invalid JSON often enough to drown the outcome signal.
"""

import json
from collections.abc import Callable, Sequence
from typing import Any

from app.episodes.views import fact_from_json
from app.memory.answer import parse_answer
from app.memory.manager import apply_to_bank, malformed_reason, validate_operations
from app.memory.prompts import ANSWER_MAX_CHARS, ANSWER_MAX_SELECTED, MANAGER_MAX_OPERATIONS
from app.memory.schemas import Fact, MemoryView, Operation
from training.datasets import memory_from_dict
from training.eval.metrics import locomo_f1, score_answer

RewardFunc = Callable[..., list[float]]
# (question, memories shown) pairs in, one answer per pair out (None when unusable).
Answerer = Callable[[Sequence[tuple[str, list[MemoryView]]]], list[str | None]]
# (question, bank, speakers) -> the memories the Answer Agent is shown, keyed m1..mN.
Retrieve = Callable[[str, list[MemoryView], Sequence[str]], list[MemoryView]]

KINDS = ("em", "f1")
_ANSWER_KEYS = {"selected", "answer"}


# --- parsing ------------------------------------------------------------------------------------


def completion_text(completion: str | list[dict[str, str]]) -> str:
    """The generated text of a TRL completion (conversational or plain)."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


def completion_texts(completions: Sequence[Any], kwargs: dict[str, Any]) -> list[str]:
    """The full output of each completion: rows rendered with a forced start of the reply
    (``response_prefix``, see ``grpo.render_rows``) get it put back in front."""
    prefixes = kwargs.get("response_prefix") or [""] * len(completions)
    return [p + completion_text(c) for p, c in zip(prefixes, completions, strict=True)]


def parse_json(text: str) -> tuple[Any, bool]:
    """``(value, whole)``: the JSON value the text starts with (None if it doesn't start with
    one) and whether that value is all there is. Serving decodes under a grammar and never
    trails text; sampled training completions may, and that costs format reward only."""
    stripped = text.strip()
    try:
        value, end = json.JSONDecoder().raw_decode(stripped)
    except json.JSONDecodeError:
        return None, False
    return value, end == len(stripped)


def parsed_answer(text: str) -> str | None:
    """The answer of an Answer Agent output, as serving would read it."""
    value, _ = parse_json(text)
    _, answer, _ = parse_answer(value, [])
    return answer


# --- scoring ------------------------------------------------------------------------------------


def outcome_score(prediction: str | None, gold: str, category: int, kind: str) -> float:
    """Exact match (``em``) or the official LoCoMo token F1 (``f1``); 0 without an answer."""
    if prediction is None:
        return 0.0
    if kind == "em":
        return score_answer(prediction, gold, category).em
    return locomo_f1(prediction, gold, category)


def rated_score(prediction: str | None, logged_answer: str, rating: int, kind: str) -> float:
    """Reward for a row that has a rating but no gold answer.

    The rated answer stands in for the gold one: with a positive rating, a completion is scored
    by how well it reproduces the endorsed answer; with a negative rating by minus that, so the
    group's advantages push away from the rejected answer. GRPO normalises rewards within a
    group, so only this ordering matters, not the sign convention's offset."""
    if rating == 0:
        return 0.0
    similarity = outcome_score(prediction, logged_answer, 4, kind)
    return similarity if rating > 0 else -similarity


def answer_format_score(text: str, memory_keys: Sequence[str]) -> float:
    """How usable an Answer Agent output is, in quarters: it is a JSON object (0.25); its answer
    is a non-empty string within the schema's length (0.25); ``selected`` lists at most
    ANSWER_MAX_SELECTED distinct keys of memories that were shown (0.25); nothing else is there
    (no other keys, no trailing text) (0.25). 0 when it is not JSON at all."""
    value, whole = parse_json(text)
    if not isinstance(value, dict):
        return 0.0
    answer, selected = value.get("answer"), value.get("selected")
    checks = [
        True,
        isinstance(answer, str) and 0 < len(answer.strip()) <= ANSWER_MAX_CHARS,
        isinstance(selected, list)
        and len(selected) <= ANSWER_MAX_SELECTED
        and len(set(map(str, selected))) == len(selected)
        and set(selected) <= set(memory_keys),
        whole and set(value) == _ANSWER_KEYS,
    ]
    return sum(checks) / len(checks)


def manager_format_score(text: str, candidates: list[MemoryView], fact: Fact) -> float:
    """How usable a Manager output is: 0 when it is not ``{"operations": [...]}``; 0.5 for that
    shape; 1 when, besides, every operation passes ``validate_operations`` against the shown
    candidates and ``fact`` (as serving validates it), there are 1..MANAGER_MAX_OPERATIONS of
    them and no trailing text."""
    return _validated(text, candidates, fact)[1]


def _validated(
    text: str, candidates: list[MemoryView], fact: Fact
) -> tuple[list[Operation] | None, float]:
    """The operations serving would apply for a Manager output (None when it is unusable),
    and its format score (``manager_format_score``)."""
    value, whole = parse_json(text)
    if malformed_reason(value) is not None:
        return None, 0.0
    operations, rejected = validate_operations(value, candidates, fact=fact)
    clean = whole and not rejected and 0 < len(value["operations"]) <= MANAGER_MAX_OPERATIONS
    return operations, 1.0 if clean else 0.5


def _mix(outcome: float, fmt: float, format_weight: float) -> float:
    return (1.0 - format_weight) * outcome + format_weight * fmt


def _log_means(kwargs: dict[str, Any], **values: list[float]) -> None:
    # TRL hands rewards a ``log_metric`` callback; logging the parts shows whether the model is
    # learning the task or only the format.
    log_metric = kwargs.get("log_metric")
    if log_metric is None:
        return
    for name, items in values.items():
        if items:
            log_metric(name, sum(items) / len(items))


# --- Answer Agent -------------------------------------------------------------------------------


def _answer_outcomes(completions: Sequence[Any], kind: str, **kwargs: Any) -> list[float]:
    gold = kwargs["gold"]
    category = kwargs.get("category") or [4] * len(completions)
    rating = kwargs.get("rating") or [None] * len(completions)
    logged = kwargs.get("logged_answer") or [None] * len(completions)
    scores: list[float] = []
    texts = completion_texts(completions, kwargs)
    for text, g, c, r, a in zip(texts, gold, category, rating, logged, strict=True):
        prediction = parsed_answer(text)
        if g is not None:
            scores.append(outcome_score(prediction, g, int(c), kind))
        elif r is not None and a is not None:
            scores.append(rated_score(prediction, a, int(r), kind))
        else:
            raise ValueError("an answer row needs a gold answer, or a rating and logged_answer")
    return scores


def exact_match_reward(
    prompts: Sequence[Any], completions: Sequence[Any], gold: Sequence[str | None], **kwargs: Any
) -> list[float]:
    """1 when the answer matches the gold answer exactly (LoCoMo's normalisation), else 0."""
    return _answer_outcomes(completions, "em", gold=gold, **kwargs)


def f1_reward(
    prompts: Sequence[Any], completions: Sequence[Any], gold: Sequence[str | None], **kwargs: Any
) -> list[float]:
    """The official LoCoMo token F1 of the answer against the gold answer."""
    return _answer_outcomes(completions, "f1", gold=gold, **kwargs)


def answer_format_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    memory_keys: Sequence[Sequence[str]],
    **kwargs: Any,
) -> list[float]:
    """``answer_format_score`` of each completion against the keys its prompt showed."""
    texts = completion_texts(completions, kwargs)
    return [answer_format_score(text, keys) for text, keys in zip(texts, memory_keys, strict=True)]


def answer_reward(kind: str, format_weight: float) -> RewardFunc:
    """The Answer Agent's training reward: ``(1 - format_weight) * outcome + format_weight *
    format``, where the outcome is exact match (``em``) or token F1 (``f1``)."""
    _check(kind, format_weight)

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        outcomes = _answer_outcomes(completions, kind, **kwargs)
        formats = answer_format_reward(prompts, completions, **kwargs)
        _log_means(kwargs, outcome=outcomes, format=formats)
        return [_mix(o, f, format_weight) for o, f in zip(outcomes, formats, strict=True)]

    reward.__name__ = f"answer_{kind}"
    return reward


# --- Memory Manager -----------------------------------------------------------------------------


def decision_score(
    operations: list[Operation] | None, candidates: list[MemoryView], expected_reply: str
) -> float:
    """1 when the operations serving would apply are the decision a generated row expects
    (its ``expected_reply``): the same kinds on the same shown memories (an UPDATE's text aside;
    NOOP is no operation), else 0. An unusable output scores 0."""
    if operations is None:
        return 0.0
    ids = {m.key: m.id for m in candidates}
    expected = sorted(
        (op["op"], str(ids.get(op["id"])) if op["op"] in ("UPDATE", "DELETE") else "")
        for op in json.loads(expected_reply)["operations"]
        if op["op"] != "NOOP"
    )
    decided = sorted(
        (op.kind.value, str(op.memory_id) if op.memory_id is not None else "") for op in operations
    )
    return 1.0 if decided == expected else 0.0


def manager_outcome_reward(
    answerer: Answerer,
    kind: str,
    format_weight: float,
    *,
    retrieve: Retrieve,
    decision_weight: float = 0.0,
) -> RewardFunc:
    """The Manager's reward, by outcome as in the paper.

    For each completion: its operations are validated against the row's candidates (invalid
    ones dropped, an unusable output changes nothing, as in serving) and applied to a copy of
    the row's bank; ``retrieve`` picks the memories for the row's question from that bank; the
    frozen ``answerer`` answers; the answer's EM or F1 against the gold answer is the outcome,
    mixed with the format score by ``format_weight``. Completions that leave the bank in the
    same state share one answer, so a group of identical decisions costs one generation.

    Rows that know the decision they call for (generated rows: ``expected_reply``) give
    ``decision_weight`` of the outcome to ``decision_score``: the outcome alone rarely tells an
    UPDATE from an ADD (both answer a question about the new fact), the decision does."""
    _check(kind, format_weight)
    if not 0.0 <= decision_weight <= 1.0:
        raise ValueError(f"decision_weight must be in [0, 1], got {decision_weight}")

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        texts = completion_texts(completions, kwargs)
        expected = kwargs.get("expected_reply") or [None] * len(texts)
        shown: list[tuple[str, list[MemoryView]]] = []
        formats: list[float] = []
        decisions: list[float | None] = []
        for i, text in enumerate(texts):
            candidates = [memory_from_dict(m) for m in kwargs["candidates"][i]]
            bank = [memory_from_dict(m) for m in kwargs["bank"][i]]
            fact = fact_from_json(kwargs["fact"][i])
            operations, fmt = _validated(text, candidates, fact)
            # An output whose every operation was rejected decided nothing (it is not a NOOP).
            decided = operations if operations or fmt == 1.0 else None
            decisions.append(
                None if expected[i] is None else decision_score(decided, candidates, expected[i])
            )
            # An unusable output changes nothing, as in serving.
            bank_after = bank if operations is None else apply_to_bank(bank, operations, fact=fact)
            question = kwargs["question"][i]
            shown.append((question, retrieve(question, bank_after, kwargs["speakers"][i])))
            formats.append(fmt)
        answers = _answer_unique(answerer, shown)
        outcomes = [
            outcome_score(answer, gold, int(category), kind)
            for answer, gold, category in zip(
                answers, kwargs["gold"], kwargs["category"], strict=True
            )
        ]
        known = [d for d in decisions if d is not None]
        _log_means(kwargs, outcome=outcomes, format=formats, decision=known)
        mixed = [
            o if d is None else (1.0 - decision_weight) * o + decision_weight * d
            for o, d in zip(outcomes, decisions, strict=True)
        ]
        return [_mix(o, f, format_weight) for o, f in zip(mixed, formats, strict=True)]

    reward.__name__ = f"manager_{kind}"
    return reward


def _answer_unique(
    answerer: Answerer, shown: list[tuple[str, list[MemoryView]]]
) -> list[str | None]:
    def state(item: tuple[str, list[MemoryView]]) -> tuple[object, ...]:
        question, memories = item
        # Fresh ids of added memories don't change what the answerer reads; the rest does.
        return question, tuple((m.text, m.speaker, m.occurred_at) for m in memories)

    unique = {state(item): item for item in shown}
    answers = dict(zip(unique, answerer(list(unique.values())), strict=True))
    return [answers[state(item)] for item in shown]


def _check(kind: str, format_weight: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"reward kind must be one of {KINDS}, got {kind!r}")
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
