"""Plain values the Memory-R1 agents exchange with the rest of the service.

Models never see memory UUIDs: a set of memories shown to a model is keyed ``m1``..``mN`` and
the key is mapped back to the UUID only after validation, so a model cannot name a memory it
was not shown.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Fact:
    text: str
    speaker: str | None
    occurred_at: datetime | None


@dataclass(frozen=True)
class MemoryView:
    """One memory as shown to a model."""

    key: str  # "m1", "m2", ... within one shown set; never the UUID
    id: uuid.UUID
    text: str
    speaker: str | None
    occurred_at: datetime | None


class OpKind(StrEnum):
    ADD = "ADD"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    NOOP = "NOOP"


@dataclass(frozen=True)
class Operation:
    """A validated Memory Manager operation.

    ADD: ``memory_id`` is None and ``text`` is the new memory. UPDATE: both set (``text`` replaces
    the memory's text). DELETE: ``memory_id`` set, ``text`` None. NOOP is never materialised.
    """

    kind: OpKind
    memory_id: uuid.UUID | None
    text: str | None


@dataclass(frozen=True)
class RejectedOperation:
    raw: dict[str, Any]  # the operation as the model wrote it
    reason: str


def memory_key(position: int) -> str:
    """The key of the memory at 0-based ``position`` in a shown set."""
    return f"m{position + 1}"


def as_views(
    rows: Sequence[tuple[uuid.UUID, str, str | None, datetime | None]],
) -> list[MemoryView]:
    """``(id, text, speaker, occurred_at)`` rows, in the order given, keyed m1..mN."""
    return [
        MemoryView(key=memory_key(i), id=id_, text=text, speaker=speaker, occurred_at=at)
        for i, (id_, text, speaker, at) in enumerate(rows)
    ]


def rekey(views: Sequence[MemoryView]) -> list[MemoryView]:
    """The same memories keyed m1..mN in the order given, ready to be shown as one set."""
    return [replace(v, key=memory_key(i)) for i, v in enumerate(views)]


def text_key(text: str) -> str:
    """The comparison form of a memory text: case, spacing and final punctuation ignored, so
    "Andrew likes tea." and "andrew  likes tea" count as the same memory."""
    return " ".join(text.casefold().split()).rstrip(" .!?;,")
