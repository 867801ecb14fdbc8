"""Alembic environment. The URL comes from the caller (``memory-r1 migrate`` and the test
fixtures set ``sqlalchemy.url``) or, on the command line, from the settings."""

from alembic import context
from sqlalchemy import create_engine, pool

from app.core.db import sync_url
from app.models import Base

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from app.core.config import get_settings

    database_url = get_settings().database_url
    if not database_url:
        raise SystemExit("Set MEMR1_DATABASE_URL, or run `memory-r1 migrate` for the embedded one.")
    return sync_url(database_url)


def run_migrations() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
