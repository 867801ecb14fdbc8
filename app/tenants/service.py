"""Tenants and their API keys."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Forbidden, NotFound, Unauthorized
from app.core.security import Principal, generate_key, hash_key
from app.models import ApiKey, Scope
from app.tenants import repository


@dataclass(frozen=True)
class IssuedKey:
    tenant_id: uuid.UUID
    key_id: uuid.UUID
    plaintext: str  # shown once, never stored
    scopes: list[str]


async def create_key(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID | None,
    name: str,
    scopes: Sequence[Scope],
    tenant_name: str = "default",
) -> IssuedKey:
    """Issue a key for an existing tenant, or for a new one when tenant_id is None."""
    if tenant_id is None:
        tenant_id = (await repository.add_tenant(session, tenant_name)).id
    elif await repository.get_tenant(session, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id} does not exist")
    new = generate_key()
    key = await repository.add_key(
        session, tenant_id, name, new.prefix, new.key_hash, [s.value for s in scopes]
    )
    return IssuedKey(tenant_id, key.id, new.plaintext, list(key.scopes))


async def bootstrap(session: AsyncSession) -> IssuedKey | None:
    """On an empty database: one tenant and one admin key (printed once by the caller)."""
    await repository.lock_bootstrap(session)
    if await repository.count_tenants(session):
        return None
    return await create_key(
        session, tenant_id=None, name="bootstrap admin", scopes=[Scope.admin, Scope.memory]
    )


async def list_keys(session: AsyncSession, tenant_id: uuid.UUID | None) -> Sequence[ApiKey]:
    return await repository.list_keys(session, tenant_id)


async def revoke_key(session: AsyncSession, key_id: uuid.UUID) -> None:
    if not await repository.revoke_key(session, key_id):
        raise NotFound(f"no live API key with id {key_id}")


async def authenticate(session: AsyncSession, plaintext: str | None, scope: Scope) -> Principal:
    if not plaintext:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    key = await repository.find_live_key(session, hash_key(plaintext))
    if key is None:
        raise Unauthorized("invalid or revoked API key")
    scopes = frozenset(Scope(s) for s in key.scopes)
    if scope not in scopes:
        raise Forbidden(f"this API key lacks the '{scope}' scope")
    return Principal(tenant_id=key.tenant_id, key_id=key.id, scopes=scopes)
