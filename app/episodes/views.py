"""How pipeline values are stored in episode rows (the training code reads the same shapes)."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from app.memory.schemas import Fact, MemoryView


def fact_json(fact: Fact) -> dict[str, Any]:
    return {
        "text": fact.text,
        "speaker": fact.speaker,
        "occurred_at": fact.occurred_at.isoformat() if fact.occurred_at else None,
    }


def fact_from_json(value: Mapping[str, Any]) -> Fact:
    at = value.get("occurred_at")
    return Fact(
        str(value["text"]), value.get("speaker"), datetime.fromisoformat(at) if at else None
    )


def view_json(view: MemoryView) -> dict[str, Any]:
    return {
        "key": view.key,
        "id": str(view.id),
        "text": view.text,
        "speaker": view.speaker,
        "occurred_at": view.occurred_at.isoformat() if view.occurred_at else None,
    }
