"""Types shared by several domains' schemas."""

from datetime import UTC, datetime
from typing import Annotated

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
NonEmptyText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
AdapterChoice = Annotated[
    str,
    Field(
        pattern=r"^(active|base|[0-9a-fA-F-]{36})$",
        description="'active' (the agent's active adapter), 'base' (no adapter) or an adapter id",
    ),
]


def _as_utc(value: datetime) -> datetime:
    # A time without an offset is taken as UTC, so it reads back the way it is stored.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[
    datetime, AfterValidator(_as_utc), Field(description="ISO 8601; no offset means UTC.")
]
