"""Types shared by several domains' schemas."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import AfterValidator, Field, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]*$"
ID_HELP = "1-200 characters: letters, digits and _ . : @ -"

ExternalId = Annotated[
    str, Path(min_length=1, max_length=200, pattern=ID_PATTERN, description=ID_HELP)
]
ExternalIdField = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=ID_PATTERN),
    Field(description=ID_HELP),
]
# The largest value of a Postgres integer column: sequence numbers, offsets and counts in
# requests are bounded by it.
MAX_INT = 2**31 - 1


def _storable(value: str) -> str:
    # Postgres text and jsonb cannot hold NUL, and a lone UTF-16 surrogate is not Unicode.
    if "\x00" in value:
        raise ValueError("contains a NUL character (\\u0000), which cannot be stored: remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "contains an unpaired surrogate (\\ud800-\\udfff), which is not valid unicode: "
            "send the text as UTF-8"
        ) from None
    return value


def _storable_json(value: Any) -> Any:
    if isinstance(value, str):
        _storable(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable_json(key)
            _storable_json(item)
    elif isinstance(value, list):
        for item in value:
            _storable_json(item)
    return value


StorableText = Annotated[str, AfterValidator(_storable)]
NonEmptyText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1), AfterValidator(_storable)
]
StorableJson = Annotated[dict[str, Any], AfterValidator(_storable_json)]
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
AdapterChoice = Annotated[
    str,
    Field(
        pattern=rf"^(active|base|{_UUID})$",
        description="'active' (the agent's active adapter), 'base' (no adapter) or an adapter id",
    ),
]
# No Manager at all: every fact is stored as a new memory (how mem0 stores memories today).
ADD_ONLY = "add-only"
ManagerChoice = Annotated[
    str,
    Field(
        pattern=rf"^(active|base|{ADD_ONLY}|{_UUID})$",
        description="'active' (the Manager's active adapter), 'base' (no adapter), an adapter "
        f"id, or '{ADD_ONLY}': no Manager call, every fact is added (a comparison baseline)",
    ),
]


def _as_utc(value: datetime) -> datetime:
    # A time without an offset is taken as UTC, so it reads back the way it is stored.
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the years 1-9999 once converted to UTC") from None
    return value


UtcDatetime = Annotated[
    datetime, AfterValidator(_as_utc), Field(description="ISO 8601; no offset means UTC.")
]


def next_offset(offset: int, limit: int, returned: int) -> int | None:
    """The offset of the next page, or None when this page was the last (came back short)."""
    return offset + limit if returned == limit else None
