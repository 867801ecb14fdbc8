"""Retrieval is exact: ``memories.repository.search`` returns the same top-k, in the same order,
as brute-force cosine distance over the user's live memories, in a table where the user's
memories are a small part of the whole - the case an HNSW scan filtered by user gets wrong."""

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, event, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.db import session_factory
from app.memories import repository as memories
from app.models import Memory, Tenant
from app.tenants import repository as tenants
from app.users import repository as users

SEED = 20250826
DIM = 384
OTHER_USERS = 30
PER_OTHER_USER = 200
TARGET_MEMORIES = 300
K = 60
# pgvector computes in single precision: only queries whose top K+1 distances are further apart
# than its rounding have one correct order.
MIN_GAP = 1e-5
HNSW_INDEX = "ix_memories_embedding_hnsw"


@dataclass
class Bank:
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    neighbour_id: uuid.UUID
    ids: list[uuid.UUID]  # the target user's memories, row i has vectors[i]
    vectors: np.ndarray
    speakers: list[str]


def unit(rows: np.ndarray) -> np.ndarray:
    normed: np.ndarray = (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)
    return normed


def brute_force(
    bank: Bank, query: np.ndarray, k: int, keep: np.ndarray | None = None
) -> list[tuple[uuid.UUID, float]]:
    """The k nearest of the target's memories (``keep`` selects which), by cosine distance."""
    distances = 1.0 - bank.vectors.astype(np.float64) @ query.astype(np.float64)
    order = [i for i in np.argsort(distances, kind="stable") if keep is None or keep[i]]
    return [(bank.ids[i], float(distances[i])) for i in order[:k]]


def well_separated(bank: Bank, query: np.ndarray, keep: np.ndarray | None = None) -> bool:
    distances = np.array([d for _, d in brute_force(bank, query, K + 1, keep)])
    return bool(np.min(np.diff(distances)) > MIN_GAP)


