from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.core.db import current_revision, head_revision
from app.core.deps import RuntimeDep
from app.core.errors import Upstream

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """The database answers, its schema is at the latest migration and the model can serve
    (a model server such as vLLM answers 503 here while it loads its weights)."""
    head = head_revision()
    try:
        async with runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            current = await conn.run_sync(current_revision)
    except Exception as exc:  # any failure to reach the database means not ready
        return JSONResponse(
            {"status": "unavailable", "detail": f"database unreachable: {exc.__class__.__name__}"},
            status_code=503,
        )
    if current != head:
        return JSONResponse(
            {
                "status": "unavailable",
                "detail": f"schema at {current}, expected {head}: run `memory-r1 migrate`",
            },
            status_code=503,
        )
    try:
        await runtime.llm.ready()
    except Upstream as exc:
        return JSONResponse(
            {"status": "unavailable", "detail": f"model not ready: {exc.detail}"},
            status_code=503,
        )
    return JSONResponse({"status": "ready", "schema": current})


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
