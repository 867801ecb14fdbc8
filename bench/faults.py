"""Faults against a running service: the bundled model, a real Celery ingest worker under the
supervisor `memory-r1 serve` uses, over the embedded Postgres (which is also the broker). Each
fault hits while the first posted job is under way:

- kill: the worker is killed with SIGKILL; the supervisor starts it again;
- database: Postgres (and so the broker) stops for --outage-s, then starts again;
- model: the worker's model endpoint (vLLM's OpenAI-compatible API, served here on the bundled
  model) goes down for --outage-s, then comes back.

Figures per fault: turns acknowledged (posted and answered 202), turns processed, turns
extracted more than once, memories written twice for one turn, jobs stuck or failed, and the
recovery: from the moment the service is whole again (the kill itself; the database or the
endpoint back) until the interrupted job records progress again. Targets: nothing lost,
nothing duplicated, nothing stuck, recovery within 60 s. Writes bench/out/faults.json and
faults.png (each fault's job progress over time); exits 1 when a target fails.

    python -m bench.faults [--fault kill database model] [--sessions N] [--outage-s S]
"""

import argparse
import asyncio
import os
import signal
import sys
import time
from collections import Counter
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
from matplotlib.figure import Figure
from sqlalchemy import select

from app.core.config import Settings
from app.core.db import EmbeddedPostgres, transaction, upgrade_to_head
from app.llm.bundled import BUNDLED_MODEL_NAME, ensure_bundled_gguf
from app.llm.inprocess import InProcessBackend
from app.models import Agent, Episode, Memory
from app.supervise import Supervisor
from bench.common import (
    OUT_DIR,
    Target,
    bench_api,
    embedded_database,
    free_port,
    print_targets,
    recreate_database,
    write_json,
)
from bench.ingest import CONV26, REPO
from tests.fixtures.vllm_contract_server import VLLMContractServer, serve_on_localhost
from training.eval.loaders import Conversation, load_locomo

FAULTS = ("kill", "database", "model")
DATABASE = "bench_faults"
TIMEOUT_S = 1800
RECOVERY_TARGET_S = 60


class ModelEndpoint:
    """vLLM's HTTP API on the bundled model, on a fixed port, that can go down and come back."""

    def __init__(self, settings: Settings) -> None:
        backend = InProcessBackend(
            ensure_bundled_gguf(settings.data_dir, settings.llm.weights),
            BUNDLED_MODEL_NAME,
            max_batch_size=settings.llm.max_batch_size,
            max_lora_rank=settings.llm.max_lora_rank,
        )
        self.server = VLLMContractServer(base_model=BUNDLED_MODEL_NAME, backend=backend)
        self.backend, self.port = backend, free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._serving: AbstractAsyncContextManager[str] | None = None

    async def up(self) -> None:
        self._serving = serve_on_localhost(self.server.app, self.port)
        await self._serving.__aenter__()

    async def down(self) -> None:
        if self._serving is not None:
            await self._serving.__aexit__(None, None, None)
            self._serving = None


async def jobs(client: httpx.AsyncClient, headers: dict[str, str], ids: list[str]) -> list[Any]:
    return [(await client.get(f"/ingestions/{j}", headers=headers)).json() for j in ids]


def progress(job: dict[str, Any]) -> tuple[int, int]:
    return job["processed_turns"], len(job["operations"])


async def post_sessions(
    client: httpx.AsyncClient, headers: dict[str, str], conversation: Conversation, sessions: int
) -> tuple[list[str], int]:
    ids, acknowledged = [], 0
    for session in conversation.sessions[:sessions]:
        turns = [
            {"speaker": t.speaker, "text": t.text, "occurred_at": t.occurred_at.isoformat()}
            for t in session.turns
        ]
        r = await client.post(
            f"/sessions/{conversation.sample_id}-{session.index}/turns",
            json={"user_id": conversation.sample_id, "turns": turns},
            headers=headers,
        )
        if r.status_code == 202:
            ids.append(r.json()["ingestion_job_id"])
            acknowledged += len(session.turns)
    return ids, acknowledged


