"""How pipeline values are stored in episode rows (the training code reads the same shapes)."""

from typing import Any

from app.memory.schemas import Fact, MemoryView


def fact_json(fact: Fact) -> dict[str, Any]:
    return {
        "text": fact.text,
        "speaker": fact.speaker,
        "occurred_at": fact.occurred_at.isoformat() if fact.occurred_at else None,
    }


def view_json(view: MemoryView) -> dict[str, Any]:
    return {
        "key": view.key,
        "id": str(view.id),
        "text": view.text,
        "speaker": view.speaker,
        "occurred_at": view.occurred_at.isoformat() if view.occurred_at else None,
    }
