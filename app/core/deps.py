"""FastAPI dependencies: the request transaction, the runtime, and authentication."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import transaction
from app.core.runtime import Runtime
from app.core.security import Principal
from app.models import Scope
from app.tenants import service as tenants


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_db(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with transaction(runtime.sessions) as session:
        yield session


DbSession = Annotated[AsyncSession, Depends(get_db)]


def _bearer(
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> str | None:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return x_api_key


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    async def dependency(
        runtime: RuntimeDep, key: Annotated[str | None, Depends(_bearer)]
    ) -> Principal:
        # Authentication gets its own short transaction so that endpoints which manage
        # several transactions themselves (turn ingestion) are authenticated the same way.
        async with transaction(runtime.sessions) as session:
            return await tenants.authenticate(session, key, scope)

    return dependency


MemoryPrincipal = Annotated[Principal, Depends(require(Scope.memory))]
AdminPrincipal = Annotated[Principal, Depends(require(Scope.admin))]
