"""Schemathesis over every route of the real app, served by uvicorn on localhost with the real
database and embedder and a scripted LLM (the real one would take minutes per case): whatever
the schemas let a client send, the answer is never a server error."""

from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from app.core.config import Settings
from app.main import create_app
from tests.fixtures.served import Served, served_app

EXAMPLES_PER_ROUTE = 40


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[Served]:
    with served_app(settings) as served:
        yield served


# The OpenAPI document needs no runtime: build it once at collection, one test per route.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(database_url="postgresql://")).openapi()
)


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_ROUTE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_server_errors(case: Any, served: Served) -> None:
    case.call_and_validate(
        base_url=served.base_url,
        headers={"Authorization": f"Bearer {served.key}"},
        checks=[not_a_server_error],
        timeout=30,
    )
