"""Creating and dropping throwaway databases on the test server."""

import psycopg


def drop_database(server_url: str, database_url: str) -> None:
    name = database_url.partition("?")[0].rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
