"""Retrieval at 1M memories: latency and recall of the service's exact per-user top-k search,
and the latency of embedding a question with the bundled MiniLM.

Loads 1,000 users x 1,000 memories plus one heavy user with 100,000 (random unit vectors,
rows of all users interleaved) into a dedicated embedded Postgres whose schema comes from the
migrations, then times ``app.memories.repository.search`` through an AsyncSession and checks
its results against brute force in numpy.

Two figures per kind of user. Cold: a user's first search with nothing of theirs cached, as
after a while without requests (before each one Postgres restarts, emptying its buffers, and
the kernel drops its page cache; this needs root, and is left out with a note otherwise).
Warm: a user whose rows were just read (the brute-force pass reads them right before), as in
a conversation's second question. The latency targets are for warm searches; cold ones are
reported beside them.

    python -m bench.retrieval                 # load (tens of minutes on 2 cores), then measure
    python -m bench.retrieval --reuse         # measure again on the loaded dataset
"""

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import defer
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script (make bench-retrieval)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.db import (  # noqa: E402
    create_engine,
    head_revision,
    session_factory,
    upgrade_to_head,
)
from app.memories import repository  # noqa: E402
from app.memories import service as memories_service  # noqa: E402
from app.models import EMBEDDING_DIM, Memory  # noqa: E402
from bench.common import (  # noqa: E402
    OUT_DIR,
    Target,
    embedded_database,
    print_targets,
    recreate_database,
    summarize_ms,
    write_json,
)

DROP_CACHES = "/proc/sys/vm/drop_caches"
HNSW_INDEX = "ix_memories_embedding_hnsw"
USER_INDEX = "ix_memories_tenant_user_live"
HEAVY_USER = "heavy-user"
TOP_K = 60
CHUNK = 20_000

TOPICS = [
    "adopted a dog named Buddy",
    "started learning the violin",
    "moved to Lisbon",
    "is allergic to peanuts",
    "ran a half marathon",
    "works as a nurse",
    "painted a sunrise",
    "visited the LGBTQ support group",
    "bought a used bicycle",
    "prefers green tea to coffee",
    "is reading a book about Roman history",
    "volunteers at the animal shelter",
    "plans a camping trip with the kids",
    "changed jobs to a startup",
    "planted tomatoes",
]
PLACES = ["at home", "in the park", "at work", "with friends", "on holiday", "after school"]
QUESTIONS = [
    "What is the name of my dog?",
    "When did I move to Lisbon?",
    "What instrument am I learning?",
    "Where does Caroline work?",
    "What did Melanie paint last year?",
    "Am I allergic to anything?",
    "How far did I run in May?",
    "Which book am I reading?",
    "What do I drink in the morning?",
    "When is the camping trip?",
    "Who did I meet at the support group?",
    "What did I plant?",
]


@dataclass(frozen=True)
class Spec:
    users: int
    per_user: int
    heavy: int
    tenants: int
    seed: int

    @property
    def total(self) -> int:
        return self.users * self.per_user + self.heavy


@dataclass(frozen=True)
class BenchUser:
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    external_id: str


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pgdata", type=Path, default=Path("/tmp/memr1-bench-pg"))
    parser.add_argument("--database", default="memr1_bench")
    parser.add_argument("--reuse", action="store_true", help="reuse a loaded dataset if complete")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=1000)
    parser.add_argument("--heavy", type=int, default=100_000, help="memories of the heavy user")
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200, help="normal-user queries")
    parser.add_argument("--heavy-queries", type=int, default=50)
    parser.add_argument("--embed-queries", type=int, default=200)
    parser.add_argument(
        "--cold-queries", type=int, default=30, help="normal users searched cold (the heavy: 5)"
    )
    parser.add_argument("--maintenance-work-mem", default="4GB", help="for the HNSW rebuild")
    parser.add_argument(
        "--alternatives",
        choices=["auto", "always", "never"],
        default="auto",
        help="measure alternative query plans for the heavy user (auto: when its target fails)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------- loading


def dataset_problem(url: str, spec: Spec) -> str | None:
    """Why the database does not hold a complete dataset of this spec (None: it does)."""
    with psycopg.connect(url) as conn:
        has_version = conn.execute("SELECT to_regclass('alembic_version')").fetchone()
        if has_version is None or has_version[0] is None:
            return "no schema"
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        if version is None or version[0] != head_revision():
            return f"schema at {version}, not {head_revision()}"
        valid = conn.execute(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
            (HNSW_INDEX,),
        ).fetchone()
        if valid is None or not valid[0]:
            return f"{HNSW_INDEX} missing or invalid"
        user_index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_memories_tenant_user_live'"
        ).fetchone()
        if user_index is None or "INCLUDE (id, speaker, embedding)" not in user_index[0]:
            return "ix_memories_tenant_user_live is not the migration's covering index"
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM tenants), (SELECT count(*) FROM users),"
            " (SELECT count(*) FROM memories WHERE deleted_at IS NULL)"
        ).fetchone()
        expected = (spec.tenants, spec.users + 1, spec.total)
        if counts != expected:
            return f"(tenants, users, memories) = {counts}, expected {expected}"
    return None


