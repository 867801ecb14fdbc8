"""Fixtures shared by the API tests."""

import pytest

from app.core.runtime import Runtime
from tests.api.helpers import bearer, revoked_key_headers
from tests.conftest import TenantKeys


@pytest.fixture(params=["missing", "not-bearer", "unknown", "revoked"])
async def bad_auth(
    request: pytest.FixtureRequest, runtime: Runtime, tenant_a: TenantKeys
) -> dict[str, str]:
    """Every way a request can fail to authenticate; each must give 401."""
    match request.param:
        case "missing":
            return {}
        case "not-bearer":
            return {"Authorization": "Basic dXNlcjpwYXNz"}
        case "unknown":
            return bearer("mr1_00000000_" + "x" * 43)
        case _:
            return await revoked_key_headers(runtime, tenant_a.tenant_id)
