"""The Memory Manager: for one new fact and the memories most similar to it, decide
ADD / UPDATE / DELETE / NOOP.

The model's output is never trusted: ``validate_operations`` turns it into operations that can
only touch the memories the model was shown (by their ``m1``..``mN`` keys), so text in a turn
that names another memory, a UUID or another user's data can never reach the bank.
"""

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from app.core.errors import UnusableOutput
from app.llm.backend import Completion, LLMBackend
from app.memory.guard import check, content_stems, event_dates, names
from app.memory.prompts import (
    DATE,
    MANAGER_MAX_TOKENS,
    format_date,
    manager_messages,
    manager_schema,
)
from app.memory.schemas import (
    Fact,
    MemoryView,
    Operation,
    OpKind,
    RejectedOperation,
    rekey,
    text_key,
)

DEFAULT_MAX_TEXT_CHARS = 2000


@dataclass(frozen=True)
class Decision:
    operations: list[Operation]
    rejected: list[RejectedOperation]
    completion: Completion | None  # None when the backend returned nothing usable
    error: str | None  # why the whole output was unusable; operations is then empty


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _operation_items(parsed: object) -> list[object] | None:
    if isinstance(parsed, dict) and isinstance(parsed.get("operations"), list):
        return parsed["operations"]
    return None


def _shape_error(parsed: object) -> str:
    return f'expected {{"operations": [...]}}, got {parsed!r:.200}'


def malformed_reason(parsed: object) -> str | None:
    """Why ``parsed`` is not a Manager output at all, or None when it has the right shape."""
    return _shape_error(parsed) if _operation_items(parsed) is None else None


def _says(text: str, speaker: str | None) -> frozenset[str]:
    """What ``text`` says: its content stems and dates, and its numbers ("city number 1" is
    not "city number 0")."""
    return content_stems(text, speaker) | set(re.findall(r"\d+", DATE.sub(" ", text)))