def make_users(spec: Spec) -> tuple[list[uuid.UUID], list[BenchUser]]:
    tenants = [uuid.uuid4() for _ in range(spec.tenants)]
    users = [
        BenchUser(tenants[i % spec.tenants], uuid.uuid4(), f"user-{i:04d}")
        for i in range(spec.users)
    ]
    users.append(BenchUser(tenants[0], uuid.uuid4(), HEAVY_USER))
    return tenants, users


def memory_rows(
    spec: Spec, users: list[BenchUser], rng: np.random.Generator
) -> Any:  # an iterator of row chunks
    """Rows in insertion order: every user's memories interleaved at random over the load."""
    counts = np.full(len(users), spec.per_user)
    counts[-1] = spec.heavy
    owners = rng.permutation(np.repeat(np.arange(len(users)), counts))
    pairs = [("user", "assistant"), ("Caroline", "Melanie")]
    speakers = [pairs[i % 2] for i in range(len(users))]
    start = datetime(2023, 1, 1, tzinfo=UTC)
    text_rng = random.Random(spec.seed)
    for offset in range(0, spec.total, CHUNK):
        chunk = owners[offset : offset + CHUNK]
        vectors = rng.standard_normal((chunk.size, EMBEDDING_DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        days = rng.integers(0, 700, chunk.size)
        rows: list[tuple[Any, ...]] = []
        for owner, vector, day in zip(chunk.tolist(), vectors, days.tolist(), strict=True):
            user = users[owner]
            speaker = speakers[owner][0 if text_rng.random() < 0.6 else 1]
            text = (
                f"{speaker} {text_rng.choice(TOPICS)} {text_rng.choice(PLACES)} "
                f"(note {text_rng.randrange(10**6)})"
            )
            rows.append(
                (
                    uuid.uuid4(),
                    user.tenant_id,
                    user.user_id,
                    speaker,
                    text,
                    vector,
                    start + timedelta(days=day),
                    [],
                    1,
                )
            )
        yield rows


def index_progress(url: str, total: int, done: threading.Event) -> None:
    """Show CREATE INDEX progress (pg_stat_progress_create_index) until ``done``."""
    with (
        psycopg.connect(url, autocommit=True) as conn,
        tqdm(total=total, desc="HNSW build", unit="row", smoothing=0.05) as bar,
    ):
        while not done.wait(2.0):
            row = conn.execute(
                "SELECT phase, tuples_done FROM pg_stat_progress_create_index"
                " WHERE relid = 'memories'::regclass"
            ).fetchone()
            if row is not None:
                bar.set_postfix_str(row[0])
                bar.update(max(0, int(row[1] or 0) - bar.n))


def load(url: str, spec: Spec, maintenance_work_mem: str) -> dict[str, Any]:
    upgrade_to_head(url)
    rng = np.random.default_rng(spec.seed)
    tenants, users = make_users(spec)
    timings: dict[str, Any] = {}
    with psycopg.connect(url) as conn:
        register_vector(conn)
        with conn.cursor().copy("COPY tenants (id, name) FROM STDIN") as copy:
            for i, tenant in enumerate(tenants):
                copy.write_row((tenant, f"bench tenant {i}"))
        with conn.cursor().copy("COPY users (id, tenant_id, external_id) FROM STDIN") as copy:
            for user in users:
                copy.write_row((user.user_id, user.tenant_id, user.external_id))
        row = conn.execute("SELECT pg_get_indexdef(%s::regclass)", (HNSW_INDEX,)).fetchone()
        assert row is not None
        hnsw_definition: str = row[0]
        conn.execute(f"DROP INDEX {HNSW_INDEX}")
        conn.commit()
        print(f"dropped {HNSW_INDEX} for the bulk load; it is recreated afterwards as:")
        print(f"  {hnsw_definition}")

        started = time.perf_counter()
        columns = "id, tenant_id, user_id, speaker, text, embedding, occurred_at, source_turn_ids"
        columns += ", version"
        types = ["uuid", "uuid", "uuid", "text", "text", "vector", "timestamptz", "uuid[]", "int4"]
        with (
            tqdm(total=spec.total, desc="COPY memories", unit="row", smoothing=0.05) as bar,
            conn.cursor().copy(f"COPY memories ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(types)
            for rows in memory_rows(spec, users, rng):
                for values in rows:
                    copy.write_row(values)
                bar.update(len(rows))
        conn.commit()
        timings["copy_s"] = round(time.perf_counter() - started, 1)

        started = time.perf_counter()
        conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
        conn.execute("SET max_parallel_maintenance_workers = 2")
        done = threading.Event()
        watcher = threading.Thread(target=index_progress, args=(url, spec.total, done))
        watcher.start()
        try:
            conn.execute(hnsw_definition)
            conn.commit()
        finally:
            done.set()
            watcher.join()
        timings["hnsw_build_s"] = round(time.perf_counter() - started, 1)
        timings["hnsw_definition"] = hnsw_definition
        timings["maintenance_work_mem"] = maintenance_work_mem

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    timings["vacuum_analyze_s"] = round(time.perf_counter() - started, 1)
    print(f"loaded: {timings}")
    return timings


# ---------------------------------------------------------------------------------- measuring


def bench_users(url: str) -> tuple[list[BenchUser], BenchUser]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tenant_id, id, external_id FROM users ORDER BY external_id")
        users = [BenchUser(*row) for row in rows]
    heavy = next(u for u in users if u.external_id == HEAVY_USER)
    return [u for u in users if u is not heavy], heavy


@dataclass
class Bank:
    """One user's live memories, fetched once for brute force."""

    ids: list[uuid.UUID]
    vectors: np.ndarray

    def exact_top(self, query: np.ndarray, k: int) -> list[uuid.UUID]:
        # float64 cosine distance, ties broken by id as the service's ORDER BY does
        distance = 1.0 - (self.vectors @ query.astype(np.float64))
        order = sorted(range(len(self.ids)), key=lambda i: (distance[i], self.ids[i]))
        return [self.ids[i] for i in order[:k]]


def fetch_banks(url: str, users: Sequence[BenchUser]) -> dict[uuid.UUID, Bank]:
    banks: dict[uuid.UUID, Bank] = {}
    with psycopg.connect(url) as conn:
        register_vector(conn)
        for user in tqdm(users, desc="brute-force banks", unit="user", leave=False):
            with conn.cursor(binary=True) as cur:
                cur.execute(
                    "SELECT id, embedding FROM memories"
                    " WHERE tenant_id = %s AND user_id = %s AND deleted_at IS NULL",
                    (user.tenant_id, user.user_id),
                )
                rows = cur.fetchall()
            vectors = np.stack([v.to_numpy() for _, v in rows]).astype(np.float64)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            banks[user.user_id] = Bank([r[0] for r in rows], vectors)
    return banks


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, EMBEDDING_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@dataclass
class SearchRun:
    latencies_s: list[float]
    recalls: list[float]
    explain_ms: list[float]
    plan: str

    def summary(self) -> dict[str, Any]:
        return {
            "latency": summarize_ms(self.latencies_s),
            "recall_at_60_mean": round(float(np.mean(self.recalls)), 6) if self.recalls else None,
            "recall_at_60_min": round(float(np.min(self.recalls)), 6) if self.recalls else None,
            # the same statement again right after, so with that user's pages just read
            "server_execution_repeat": summarize_ms([ms / 1000 for ms in self.explain_ms]),
        }


class StatementSpy:
    """Remembers the last retrieval statement the engine sent, to EXPLAIN it verbatim."""

    def __init__(self) -> None:
        self.statement = ""
        self.parameters: Any = None

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "<=>" in statement:
            self.statement, self.parameters = statement, parameters


async def run_searches(
    url: str,
    workload: Sequence[tuple[BenchUser, np.ndarray]],
    banks: dict[uuid.UUID, Bank],
    *,
    warmup: Sequence[tuple[BenchUser, np.ndarray]],
    explain_every: int,
    deadline_s: float,
    label: str,
) -> SearchRun:
    """Time ``repository.search`` (top-60) per query, each in its own session as a request
    would, check recall against brute force, and EXPLAIN ANALYZE some of the statements."""
    engine = create_engine(url, pool_size=2)
    spy = StatementSpy()
    event.listen(engine.sync_engine, "before_cursor_execute", spy)
    sessions = session_factory(engine)
    run = SearchRun([], [], [], "")
    try:
        for user, query in warmup:
            async with sessions() as db:
                await repository.search(db, user.tenant_id, user.user_id, query.tolist(), TOP_K)
        stop_at = time.monotonic() + deadline_s
        for n, (user, query) in enumerate(tqdm(workload, desc=label, unit="query", leave=False)):
            if time.monotonic() > stop_at:
                print(f"{label}: stopped after {n} queries ({deadline_s:.0f} s budget)")
                break
            embedding = query.tolist()
            async with sessions() as db:
                started = time.perf_counter()
                hits = await repository.search(db, user.tenant_id, user.user_id, embedding, TOP_K)
                run.latencies_s.append(time.perf_counter() - started)
            bank = banks[user.user_id]
            exact = set(bank.exact_top(query, TOP_K))
            run.recalls.append(len(exact & {m.id for m, _ in hits}) / len(exact))
            if n % explain_every == 0:
                plan = await explain(engine, spy)
                run.explain_ms.append(execution_ms(plan))
                run.plan = run.plan or shorten_vectors(plan)
    finally:
        await engine.dispose()
    return run


class Caches:
    """Empties what a search would find cached: Postgres's shared buffers (by a restart) and
    the kernel's page cache (root only)."""

    def __init__(self, pgdata: Path, database: str) -> None:
        self.pgdata, self.database = pgdata, database
        self.server, self.url = embedded_database(pgdata, database)
        self.problem = None if os.access(DROP_CACHES, os.W_OK) else f"{DROP_CACHES} not writable"

    def empty(self) -> str:
        """Restart Postgres with nothing cached; the URL to reach it."""
        self.server.stop()
        subprocess.run(["sync"], check=True)
        Path(DROP_CACHES).write_text("3\n")
        self.server, self.url = embedded_database(self.pgdata, self.database)
        return self.url


async def cold_searches(
    caches: Caches, workload: Sequence[tuple[BenchUser, np.ndarray]], opener: BenchUser
) -> list[tuple[float, list[uuid.UUID]]]:
    """Each search of ``workload`` right after emptying every cache; one search of ``opener``
    first, so connecting and Postgres's catalog lookups are not counted. Latency and the ids
    found, per search."""
    found = []
    for user, query in tqdm(workload, desc="cold searches", unit="query", leave=False):
        engine = create_engine(caches.empty(), pool_size=1)
        sessions = session_factory(engine)
        try:
            async with sessions() as db:
                first = opener.tenant_id, opener.user_id, query.tolist(), 1
                await repository.search(db, *first)
                started = time.perf_counter()
                hits = await repository.search(
                    db, user.tenant_id, user.user_id, query.tolist(), TOP_K
                )
                found.append((time.perf_counter() - started, [m.id for m, _ in hits]))
        finally:
            await engine.dispose()
    return found


def cold_summary(
    found: Sequence[tuple[float, list[uuid.UUID]]],
    workload: Sequence[tuple[BenchUser, np.ndarray]],
    banks: dict[uuid.UUID, Bank],
) -> dict[str, Any]:
    recalls = [
        len(set(banks[user.user_id].exact_top(query, TOP_K)) & set(ids)) / TOP_K
        for (_, ids), (user, query) in zip(found, workload, strict=True)
    ]
    return {
        "latency": summarize_ms([seconds for seconds, _ in found]),
        "recall_at_60_min": round(min(recalls), 6) if recalls else None,
    }


async def explain(engine: AsyncEngine, spy: StatementSpy) -> str:
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, BUFFERS, SETTINGS) {spy.statement}", tuple(spy.parameters)
        )
        plan = "\n".join(row[0] for row in result.all())
        await conn.rollback()
    return plan


def shorten_vectors(plan: str) -> str:
    return re.sub(r"'\[[^\]]*\]'::vector", "'[...]'::vector", plan)


def execution_ms(plan: str) -> float:
    line = next(x for x in plan.splitlines() if x.strip().startswith("Execution Time:"))
    return float(line.split(":")[1].split()[0])


async def time_ask_retrieval(
    url: str, workload: Sequence[tuple[BenchUser, np.ndarray]], deadline_s: float
) -> list[float]:
    """The /ask path: memories.service.retrieve (speakers, then top-30 per speaker)."""
    engine = create_engine(url, pool_size=2)
    sessions = session_factory(engine)
    latencies: list[float] = []
    stop_at = time.monotonic() + deadline_s
    try:
        for user, query in workload:
            if time.monotonic() > stop_at:
                break
            async with sessions() as db:
                started = time.perf_counter()
                await memories_service.retrieve(
                    db, user.tenant_id, user.user_id, query.tolist(), TOP_K
                )
                latencies.append(time.perf_counter() - started)
    finally:
        await engine.dispose()
    return latencies


async def time_embeddings(n: int, deadline_s: float) -> dict[str, Any]:
    """The service's InProcessEmbedder on single short questions, after a warm-up; then, as an
    alternative, the same with torch limited to one thread."""
    import torch

    from app.embeddings import InProcessEmbedder

    rng = random.Random(0)
    names = ["Caroline", "Melanie", "my sister", "Jon", "Gina", "my boss"]
    questions = [q.replace("Caroline", rng.choice(names)) for q in QUESTIONS * (n // 12 + 1)][:n]
    out: dict[str, Any] = {}
    for label, threads in (("service", None), ("torch_1_thread", 1)):
        if threads is not None:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        embedder = InProcessEmbedder()
        load_s = time.perf_counter() - started
        try:
            for question in QUESTIONS[:10]:
                await embedder.embed([question])
            latencies: list[float] = []
            stop_at = time.monotonic() + deadline_s
            for question in questions:
                if time.monotonic() > stop_at:
                    break
                started = time.perf_counter()
                [vector] = await embedder.embed([question])
                latencies.append(time.perf_counter() - started)
            assert len(vector) == EMBEDDING_DIM
        finally:
            await embedder.close()
        result = {"torch_threads": torch.get_num_threads(), "latency": summarize_ms(latencies)}
        if label == "service":
            out |= result | {"model_load_s": round(load_s, 2)}
        else:
            out[label] = result
    return out


# ------------------------------------------------------------------------------ alternatives
#
# Measured apart from the service's query, on the heavy user (and normal users where it
# matters). Everything an alternative creates lives in one transaction that is rolled back, so
# the bench database keeps exactly the migrated schema.

SERVICE_SQL = """
SELECT m.*, (m.embedding <=> %(q)s::vector) + 0 AS distance FROM {table} m
WHERE m.tenant_id = %(t)s AND m.user_id = %(u)s AND m.deleted_at IS NULL
ORDER BY distance, m.id LIMIT 60"""
TWO_STEP_SQL = """
WITH top AS (
  SELECT id, (embedding <=> %(q)s::vector) + 0 AS distance FROM memories
  WHERE tenant_id = %(t)s AND user_id = %(u)s AND deleted_at IS NULL
  ORDER BY distance, id LIMIT 60)
SELECT m.id, m.tenant_id, m.user_id, m.speaker, m.text, m.occurred_at, m.source_turn_ids,
       m.version, m.created_at, m.updated_at, m.deleted_at, top.distance
FROM top JOIN memories m ON m.id = top.id ORDER BY top.distance, m.id"""
HNSW_SQL = """
SELECT id, embedding <=> %(q)s::vector AS distance FROM memories
WHERE tenant_id = %(t)s AND user_id = %(u)s AND deleted_at IS NULL
ORDER BY embedding <=> %(q)s::vector LIMIT 60"""
FORCE_PARALLEL = (
    "SET LOCAL parallel_setup_cost = 0",
    "SET LOCAL parallel_tuple_cost = 0",
    "SET LOCAL min_parallel_table_scan_size = 0",
    "SET LOCAL min_parallel_index_scan_size = 0",
)
COVERING_INDEX = (
    "CREATE INDEX bench_memories_user_covering ON memories (tenant_id, user_id)"
    " INCLUDE (id, embedding) WHERE deleted_at IS NULL"
)


@dataclass(frozen=True)
class Variant:
    name: str
    sql: str
    settings: tuple[str, ...] = ()
    table: str = "memories"


def vector_text(query: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.8g}" for x in query.tolist()) + "]"


def run_variant(
    conn: psycopg.Connection[Any],
    variant: Variant,
    workload: Sequence[tuple[BenchUser, np.ndarray]],
    banks: dict[uuid.UUID, Bank],
) -> dict[str, Any]:
    """Client-timed executions (fetching every row), recall, and EXPLAIN ANALYZE of a few."""
    sql = variant.sql.format(table=variant.table)
    latencies: list[float] = []
    recalls: list[float] = []
    server_ms: list[float] = []
    plan = ""
    conn.execute("SAVEPOINT variant")
    for setting in ("SET LOCAL track_io_timing = on", *variant.settings):
        conn.execute(setting)
    for n, (user, query) in enumerate(workload):
        params = {"q": vector_text(query), "t": user.tenant_id, "u": user.user_id}
        started = time.perf_counter()
        rows = conn.execute(sql, params).fetchall()  # type: ignore[call-overload]
        latencies.append(time.perf_counter() - started)
        exact = set(banks[user.user_id].exact_top(query, TOP_K))
        recalls.append(len(exact & {row[0] for row in rows}) / len(exact))
        if n % 4 == 0:
            explained = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)  # type: ignore[call-overload]
            text = "\n".join(row[0] for row in explained)
            server_ms.append(execution_ms(text))
            plan = plan or shorten_vectors(text)
    conn.execute("ROLLBACK TO SAVEPOINT variant")
    return {
        "latency": summarize_ms(latencies),
        "server_execution_repeat": summarize_ms([ms / 1000 for ms in server_ms]),
        "recall_at_60_min": round(min(recalls), 4) if recalls else None,
        "plan": plan,
    }


def alternatives(
    url: str,
    heavy: BenchUser,
    normal: Sequence[BenchUser],
    banks: dict[uuid.UUID, Bank],
    rng: np.random.Generator,
    per_variant: int,
) -> dict[str, Any]:
    heavy_load = [(heavy, q) for q in unit_vectors(rng, per_variant)]
    normal_load = list(zip(normal, unit_vectors(rng, len(normal)), strict=True))
    baseline = Variant("service query (raw SQL)", SERVICE_SQL)
    two_step = Variant("two-step: top-60 ids on (id, distance), then 60 rows", TWO_STEP_SQL)
    parallel = "forced parallel plan (2 workers)"
    before_index = [
        baseline,
        Variant("service query, work_mem 64MB", SERVICE_SQL, ("SET LOCAL work_mem = '64MB'",)),
        Variant(f"service query, {parallel}", SERVICE_SQL, FORCE_PARALLEL),
        two_step,
        Variant(f"two-step, {parallel}", TWO_STEP_SQL, FORCE_PARALLEL),
        Variant(
            "HNSW index, hnsw.ef_search 1000 (approximate)",
            HNSW_SQL,
            ("SET LOCAL hnsw.ef_search = 1000",),
        ),
    ]
    out: dict[str, Any] = {"heavy": {}, "normal": {}, "notes": {}}
    with psycopg.connect(url) as conn:
        register_vector(conn)
        for variant in tqdm(before_index, desc="alternatives", leave=False):
            out["heavy"][variant.name] = run_variant(conn, variant, heavy_load, banks)
        for variant in (baseline, two_step):
            out["normal"][variant.name] = run_variant(conn, variant, normal_load, banks)

        # the heavy user's rows contiguous, as CLUSTER on the per-user index would lay them out
        started = time.perf_counter()
        conn.execute(
            "CREATE TABLE bench_clustered AS SELECT * FROM memories"
            " WHERE tenant_id = %s AND user_id = %s ORDER BY id",
            (heavy.tenant_id, heavy.user_id),
        )
        conn.execute(
            "CREATE INDEX ON bench_clustered (tenant_id, user_id) WHERE deleted_at IS NULL"
        )
        conn.execute("ANALYZE bench_clustered")
        out["notes"]["clustered_copy_s"] = round(time.perf_counter() - started, 1)
        clustered = Variant(
            "service query on a clustered heap", SERVICE_SQL, table="bench_clustered"
        )
        out["heavy"][clustered.name] = run_variant(conn, clustered, heavy_load, banks)

        started = time.perf_counter()
        conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
        conn.execute(COVERING_INDEX)
        size = conn.execute(
            "SELECT pg_size_pretty(pg_relation_size('bench_memories_user_covering'))"
        ).fetchone()
        out["notes"]["covering_index"] = {
            "definition": COVERING_INDEX,
            "build_s": round(time.perf_counter() - started, 1),
            "size": size[0] if size else None,
        }
        covering = [
            Variant("two-step + covering index (index-only scan)", TWO_STEP_SQL),
            Variant("service query + covering index (unused: it reads every column)", SERVICE_SQL),
            Variant(f"two-step + covering index, {parallel}", TWO_STEP_SQL, FORCE_PARALLEL),
        ]
        for variant in covering:
            out["heavy"][variant.name] = run_variant(conn, variant, heavy_load, banks)
        out["normal"][covering[0].name] = run_variant(conn, covering[0], normal_load, banks)
        conn.rollback()
    return out


async def search_without_embedding(
    db: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID, embedding: list[float], k: int
) -> list[tuple[Memory, float]]:
    """repository.search with the embedding column deferred: no caller reads it."""
    distance = (Memory.embedding.cosine_distance(embedding) + 0).label("distance")
    query = (
        select(Memory, distance)
        .options(defer(Memory.embedding, raiseload=True))
        .where(
            Memory.tenant_id == tenant_id, Memory.user_id == user_id, Memory.deleted_at.is_(None)
        )
        .order_by(distance, Memory.id)
        .limit(k)
    )
    rows = await db.execute(query)
    return [(memory, float(dist)) for memory, dist in rows.all()]


async def compare_deferred(
    url: str, workload: Sequence[tuple[BenchUser, np.ndarray]]
) -> dict[str, Any]:
    """A/B through the ORM, alternating which goes first on each (user, query)."""
    engine = create_engine(url, pool_size=2)
    sessions = session_factory(engine)
    timings: dict[str, list[float]] = {"service search": [], "search, embedding deferred": []}
    functions: dict[str, Callable[..., Awaitable[Any]]] = {
        "service search": repository.search,
        "search, embedding deferred": search_without_embedding,
    }
    try:
        for n, (user, query) in enumerate(workload):
            names = list(functions) if n % 2 else list(reversed(functions))
            for name in names:
                async with sessions() as db:
                    started = time.perf_counter()
                    await functions[name](db, user.tenant_id, user.user_id, query.tolist(), TOP_K)
                    timings[name].append(time.perf_counter() - started)
    finally:
        await engine.dispose()
    return {name: summarize_ms(values) for name, values in timings.items()}


def print_alternatives(alt: dict[str, Any]) -> None:
    print("\nalternatives (measured apart from the service; nothing kept in the schema)")
    for group in ("heavy", "normal"):
        print(f"\n{group} user(s): client p50 / p95 ms, server p50 ms, recall@60 min")
        for name, r in alt[group].items():
            if not r["latency"]["n"]:
                continue
            print(
                f"  {name:<58} {r['latency']['p50_ms']:>8.1f} {r['latency']['p95_ms']:>8.1f}"
                f" {r['server_execution_repeat'].get('p50_ms', float('nan')):>8.1f}"
                f" {r['recall_at_60_min']:>6}"
            )
    for group, rows in alt["deferred"].items():
        print(f"\nORM A/B, {group}:")
        for name, latency in rows.items():
            print(f"  {name:<58} p50 {latency['p50_ms']:.1f} ms  p95 {latency['p95_ms']:.1f} ms")
    print(f"\n{alt['notes']}")


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cold = results["cold"]
    groups = [
        ("normal user\nwarm", results["normal"]["latency"], 10, 25),
        *(
            [("normal user\ncold", cold["normal"]["latency"], None, None)]
            if "normal" in cold
            else []
        ),
        ("heavy user\nwarm", results["heavy"]["latency"], None, 100),
        *([("heavy user\ncold", cold["heavy"]["latency"], None, None)] if "heavy" in cold else []),
        ("query\nembedding", results["embedding"]["latency"], 15, None),
    ]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = np.arange(len(groups))
    p50 = [g[1]["p50_ms"] for g in groups]
    p95 = [g[1]["p95_ms"] for g in groups]
    ax.bar(xs - 0.2, p50, 0.4, label="p50")
    ax.bar(xs + 0.2, p95, 0.4, label="p95")
    for x, (_, _, p50_limit, p95_limit) in zip(xs, groups, strict=True):
        if p50_limit is not None:
            ax.hlines(p50_limit, x - 0.4, x, colors="black", linestyles="dashed", zorder=3)
        if p95_limit is not None:
            ax.hlines(p95_limit, x, x + 0.4, colors="black", linestyles="dotted", zorder=3)
    ax.set_xticks(xs, [g[0] for g in groups])
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale); black lines: p50 / p95 targets")
    ax.set_title(f"top-{TOP_K} retrieval at {results['dataset']['memories']:,} memories")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def targets(results: dict[str, Any]) -> list[Target]:
    normal, heavy, cold = results["normal"], results["heavy"], results["cold"]
    exact = [
        Target(f"recall@60 {label} (min)", kind["recall_at_60_min"], 1.0, "", True)
        for label, kind in (
            ("normal users, warm", normal),
            ("heavy user, warm", heavy),
            ("normal users, cold", cold.get("normal")),
            ("heavy user, cold", cold.get("heavy")),
        )
        if kind is not None
    ]
    return [
        *exact,
        Target("normal user search p50, warm", normal["latency"]["p50_ms"], 10, "ms"),
        Target("normal user search p95, warm", normal["latency"]["p95_ms"], 25, "ms"),
        Target("heavy user search p95, warm", heavy["latency"]["p95_ms"], 100, "ms"),
        Target("query embedding p50", results["embedding"]["latency"]["p50_ms"], 15, "ms"),
    ]


def print_figures(results: dict[str, Any]) -> None:
    print(f"\ndataset: {results['dataset']}")
    cold = results["cold"]
    if cold["skipped"]:
        print(f"cold searches not measured: {cold['skipped']}")
    for name in ("normal", "heavy"):
        if name in cold:
            print(f"{name:>6} search, cold (every cache emptied first) {cold[name]}")
    for name in ("normal", "heavy"):
        r = results[name]
        print(
            f"{name:>6} search, warm (rows just read) latency {r['latency']}\n"
            f"{'':>6}         server execution, repeated (EXPLAIN ANALYZE) "
            f"{r['server_execution_repeat']}\n"
            f"{'':>6}         recall@60 mean {r['recall_at_60_mean']} min {r['recall_at_60_min']}"
        )
    print(f"ask-path retrieve() normal {results['ask_retrieve']['normal']}")
    print(f"ask-path retrieve() heavy  {results['ask_retrieve']['heavy']}")
    print(f"query embedding {results['embedding']}")
    for name in ("normal", "heavy"):
        print(f"\nplan of one {name}-user search:\n{results[name + '_plan']}")


async def measure(caches: Caches, args: argparse.Namespace) -> dict[str, Any]:
    url = caches.url
    rng = np.random.default_rng(args.seed + 1)
    users, heavy = bench_users(url)
    order = rng.permutation(len(users))
    sampled = [users[i] for i in order[: args.queries]]
    warm = [users[i] for i in order[args.queries : args.queries + 20]]
    fresh = [users[i] for i in order[args.queries + 20 : args.queries + 120]]
    cold_users = [users[i] for i in order[len(order) - args.cold_queries :]]
    cold_load = list(zip(cold_users, unit_vectors(rng, len(cold_users)), strict=True))
    cold_heavy = [(heavy, q) for q in unit_vectors(rng, 5)]
    cold: dict[str, Any] = {"skipped": caches.problem}
    if caches.problem is None:
        # First, before anything reads these users' rows.
        cold_found = await cold_searches(caches, cold_load, warm[0])
        heavy_found = await cold_searches(caches, cold_heavy, warm[0])
        url = caches.url
    # The brute-force banks of every user timed; reading them now leaves the warm users' rows
    # just read when the warm searches below run.
    banks = fetch_banks(url, [*sampled, heavy, *(cold_users if caches.problem is None else [])])
    if caches.problem is None:
        cold |= {
            "normal": cold_summary(cold_found, cold_load, banks),
            "heavy": cold_summary(heavy_found, cold_heavy, banks),
        }

    normal_load = list(zip(sampled, unit_vectors(rng, len(sampled)), strict=True))
    normal = await run_searches(
        url,
        normal_load,
        banks,
        warmup=list(zip(warm, unit_vectors(rng, len(warm)), strict=True)),
        explain_every=10,
        deadline_s=300,
        label="normal users",
    )
    heavy_load = [(heavy, q) for q in unit_vectors(rng, args.heavy_queries)]
    heavy_run = await run_searches(
        url,
        heavy_load,
        banks,
        warmup=[(heavy, q) for q in unit_vectors(rng, 3)],
        explain_every=5,
        deadline_s=300,
        label="heavy user",
    )
    ask_load = list(zip(fresh, unit_vectors(rng, len(fresh)), strict=True))
    ask_normal = await time_ask_retrieval(url, ask_load, 120)
    ask_heavy = await time_ask_retrieval(url, heavy_load[:20], 120)
    embedding = await time_embeddings(args.embed_queries, 120)
    heavy_summary = heavy_run.summary()
    alternative: dict[str, Any] | None = None
    if args.alternatives == "always" or (
        args.alternatives == "auto" and heavy_summary["latency"]["p95_ms"] > 100
    ):
        others = [users[i] for i in order[args.queries + 120 : args.queries + 160]]
        banks |= fetch_banks(url, others)
        alternative = alternatives(url, heavy, others[:20], banks, rng, 12)
        ab_normal = list(zip(others[20:], unit_vectors(rng, len(others[20:])), strict=True))
        ab_heavy = [(heavy, q) for q in unit_vectors(rng, 12)]
        alternative["deferred"] = {
            "normal users": await compare_deferred(url, ab_normal),
            "heavy user": await compare_deferred(url, ab_heavy),
        }
    return {
        "alternatives": alternative,
        "cold": cold,
        "normal": normal.summary(),
        "heavy": heavy_summary,
        "normal_plan": normal.plan,
        "heavy_plan": heavy_run.plan,
        "ask_retrieve": {"normal": summarize_ms(ask_normal), "heavy": summarize_ms(ask_heavy)},
        "embedding": embedding,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = Spec(args.users, args.per_user, args.heavy, args.tenants, args.seed)
    caches = Caches(args.pgdata, args.database)
    url = caches.url
    try:
        problem = dataset_problem(url, spec) if args.reuse else "--reuse not given"
        load_timings: dict[str, Any] = {"reused": problem is None}
        if problem is None:
            print(f"reusing the dataset in {args.pgdata} (database {args.database})")
        else:
            print(f"loading a fresh dataset ({problem})")
            recreate_database(url, args.database)
            load_timings |= load(url, spec, args.maintenance_work_mem)
        results: dict[str, Any] = {
            "dataset": {**asdict(spec), "memories": spec.total, "pgdata": str(args.pgdata)},
            "load": load_timings,
        }
        results |= asyncio.run(measure(caches, args))
        checks = targets(results)
        results["targets"] = [t.as_dict() for t in checks]
        print_figures(results)
        print_targets(checks)
        if results["alternatives"] is not None:
            print_alternatives(results["alternatives"])
        path = write_json("retrieval", results, args.out)
        chart(results, args.out / "retrieval.png")
        print(f"\nwrote {path} and {args.out / 'retrieval.png'}")
    finally:
        caches.server.stop()
    return 0 if all(t.passed for t in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
