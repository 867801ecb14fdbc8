"""Authentication: bearer or X-API-Key, revocation takes effect at once."""

import httpx

from app.core.runtime import Runtime
from app.models import Scope
from app.tenants import service as tenants
from tests.api.helpers import assert_error, bearer
from tests.conftest import TenantKeys


class TestApiKeys:
    async def test_revoked_key_stops_working(
        self, client: httpx.AsyncClient, runtime: Runtime, tenant_a: TenantKeys
    ) -> None:
        async with runtime.sessions() as db:
            issued = await tenants.create_key(
                db, tenant_id=tenant_a.tenant_id, name="temp", scopes=[Scope.memory]
            )
            await db.commit()
        headers = bearer(issued.plaintext)
        r = await client.post("/users/alice/memories", json={"text": "t"}, headers=headers)
        assert r.status_code == 201, r.text

        async with runtime.sessions() as db:
            await tenants.revoke_key(db, issued.key_id)
            await db.commit()

        r = await client.get("/users/alice/memories", headers=headers)
        assert_error(r, 401, "unauthorized", "invalid or revoked")

    async def test_missing_key_says_how_to_send_one(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/users/alice/memories")
        assert_error(r, 401, "unauthorized", "Authorization: Bearer")

    async def test_scheme_is_case_insensitive(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        key = tenant_a.memory["Authorization"].removeprefix("Bearer ")
        r = await client.post(
            "/users/alice/memories", json={"text": "t"}, headers={"Authorization": f"bearer {key}"}
        )
        assert r.status_code == 201, r.text

    async def test_x_api_key_header(self, client: httpx.AsyncClient, tenant_a: TenantKeys) -> None:
        key = tenant_a.memory["Authorization"].removeprefix("Bearer ")
        r = await client.post(
            "/users/alice/memories", json={"text": "t"}, headers={"X-API-Key": key}
        )
        assert r.status_code == 201, r.text

    async def test_full_key_serves_memory_routes(
        self, client: httpx.AsyncClient, tenant_a: TenantKeys
    ) -> None:
        r = await client.post("/users/alice/memories", json={"text": "t"}, headers=tenant_a.admin)
        assert r.status_code == 201, r.text