class _Validator:
    """Checks items one by one against the candidates and the items accepted before them."""

    def __init__(
        self, candidates: list[MemoryView], max_text_chars: int, fact: Fact | None
    ) -> None:
        self.by_key = {m.key: m for m in candidates}
        self.stored = {text_key(m.text): m.key for m in candidates}
        self.max_text_chars = max_text_chars
        self.fact = fact
        self.touched: set[str] = set()
        self.added: set[str] = set()
        self.trimmed: list[RejectedOperation] = []  # sentences the guard cut from kept texts

    def accept(self, raw: dict[str, object]) -> Operation | None:
        op = raw.get("op")
        if not isinstance(op, str) or op not in OpKind.__members__:
            raise _Rejected(f"unknown op {op!r:.40}: expected ADD, UPDATE, DELETE or NOOP")
        kind = OpKind(op)
        match kind:
            case OpKind.NOOP:
                return None
            case OpKind.ADD:
                # An ADD stores the fact, which the guard checked when it was extracted; its
                # text, like its id, is ignored. Without the fact, the text is what is added.
                text = self.fact.text if self.fact is not None else self._text(raw, kind)
                return self._add(text)
            case OpKind.UPDATE:
                target = self._target(raw, kind)
                text = self._text(raw, kind)
                if self.fact is not None and text_key(text) == text_key(target.text):
                    return self._merge(raw, target, self.fact)
                text = self._same_subject(self._grounded(text, target), target)
                return self._change(kind, target, self._keeps_dates(text, target))
            case OpKind.DELETE:
                return self._change(kind, self._target(raw, kind), None)

    def _add(self, text: str) -> Operation:
        # The id of an ADD is ignored rather than rejected: the new memory gets a fresh id and an
        # ADD touches no stored memory, so a model that fills every field loses nothing.
        key = text_key(text)
        if key in self.stored:
            raise _Rejected(f"ADD repeats memory {self.stored[key]}")
        if key in self.added:
            raise _Rejected("ADD repeats an earlier ADD")
        restated = self._restated()
        if restated is not None:
            raise _Rejected(f"ADD says nothing that memory {restated} does not")
        self.added.add(key)
        return Operation(kind=OpKind.ADD, memory_id=None, text=text)

    def _restated(self) -> str | None:
        """The key of a shown memory of the fact's speaker that says all the fact says (its
        date of mention aside), if any: "I love green tea." said again a month later was
        added twice by the shipped Manager."""
        if self.fact is None:
            return None
        speaker = self.fact.speaker
        says = _says(self.fact.text, speaker)
        if self.fact.occurred_at is not None:
            says -= {format_date(self.fact.occurred_at)}
        for key, memory in self.by_key.items():
            if memory.speaker == speaker and says <= _says(memory.text, speaker):
                return key
        return None

    def _merge(self, raw: dict[str, object], target: MemoryView, fact: Fact) -> Operation:
        """An UPDATE that writes ``target`` out unchanged says the fact belongs to it but
        leaves the fact out (asked about "another dog, Scout", the bundled Manager copied the
        Buddy memory): the fact is appended, unless the guard finds it a restatement."""
        text = self._grounded(f"{target.text} {fact.text}", target)
        if len(text) > self.max_text_chars:
            raise _Rejected(f"UPDATE left {target.key} unchanged, which is too long to merge into")
        operation = self._change(OpKind.UPDATE, target, text)
        reason = f"UPDATE left {target.key} unchanged: the fact is merged into it"
        self.trimmed.append(RejectedOperation(raw=raw, reason=reason))
        return operation

    @staticmethod
    def _same_subject(text: str, target: MemoryView) -> str:
        """``text``, when it names someone or something ``target`` names (or ``target``
        names nothing): an UPDATE changes what a memory says about someone, never whom.
        The bundled Manager replaced "Jon lost his job as a banker ..." with Gina's lost job,
        losing Jon's; "Finn has a cat named Luna." -> "Luna died ..." keeps Luna."""
        named = names(target.text)
        if named and not named & names(text):
            listed = ", ".join(sorted(named))
            raise _Rejected(f"UPDATE text names none of what {target.key} is about ({listed})")
        return text

    @staticmethod
    def _keeps_dates(text: str, target: MemoryView) -> str:
        """``text``, when it keeps every date ``target`` gives for what happened (past the
        date it was mentioned on): what happened on a day stays true whatever happens after.
        On conv-30 the shipped Manager replaced "Jon lost his job as a banker ... on 19
        January 2023." with a later mention of it dated 11 May 2023, from which "When did
        Jon lose his job as a banker?" was answered."""
        lost = [date for date in event_dates(target.text) if date not in text]
        if lost:
            raise _Rejected(f"UPDATE text drops the date {target.key} gives ({lost[0]})")
        return text

    def _change(self, kind: OpKind, target: MemoryView, text: str | None) -> Operation:
        if target.key in self.touched:
            raise _Rejected(f"{target.key} already has an operation")
        if text is not None and text_key(text) == text_key(target.text):
            raise _Rejected(f"UPDATE leaves {target.key} unchanged")
        self.touched.add(target.key)
        return Operation(kind=kind, memory_id=target.id, text=text)

    def _target(self, raw: dict[str, object], kind: OpKind) -> MemoryView:
        key = raw.get("id")
        if not isinstance(key, str) or not key.strip():
            raise _Rejected(f"{kind} needs the id of a listed memory")
        if key not in self.by_key:
            listed = ", ".join(self.by_key) or "none"
            raise _Rejected(f"unknown memory id {key!r:.80}: only {listed} may be named")
        return self.by_key[key]

    def _text(self, raw: dict[str, object], kind: OpKind) -> str:
        text = raw.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _Rejected(f"{kind} needs a non-empty text")
        text = text.strip()
        if len(text) > self.max_text_chars:
            raise _Rejected(f"text has {len(text)} characters; the limit is {self.max_text_chars}")
        return text

    def _grounded(self, text: str, target: MemoryView) -> str:
        """An UPDATE's ``text`` with what the fact and ``target`` do not say cut (unchecked
        without the fact): a Manager text may merge them, nothing more."""
        if self.fact is None:
            return text
        checked = check(
            text, [self.fact.text, target.text], self.fact.speaker, self.fact.occurred_at
        )
        if checked.text is None:
            sentence, reason = checked.dropped[0]
            raise _Rejected(f"UPDATE text is not supported by the fact: {sentence!r:.80} {reason}")
        self.trimmed += [
            RejectedOperation(raw={"op": OpKind.UPDATE.value, "sentence": sentence}, reason=reason)
            for sentence, reason in checked.dropped
        ]
        return checked.text


def validate_operations(
    parsed: object,
    candidates: list[MemoryView],
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    fact: Fact | None = None,
) -> tuple[list[Operation], list[RejectedOperation]]:
    """The operations of a Manager output that are safe to apply, and the rest with reasons.

    Rejected: ids that are not keys of ``candidates`` (unknown keys, UUIDs, anything pasted
    from a turn), UPDATE/DELETE without an id, an UPDATE (or, without ``fact``, an ADD) with
    a blank or over-long text, a second operation on the same memory, an ADD repeating
    another ADD or a listed memory (with ``fact``: a memory of its speaker that says all the
    fact says), an UPDATE that leaves the text as it was, names none of the names its
    memory has (it would be about someone else) or drops a date its memory gives for what
    happened. With ``fact``, an ADD adds the fact (its
    text is ignored), an UPDATE that writes its memory out unchanged appends the fact to it
    (recorded among the rejections; rejected as unchanged when the fact only restates the
    memory), and an UPDATE's text is checked by ``app.memory.guard`` against the fact and the
    memory it changes: unsupported or repeated sentences are cut, each recorded among the
    rejections, and an UPDATE left with no text is rejected. An ADD's id, a DELETE's text and
    a NOOP are ignored. A wrongly shaped output is a single rejection."""
    items = _operation_items(parsed)
    if items is None:
        return [], [RejectedOperation(raw={"output": parsed}, reason=_shape_error(parsed))]
    validator = _Validator(candidates, max_text_chars, fact)
    operations: list[Operation] = []
    rejected: list[RejectedOperation] = []
    for item in items:
        if not isinstance(item, dict):
            rejected.append(RejectedOperation(raw={"item": item}, reason="not an object"))
            continue
        try:
            operation = validator.accept(item)
        except _Rejected as exc:
            rejected.append(RejectedOperation(raw=item, reason=exc.reason))
            continue
        if operation is not None:
            operations.append(operation)
    return operations, rejected + validator.trimmed


