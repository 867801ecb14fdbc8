"""Ingest LoCoMo conv-26 through the API and a real Celery worker with the bundled model, then
ask its questions.

Figures: wall time, model tokens per turn, memories and operations by type, the share of model
time in the worker's processing time (non-model overhead), and /ask latency p50/p95 with its
non-model overhead at top_k 60 and 10. Targets on a 2-core machine: every job succeeds and
processes every turn, the conversation in <= 15 minutes (per processed turn, scaled to 419),
non-model overhead <= 10 %, /ask p50 <= 5 s at top_k 60 and <= 2 s at top_k 10. Exits 1 when
a target fails.

    python -m bench.ingest [--sessions N] [--questions N]
"""

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from tqdm import tqdm

from app.core.config import Settings
from app.core.db import transaction, upgrade_to_head
from app.core.runtime import Runtime
from app.models import Episode, IngestionJob, Memory, MemoryEvent
from bench.common import (
    OUT_DIR,
    Target,
    bench_api,
    embedded_database,
    print_targets,
    recreate_database,
    summarize_ms,
    write_json,
)
from training.eval.loaders import load_locomo

REPO = Path(__file__).resolve().parents[1]
CONV26 = REPO.parent / "shared" / "data" / "locomo" / "locomo_train_conv26.json"


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MEMR1_DATABASE_URL": settings.database_url or "",
        "MEMR1_DATA_DIR": str(settings.data_dir),
    }
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--queues", "ingest"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def ingest(
    client: httpx.AsyncClient, headers: dict[str, str], conversation: Any, sessions: int
) -> tuple[list[str], int, int, float]:
    """Post the sessions' turns and wait for their jobs: job ids, turns posted, turns the
    jobs processed, wall time."""
    job_ids: list[str] = []
    turns = 0
    started = time.perf_counter()
    for session in conversation.sessions[:sessions]:
        body = {
            "user_id": conversation.sample_id,
            "turns": [
                {"speaker": t.speaker, "text": t.text, "occurred_at": t.occurred_at.isoformat()}
                for t in session.turns
            ],
        }
        response = await client.post(
            f"/sessions/{conversation.sample_id}-{session.index}/turns", json=body, headers=headers
        )
        response.raise_for_status()
        job_ids.append(response.json()["ingestion_job_id"])
        turns += len(session.turns)
    with tqdm(total=turns, desc="ingesting turns", unit="turn") as bar:
        while True:
            done = 0
            statuses = []
            for job_id in job_ids:
                job = (await client.get(f"/ingestions/{job_id}", headers=headers)).json()
                done += job["processed_turns"]
                statuses.append(job["status"])
            bar.update(done - bar.n)
            if all(s in ("succeeded", "failed") for s in statuses):
                break
            await asyncio.sleep(2)
    return job_ids, turns, done, time.perf_counter() - started


