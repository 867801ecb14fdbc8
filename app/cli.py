"""`memory-r1`: serve, worker, migrate, keys, adapters, eval, mcp."""

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters import service as adapters
from app.core.config import Settings, get_settings
from app.core.db import (
    EmbeddedPostgres,
    create_engine,
    session_factory,
    transaction,
    upgrade_to_head,
)
from app.core.runtime import build_runtime
from app.models import Adapter, Agent, Scope
from app.supervise import Supervisor
from app.tenants import service as tenants

log = logging.getLogger("memory_r1")

T = TypeVar("T")

SHUTDOWN_GRACE_S = 3


@contextmanager
def database(settings: Settings) -> Iterator[Settings]:
    """Settings whose database_url is set: the configured server, or the embedded one, which
    runs for the duration of the block."""
    if settings.database_url:
        yield settings
        return
    embedded = EmbeddedPostgres(settings.data_dir / "pg")
    url = embedded.start()
    try:
        yield settings.model_copy(update={"database_url": url})
    finally:
        embedded.stop()


async def _with_db(database_url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with transaction(session_factory(engine)) as db:
            return await work(db)
    finally:
        await engine.dispose()


def _bootstrap(database_url: str) -> None:
    issued = asyncio.run(_with_db(database_url, tenants.bootstrap))
    if issued is not None:
        print(
            "\nCreated tenant",
            issued.tenant_id,
            "and its admin API key (shown only once):\n\n   ",
            issued.plaintext,
            "\n",
            flush=True,
        )


def _install_defaults(settings: Settings) -> None:
    assert settings.database_url
    installed = asyncio.run(
        _with_db(settings.database_url, lambda db: adapters.install_defaults(db, settings))
    )
    for adapter in installed:
        print(f"Serving the shipped {adapter.agent} adapter {adapter.name} by default", flush=True)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    with database(settings) as resolved:
        assert resolved.database_url
        upgrade_to_head(resolved.database_url)
        if resolved.bootstrap_admin:
            _bootstrap(resolved.database_url)
        if resolved.default_adapters:
            _install_defaults(resolved)
        env = {**os.environ, "MEMR1_DATABASE_URL": resolved.database_url}
        # Two solo workers: a long training run never holds up ingestion. Each is started
        # again when it exits, and stopped with everything it started when serve stops.
        workers = Supervisor(
            {
                f"{queue} worker": [sys.executable, "-m", "app.cli", "worker", "--queues", queue]
                for queue in ("ingest", "training")
            }
            if resolved.start_worker and not args.no_worker
            else {},
            env,
        )
        workers.start()
        # uvicorn handles SIGTERM itself and raises it again once the server has stopped; this
        # handler then turns it into SystemExit, so the block below stops the workers.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        os.environ["MEMR1_DATABASE_URL"] = resolved.database_url
        get_settings.cache_clear()
        try:
            uvicorn.run(
                "app.main:create_app",
                factory=True,
                host=args.host or resolved.host,
                port=args.port or resolved.port,
                workers=resolved.api_workers,
                log_level=resolved.log_level.lower(),
                # Requests still running at shutdown get this long, then are cut off.
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            )
        finally:
            workers.stop(grace_s=SHUTDOWN_GRACE_S)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.celery_app import INGEST_QUEUE, get_celery
    from workers.sweep import start_sweeper
    from workers.tasks.ingest import resume_queued

    queues = args.queues.split(",")
    name = args.name or f"{'+'.join(queues)}@{socket.gethostname()}"
    if settings.database_url:
        if INGEST_QUEUE in queues:
            stale_after = timedelta(seconds=settings.pipeline.stale_after_s)
            resumed = resume_queued(settings.database_url, stale_after, name)
            if resumed:
                log.info("re-sent %d queued ingestion jobs", resumed)
        start_sweeper(settings)
    argv = ["worker", "-Q", ",".join(queues), "-n", name, "--pool", args.pool]
    argv += ["-l", settings.log_level]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    get_celery().worker_main(argv)
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    with database(settings) as resolved:
        assert resolved.database_url
        upgrade_to_head(resolved.database_url)
        print("schema is at head")
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    with database(settings) as resolved:
        assert resolved.database_url
        url = resolved.database_url
        if args.action == "create":
            scopes = [Scope(s) for s in args.scopes.split(",")]
            tenant = uuid.UUID(args.tenant) if args.tenant else None

            async def create(db: AsyncSession) -> tenants.IssuedKey:
                return await tenants.create_key(db, tenant_id=tenant, name=args.name, scopes=scopes)

            issued = asyncio.run(_with_db(url, create))
            granted = ",".join(issued.scopes)
            print(f"tenant {issued.tenant_id}\nkey id {issued.key_id}\nscopes {granted}")
            print(f"API key (shown only once): {issued.plaintext}")
        elif args.action == "list":
            tenant = uuid.UUID(args.tenant) if args.tenant else None
            keys = asyncio.run(_with_db(url, lambda db: tenants.list_keys(db, tenant)))
            for key in keys:
                state = "revoked" if key.revoked_at else "live"
                print(
                    f"{key.id}  tenant={key.tenant_id}  {key.name!r}  mr1_{key.prefix}_…  "
                    f"scopes={','.join(key.scopes)}  {state}"
                )
        else:
            key_id = uuid.UUID(args.key_id)
            asyncio.run(_with_db(url, lambda db: tenants.revoke_key(db, key_id)))
            print(f"revoked {key_id}")
    return 0


def cmd_adapters(args: argparse.Namespace, settings: Settings) -> int:
    with database(settings) as resolved:
        assert resolved.database_url

        async def register(db: AsyncSession) -> Adapter:
            return await adapters.import_adapter(
                db,
                resolved,
                tenant_id=uuid.UUID(args.tenant),
                agent=args.agent,
                source=args.path,
                activate=args.activate,
            )

        adapter = asyncio.run(_with_db(resolved.database_url, register))
        print(f"adapter {adapter.id} ({adapter.agent}, {adapter.status}) at {adapter.path}")
    return 0


async def _eval_in_process(args: argparse.Namespace, settings: Settings) -> None:
    from app.main import create_app
    from training.eval.cli import run_from_args

    runtime = await build_runtime(settings, with_queue=True)
    try:
        if settings.default_adapters:
            async with transaction(runtime.sessions) as db:
                await adapters.install_defaults(db, settings)
        if not args.api_key:
            async with transaction(runtime.sessions) as db:
                issued = await tenants.create_key(
                    db, tenant_id=None, name="eval", scopes=[Scope.memory], tenant_name="eval"
                )
            args.api_key = issued.plaintext
            print(
                f"evaluating as new tenant {issued.tenant_id}; to reuse its memory banks in a "
                f"later run, pass --api-key with a key from "
                f"`memory-r1 keys create --tenant {issued.tenant_id}`",
                flush=True,
            )
        app = create_app(settings, runtime)
        app.state.runtime = runtime
        out = await run_from_args(args, app=app, llm=runtime.llm, embedder=runtime.embedder)
        print(f"results in {out}")
    finally:
        await runtime.close()


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    if args.server_url:
        from training.eval.cli import run_from_args

        out = asyncio.run(run_from_args(args))
        print(f"results in {out}")
        return 0
    with database(settings) as resolved:
        assert resolved.database_url
        upgrade_to_head(resolved.database_url)
        asyncio.run(_eval_in_process(args, resolved))
    return 0


def cmd_mcp(args: argparse.Namespace, settings: Settings) -> int:
    from memory_r1 import mcp_server

    mcp_server.run(
        args.user,
        base_url=args.url,
        api_key=args.api_key,
        transport=args.transport,
        host=args.host,
        port=args.port,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memory-r1", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API (embedded database and worker by default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--no-worker", action="store_true", help="do not start a Celery worker")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default="ingest", help="comma-separated: ingest,training")
    worker.add_argument("--pool", default="solo", choices=["solo", "prefork", "threads"])
    worker.add_argument(
        "--name",
        help="this worker's name, unique among running workers (default: QUEUES@HOST); jobs a "
        "worker of this name was running when it stopped are resumed at once when it starts",
    )
    worker.add_argument("--concurrency", type=int)
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to head")
    migrate.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="issue a key (for a new tenant unless --tenant)")
    create.add_argument("--tenant", help="tenant id; omitted: a new tenant")
    create.add_argument("--name", default="api key")
    create.add_argument("--scopes", default="memory", help="comma-separated: memory,admin")
    listing = keys_sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    keys.set_defaults(func=cmd_keys)

    adapter_cmd = sub.add_parser("adapters", help="manage LoRA adapters")
    adapter_sub = adapter_cmd.add_subparsers(dest="action", required=True)
    import_ = adapter_sub.add_parser(
        "import", help="register an adapter trained elsewhere (copied into the adapters dir)"
    )
    import_.add_argument("path", type=Path, help="PEFT adapter directory")
    import_.add_argument("--tenant", required=True, help="tenant id")
    import_.add_argument("--agent", required=True, choices=[a.value for a in Agent])
    import_.add_argument(
        "--activate", action="store_true", help="make it the agent's active adapter"
    )
    adapter_cmd.set_defaults(func=cmd_adapters)

    mcp = sub.add_parser(
        "mcp", help="an MCP server giving an agent one user's memory (stdio or streamable HTTP)"
    )
    mcp.add_argument("--user", required=True, help="the user id every tool reads and writes")
    mcp.add_argument("--url", help="the service's URL (default: $MEMR1_URL or :8080 locally)")
    mcp.add_argument("--api-key", help="a memory-scope key (default: $MEMR1_API_KEY)")
    mcp.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    mcp.add_argument("--host", default="127.0.0.1", help="--transport http: address to bind")
    mcp.add_argument("--port", type=int, default=8765, help="--transport http: port (at /mcp)")
    mcp.set_defaults(func=cmd_mcp)

    from training.eval.cli import add_arguments

    evaluate = sub.add_parser(
        "eval", help="LoCoMo-format evaluation: F1, BLEU-1, judge; report and chart"
    )
    add_arguments(evaluate)
    evaluate.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