def queries(
    bank: Bank, count: int, seed: int, keep: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Random unit queries with a well-defined top K+1."""
    rng = np.random.default_rng(seed)
    made = 0
    while made < count:
        query = unit(rng.standard_normal(DIM))
        if well_separated(bank, query, keep):
            made += 1
            yield query


@pytest.fixture(scope="module")
async def bank(engine: AsyncEngine) -> AsyncIterator[Bank]:
    """Committed once for the module (tests change it only inside their rolled-back
    transaction) and deleted with its tenant afterwards. The target user's memories go through
    ``repository.add``; the crowd around them is bulk-inserted."""
    rng = np.random.default_rng(SEED)
    sessions = session_factory(engine)
    async with sessions() as db:
        # Building the HNSW index once over all rows is several times faster than updating it
        # row by row; it is recreated from its own definition in the same transaction.
        definition = await db.scalar(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"), {"name": HNSW_INDEX}
        )
        assert definition is not None
        await db.execute(text(f"DROP INDEX {HNSW_INDEX}"))
        tenant = await tenants.add_tenant(db, "retrieval")
        target = await users.get_or_create(db, tenant.id, "target")
        neighbour_id: uuid.UUID | None = None
        for n in range(OTHER_USERS):
            other = await users.get_or_create(db, tenant.id, f"other-{n}")
            neighbour_id = neighbour_id or other.id
            rows = unit(rng.standard_normal((PER_OTHER_USER, DIM)))
            await db.execute(
                insert(Memory),
                [
                    {"tenant_id": tenant.id, "user_id": other.id, "text": "m", "embedding": v}
                    for v in rows.tolist()
                ],
            )
        assert neighbour_id is not None
        vectors = unit(rng.standard_normal((TARGET_MEMORIES, DIM)))
        speakers = [str(s) for s in rng.choice(["Caroline", "Melanie"], TARGET_MEMORIES)]
        ids = [
            await add(db, tenant.id, target.id, v, s)
            for v, s in zip(vectors, speakers, strict=True)
        ]
        await db.execute(text(definition))
        await db.commit()
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE memories"))
        await conn.commit()
    yield Bank(tenant.id, target.id, neighbour_id, ids, vectors, speakers)
    async with sessions() as db:
        await db.execute(delete(Tenant).where(Tenant.id == tenant.id))
        await db.commit()


async def add(
    db: AsyncSession,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    vector: np.ndarray,
    speaker: str | None,
) -> uuid.UUID:
    memory = await memories.add(
        db,
        tenant_id=tenant_id,
        user_id=user_id,
        text_="m",
        embedding=vector.tolist(),
        speaker=speaker,
        occurred_at=None,
        source_turn_ids=[],
    )
    return memory.id


async def search(
    db: AsyncSession, bank: Bank, query: np.ndarray, k: int = K, speaker: str | None = None
) -> list[tuple[uuid.UUID, float]]:
    hits = await memories.search(db, bank.tenant_id, bank.user_id, query.tolist(), k, speaker)
    return [(memory.id, distance) for memory, distance in hits]


def assert_same_ranking(
    found: list[tuple[uuid.UUID, float]], expected: list[tuple[uuid.UUID, float]]
) -> None:
    assert [i for i, _ in found] == [i for i, _ in expected]
    assert np.allclose([d for _, d in found], [d for _, d in expected], atol=1e-5)


class TestExactTopK:
    async def test_matches_brute_force(self, db: AsyncSession, bank: Bank) -> None:
        for query in queries(bank, 8, seed=1):
            assert_same_ranking(await search(db, bank, query), brute_force(bank, query, K))

    async def test_small_k_and_the_users_own_vectors(self, db: AsyncSession, bank: Bank) -> None:
        for i in (0, 137, 299):
            query = bank.vectors[i]
            found = await search(db, bank, query, k=5)
            assert found[0] == (bank.ids[i], pytest.approx(0.0, abs=1e-5))
            assert [m for m, _ in found] == [m for m, _ in brute_force(bank, query, 5)]

    async def test_a_bank_smaller_than_k(self, db: AsyncSession, bank: Bank) -> None:
        [query] = queries(bank, 1, seed=2)
        found = await search(db, bank, query, k=TARGET_MEMORIES + 50)
        assert len(found) == TARGET_MEMORIES
        assert [m for m, _ in found] == [m for m, _ in brute_force(bank, query, TARGET_MEMORIES)]

    async def test_per_speaker(self, db: AsyncSession, bank: Bank) -> None:
        keep = np.array([s == "Melanie" for s in bank.speakers])
        for query in queries(bank, 3, seed=3, keep=keep):
            found = await search(db, bank, query, k=30, speaker="Melanie")
            assert_same_ranking(found, brute_force(bank, query, 30, keep))

    async def test_deleted_memories_never_appear(self, db: AsyncSession, bank: Bank) -> None:
        [query] = queries(bank, 1, seed=4)
        nearest = [i for i, _ in brute_force(bank, query, K)]
        deleted = set(nearest[::3])
        for memory_id in deleted:
            memory = await db.get(Memory, memory_id)
            assert memory is not None
            await memories.soft_delete(db, memory)
        keep = np.array([i not in deleted for i in bank.ids])

        found = await search(db, bank, query)

        assert deleted.isdisjoint(i for i, _ in found)
        assert_same_ranking(found, brute_force(bank, query, K, keep))

    async def test_other_users_memories_never_appear(self, db: AsyncSession, bank: Bank) -> None:
        probes = list(queries(bank, 3, seed=5))
        for probe in probes:  # the neighbour holds each query itself: distance 0
            await add(db, bank.tenant_id, bank.neighbour_id, probe, None)
        own = set(bank.ids)
        for probe in probes:
            found = await search(db, bank, probe)
            assert {i for i, _ in found} <= own
            assert_same_ranking(found, brute_force(bank, probe, K))


class TestQueryPlan:
    async def test_search_does_not_use_the_hnsw_index(self, db: AsyncSession, bank: Bank) -> None:
        [query] = queries(bank, 1, seed=6)
        [(statement, parameters)] = await captured(db, search(db, bank, query))

        plan = await explain(db, statement, parameters)

        assert HNSW_INDEX not in plan, plan
        assert "memories" in plan

    async def test_the_plan_check_can_see_the_hnsw_index(
        self, db: AsyncSession, bank: Bank
    ) -> None:
        # A whole-table nearest-neighbour query is what the HNSW index serves (with sequential
        # scans off it is the only plan left); if EXPLAIN did not name it here, the check above
        # would prove nothing.
        [query] = queries(bank, 1, seed=7)
        await db.execute(text("SET LOCAL enable_seqscan = off"))
        statement = "SELECT id FROM memories ORDER BY embedding <=> $1::vector LIMIT 60"
        plan = await explain(db, statement, (str(query.tolist()),))
        assert HNSW_INDEX in plan, plan


async def captured(db: AsyncSession, call: Any) -> list[tuple[str, Any]]:
    """The SELECT statements ``call`` sent to the database, as the driver received them."""
    connection = (await db.connection()).sync_connection
    assert connection is not None
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(connection, "before_cursor_execute", record)
    try:
        await call
    finally:
        event.remove(connection, "before_cursor_execute", record)
    return statements


async def explain(db: AsyncSession, statement: str, parameters: Any) -> str:
    connection = await db.connection()
    result = await connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
    return "\n".join(row[0] for row in result.all())