async def decide(
    llm: LLMBackend,
    fact: Fact,
    candidates: list[MemoryView],
    *,
    adapter: str | None = None,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
) -> Decision:
    """Ask the Manager what ``fact`` does to ``candidates``. Unusable output gives a Decision
    with ``error`` set and no operations; ``app.core.errors.Upstream`` propagates."""
    try:
        completion = await llm.complete(
            manager_messages(fact, candidates),
            json_schema=manager_schema(candidates),
            adapter=adapter,
            temperature=0.0,
            max_tokens=MANAGER_MAX_TOKENS,
        )
    except UnusableOutput as exc:
        return Decision([], [], completion=None, error=f"unusable model output: {exc.detail}")
    problem = malformed_reason(completion.parsed)
    if problem is not None:
        return Decision([], [], completion=completion, error=problem)
    operations, rejected = validate_operations(
        completion.parsed, candidates, max_text_chars, fact=fact
    )
    return Decision(operations, rejected, completion=completion, error=None)


def check_noop(
    decision: Decision, fact: Fact, nearest_similarity: float | None, min_similarity: float
) -> Decision:
    """A usable decision that changes nothing (a NOOP, or operations that were all rejected)
    claims the fact is already stored. When no shown memory is at least ``min_similarity``
    (cosine) close to the fact, the claim is false: the fact is added as it is, and the
    overruled claim is recorded among the rejections. ``min_similarity`` 0 trusts the
    model."""
    if decision.error is not None or decision.operations:
        return decision
    if min_similarity <= 0:
        return decision
    if nearest_similarity is not None and nearest_similarity >= min_similarity:
        return decision
    if nearest_similarity is None:
        closest = "no memory is stored"
    else:
        similarity = f"{nearest_similarity:.2f} < {min_similarity:.2f}"
        closest = f"the closest memory has similarity {similarity}"
    claim = "every operation was rejected" if decision.rejected else "NOOP"
    overruled = RejectedOperation(
        raw={"op": "NOOP"}, reason=f"{claim}, but {closest}: the fact is added as it is"
    )
    add = Operation(kind=OpKind.ADD, memory_id=None, text=fact.text)
    return replace(decision, operations=[add], rejected=[*decision.rejected, overruled])


def keep_fact(decision: Decision, fact: Fact) -> Decision:
    """A decision that only deletes says the fact makes memories untrue, and drops the fact
    itself ("moved to Seattle" deleting "lives in Boston" and storing nothing). The fact is
    added as well, and the addition recorded among the rejections, as an override."""
    kinds = {op.kind for op in decision.operations}
    if decision.error is not None or kinds != {OpKind.DELETE}:
        return decision
    add = Operation(kind=OpKind.ADD, memory_id=None, text=fact.text)
    note = RejectedOperation(
        raw={"op": "DELETE"}, reason="DELETE alone would lose the fact: it is added as well"
    )
    return replace(
        decision, operations=[*decision.operations, add], rejected=[*decision.rejected, note]
    )


def apply_to_bank(
    bank: list[MemoryView],
    operations: list[Operation],
    *,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    fact: Fact | None = None,
) -> list[MemoryView]:
    """The bank after ``operations``, in order; ``bank`` itself is left as it was.

    ADDs are appended with ``fact``'s speaker and date; an UPDATE changes only the text. The
    result is keyed m1..mN afresh so it can be shown to a model as it is. Operations naming a
    memory that is not in the bank are a caller bug and raise ValueError."""
    views = list(bank)
    for op in operations:
        match op.kind:
            case OpKind.ADD:
                views.append(
                    MemoryView(
                        key="",
                        id=new_id(),
                        text=_required_text(op),
                        speaker=fact.speaker if fact else None,
                        occurred_at=fact.occurred_at if fact else None,
                    )
                )
            case OpKind.UPDATE:
                at = _position(views, op)
                views[at] = replace(views[at], text=_required_text(op))
            case OpKind.DELETE:
                del views[_position(views, op)]
            case OpKind.NOOP:
                pass
    return rekey(views)


def _position(views: list[MemoryView], op: Operation) -> int:
    for i, view in enumerate(views):
        if view.id == op.memory_id:
            return i
    raise ValueError(f"{op.kind} names memory {op.memory_id}, which is not in the bank")


def _required_text(op: Operation) -> str:
    if op.text is None:
        raise ValueError(f"{op.kind} without a text")
    return op.text