async def ingestion_figures(
    runtime: Runtime, job_ids: list[str], turns: int, processed: int, wall_s: float
) -> dict[str, Any]:
    ids = [uuid.UUID(j) for j in job_ids]
    async with transaction(runtime.sessions) as db:
        jobs = (await db.scalars(select(IngestionJob).where(IngestionJob.id.in_(ids)))).all()
        tenant_id = jobs[0].tenant_id
        calls = (
            await db.execute(
                select(
                    Episode.agent,
                    Episode.created_at,
                    Episode.latency_ms,
                    Episode.prompt_tokens + Episode.completion_tokens,
                ).where(Episode.tenant_id == tenant_id, Episode.agent != "answer")
            )
        ).all()
        ops = Counter(
            dict(
                (
                    await db.execute(
                        select(MemoryEvent.op, func.count())
                        .where(MemoryEvent.tenant_id == tenant_id)
                        .group_by(MemoryEvent.op)
                    )
                ).all()
            )
        )
        live = await db.scalar(
            select(func.count())
            .select_from(Memory)
            .where(Memory.tenant_id == tenant_id, Memory.deleted_at.is_(None))
        )
    processing_s = sum(
        (j.finished_at - j.started_at).total_seconds()
        for j in jobs
        if j.finished_at and j.started_at
    )
    spans = [
        (agent, at.timestamp() - (latency or 0) / 1000, at.timestamp())
        for agent, at, latency, _ in calls
    ]
    model_s = busy_seconds([(start, end) for _, start, end in spans])
    tokens = sum(int(t or 0) for *_, t in calls)
    return {
        "turns": turns,
        "processed_turns": processed,
        "jobs": {s: sum(1 for j in jobs if j.status == s) for s in {j.status for j in jobs}},
        "wall_s": round(wall_s, 1),
        "worker_processing_s": round(processing_s, 1),
        "model_s": round(model_s, 1),
        "non_model_overhead": round(1 - model_s / processing_s, 4) if processing_s else None,
        "model_tokens_per_turn": round(tokens / processed, 1) if processed else None,
        "model_calls": dict(Counter(agent for agent, *_ in calls)),
        "model_s_by_agent": {
            agent: round(busy_seconds([(a, b) for who, a, b in spans if who == agent]), 1)
            for agent in sorted({agent for agent, *_ in spans})
        },
        "operations": dict(ops),
        "live_memories": live,
    }


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """How long at least one of the (start, end) intervals was running. Calls overlap (a
    window's extractions run together), so their latencies must not simply be added."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


async def ask_figures(
    client: httpx.AsyncClient,
    runtime: Runtime,
    headers: dict[str, str],
    conversation: Any,
    limit: int,
    top_k: int,
) -> dict[str, Any]:
    latencies, overheads = [], []
    questions = [qa for _, qa in conversation.questions({1, 2, 3, 4})][:limit]
    for qa in tqdm(questions, desc=f"asking, top_k {top_k}", unit="question"):
        started = time.perf_counter()
        response = await client.post(
            "/ask",
            headers=headers,
            json={"user_id": conversation.sample_id, "question": qa.question, "top_k": top_k},
        )
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        async with transaction(runtime.sessions) as db:
            episode = await db.get(Episode, uuid.UUID(response.json()["episode_id"]))
        latencies.append(elapsed)
        overheads.append(elapsed - (episode.latency_ms or 0) / 1000 if episode else 0.0)
    total = sum(latencies)
    return {
        "questions": len(questions),
        "latency": summarize_ms(latencies),
        "non_model_ms": summarize_ms(overheads),
        "non_model_share": round(sum(overheads) / total, 4) if total else None,
    }


async def main(args: argparse.Namespace) -> int:
    [conversation] = load_locomo(CONV26)
    server, url = embedded_database(Path(args.pgdata), "bench_ingest")
    recreate_database(url, "bench_ingest")
    upgrade_to_head(url)
    data_dir = Path(args.data_dir)
    settings = Settings(database_url=url, data_dir=data_dir)
    runtime, app, headers = await bench_api(settings, max_batch_size=4)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    worker = start_worker(settings, OUT_DIR / "ingest-worker.log")
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", timeout=600
        ) as client:
            job_ids, turns, processed, wall = await ingest(
                client, headers, conversation, args.sessions
            )
            figures = await ingestion_figures(runtime, job_ids, turns, processed, wall)
            for top_k in (60, 10):
                figures[f"ask_top{top_k}"] = await ask_figures(
                    client, runtime, headers, conversation, args.questions, top_k
                )
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        await runtime.close()
        server.stop()
    figures["full_conversation"] = args.sessions >= len(conversation.sessions)
    print(figures)
    targets = [
        Target("failed ingestion jobs", figures["jobs"].get("failed", 0), 0, ""),
        Target("turns not processed", turns - processed, 0, ""),
        # A run that processed nothing has no time per turn: it fails rather than divides by 0.
        Target(
            "wall time per 419 turns",
            round(wall / processed * 419 / 60, 2) if processed else float("inf"),
            15,
            "min",
        ),
        Target("non-model overhead (ingest)", figures["non_model_overhead"] or 1.0, 0.10, ""),
        Target("/ask p50, top_k 60", figures["ask_top60"]["latency"]["p50_ms"] / 1000, 5, "s"),
        Target("/ask p50, top_k 10", figures["ask_top10"]["latency"]["p50_ms"] / 1000, 2, "s"),
    ]
    print_targets(targets)
    figures["targets"] = [t.as_dict() for t in targets]
    print("written", write_json("ingest", figures))
    return 0 if all(t.passed for t in targets) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=19, help="conv-26 sessions to ingest")
    parser.add_argument("--questions", type=int, default=152, help="questions to ask afterwards")
    parser.add_argument("--pgdata", default="/tmp/memr1-bench-ingest-pg")
    parser.add_argument("--data-dir", default=str(Path.home() / ".local/share/memory-r1-bench"))
    raise SystemExit(asyncio.run(main(parser.parse_args())))