async def run_fault(
    fault: str, conversation: Conversation, args: argparse.Namespace
) -> tuple[dict[str, Any], list[Target]]:
    database, url = embedded_database(Path(args.pgdata), DATABASE)
    recreate_database(url, DATABASE)
    upgrade_to_head(url)
    settings = Settings(database_url=url, data_dir=Path(args.data_dir))
    # The API only stores turns and reports jobs here: the worker runs the model.
    runtime, app, headers = await bench_api(settings, max_batch_size=1)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MEMR1_DATABASE_URL": url,
        "MEMR1_DATA_DIR": str(settings.data_dir),
    }
    endpoint = None
    if fault == "model":
        endpoint = ModelEndpoint(settings)
        await endpoint.up()
        env |= {
            "MEMR1_LLM__BACKEND": "openai",
            "MEMR1_LLM__BASE_URL": endpoint.url,
            "MEMR1_LLM__MODEL": BUNDLED_MODEL_NAME,
        }
    worker_argv = [sys.executable, "-m", "app.cli", "worker", "--queues", "ingest"]
    os.chdir(REPO)
    workers = Supervisor({"ingest worker": worker_argv}, env)
    workers.start()
    timeline: list[tuple[float, int]] = []  # (seconds since the fault, job 1's operations)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            ids, acknowledged = await post_sessions(client, headers, conversation, args.sessions)
            started = time.monotonic()
            while (await jobs(client, headers, ids[:1]))[0]["processed_turns"] < args.after_turns:
                await asyncio.sleep(0.5)
            [before] = await jobs(client, headers, ids[:1])
            hit_at = time.monotonic()
            database = await inject(fault, workers, database, endpoint, args.outage_s)
            restored = time.monotonic() - hit_at
            # What the job recorded while the fault lasted (a reply already on its way) is not
            # recovery: recovery is progress after the service is whole again.
            [whole] = await jobs(client, headers, ids[:1])
            print(
                f"{fault}: hit at {before['processed_turns']} turns of job 1, whole again "
                f"after {restored:.1f} s",
                flush=True,
            )
            recovery = None
            while time.monotonic() - started < TIMEOUT_S:
                states = await jobs(client, headers, ids)
                now = time.monotonic() - hit_at
                timeline.append((now, len(states[0]["operations"])))
                if recovery is None and progress(states[0]) > progress(whole):
                    recovery = now - restored
                    print(f"{fault}: job 1 moved again {recovery:.1f} s later", flush=True)
                if all(s["status"] in ("succeeded", "failed") for s in states):
                    break
                await asyncio.sleep(1)
            states = await jobs(client, headers, ids)
    finally:
        workers.stop()
        if endpoint is not None:
            await endpoint.down()
            await endpoint.backend.close()
    async with transaction(runtime.sessions) as db:
        extractions = Counter(
            e.input["turn_id"]
            for e in await db.scalars(select(Episode).where(Episode.agent == Agent.extractor))
        )
        memories = (await db.scalars(select(Memory))).all()
    await runtime.close()
    database.stop()
    per_turn = Counter((tuple(m.source_turn_ids), m.text) for m in memories)
    figures = {
        "turns_acknowledged": acknowledged,
        "turns_processed": sum(s["processed_turns"] for s in states),
        "turns_extracted_twice": sum(1 for n in extractions.values() if n > 1),
        "memories_written_twice": sum(n - 1 for n in per_turn.values() if n > 1),
        "jobs": dict(Counter(s["status"] for s in states)),
        "jobs_stuck_or_failed": sum(1 for s in states if s["status"] != "succeeded"),
        "job_1_attempts": states[0]["attempts"],
        "whole_again_after_s": round(restored, 1),
        "recovery_s": round(recovery, 1) if recovery is not None else None,
        "worker_restarts": workers.restarts,
        "timeline": timeline,
    }
    print(fault, {k: v for k, v in figures.items() if k != "timeline"})
    targets = [
        Target(f"{fault}: turns lost", acknowledged - figures["turns_processed"], 0, ""),
        Target(f"{fault}: memories written twice", figures["memories_written_twice"], 0, ""),
        Target(f"{fault}: jobs stuck or failed", figures["jobs_stuck_or_failed"], 0, ""),
        Target(
            f"{fault}: recovery",
            recovery if recovery is not None else float("inf"),
            RECOVERY_TARGET_S,
            "s",
        ),
    ]
    return figures, targets


async def inject(
    fault: str,
    workers: Supervisor,
    database: EmbeddedPostgres,
    endpoint: ModelEndpoint | None,
    outage_s: float,
) -> EmbeddedPostgres:
    """Hit the service with ``fault`` and return once it is whole again; returns the database
    (a new handle when it was restarted)."""
    if fault == "kill":
        victim = workers.pids()["ingest worker"]
        assert victim is not None
        os.killpg(victim, signal.SIGKILL)
    elif fault == "database":
        database.stop()
        await asyncio.sleep(outage_s)
        database, _ = embedded_database(database.data_dir, DATABASE)
    else:
        assert endpoint is not None
        await endpoint.down()
        await asyncio.sleep(outage_s)
        await endpoint.up()
    return database


def chart(results: dict[str, dict[str, Any]], outage_s: float) -> Path:
    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    for fault, figures in results.items():
        seconds, operations = (
            zip(*figures["timeline"], strict=True) if figures["timeline"] else ((), ())
        )
        axes.plot(seconds, operations, label=f"{fault} (recovery {figures['recovery_s']} s)")
    axes.axvspan(
        0, outage_s, color="grey", alpha=0.2, label=f"database, model down ({outage_s:.0f} s)"
    )
    axes.set_xlabel("seconds since the fault")
    axes.set_ylabel("memory operations of the interrupted job")
    axes.set_title("Ingestion through faults")
    axes.legend()
    path = OUT_DIR / "faults.png"
    figure.savefig(path, dpi=120)
    return path


async def main(args: argparse.Namespace) -> int:
    [conversation] = load_locomo(CONV26)
    results, targets = {}, []
    for fault in args.fault:
        results[fault], hit = await run_fault(fault, conversation, args)
        targets += hit
    print_targets(targets)
    payload = {
        "sessions": args.sessions,
        "outage_s": args.outage_s,
        "faults": results,
        "settings": Settings().pipeline.model_dump(),
        "targets": [t.as_dict() for t in targets],
    }
    print("written", write_json("faults", payload), chart(results, args.outage_s))
    return 0 if all(t.passed for t in targets) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fault", nargs="+", choices=FAULTS, default=list(FAULTS))
    parser.add_argument("--sessions", type=int, default=2, help="conv-26 sessions to ingest")
    parser.add_argument("--after-turns", type=int, default=4, help="job 1's turns before the fault")
    parser.add_argument("--outage-s", type=float, default=20.0, help="database and model outage")
    parser.add_argument("--pgdata", default="/tmp/memr1-bench-faults-pg")
    parser.add_argument("--data-dir", default=str(Path.home() / ".local/share/memory-r1-bench"))
    raise SystemExit(asyncio.run(main(parser.parse_args())))
