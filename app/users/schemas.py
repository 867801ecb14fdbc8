from datetime import datetime

from pydantic import BaseModel, Field


class UserRead(BaseModel):
    user_id: str
    created_at: datetime
    memory_count: int = Field(description="Live (not deleted) memories in the user's bank.")


class UserPage(BaseModel):
    items: list[UserRead]
    next_offset: int | None = Field(None, description="Pass as ?offset= for the next page.")
