"""Turn ingestion through the HTTP API: concurrent clients posting turns for a fixed time.

Measures the accept path of ``POST /sessions/{id}/turns`` (store the turns, enqueue their
ingestion job, answer 202): requests per second, latency, errors, and afterwards that every
acknowledged turn id is in the database.

    python -m bench.api                                   # starts `memory-r1 serve --no-worker`
    python -m bench.api --url http://127.0.0.1:8080 --api-key mr1_... \\
        --database-url postgresql://...                   # a running server (and its database)
"""

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

if __package__ in (None, ""):  # run as a script (make bench-api)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    OUT_DIR,
    Server,
    Target,
    print_targets,
    started_server,
    summarize_ms,
    write_json,
)

SENTENCES = [
    "I adopted a dog named Buddy last weekend.",
    "We are moving to Lisbon in the spring, the kids are excited.",
    "My sister just started her nursing job at the city hospital.",
    "I finished the half marathon in two hours and five minutes!",
    "Remind me that I am allergic to peanuts when we plan dinners.",
    "I've been learning the violin for three months now.",
    "That sounds lovely. How did the painting class go yesterday?",
    "We went camping by the lake and saw a heron at sunrise.",
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server; default: start one")
    parser.add_argument("--api-key", help="a key with the memory scope (with --url)")
    parser.add_argument(
        "--database-url",
        help="the server's database, to check the acknowledged turns (with --url)",
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--turns-per-request", type=int, default=1)
    parser.add_argument("--turns-per-session", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="server start, s")
    parser.add_argument(
        "--broker-url", help="MEMR1_BROKER_URL for the started server (default: its Postgres)"
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--name", default="api", help="base name of the result files")
    args = parser.parse_args(argv)
    if args.url and not args.api_key:
        parser.error("--url needs --api-key")
    return args


# ------------------------------------------------------------------------------ the load


@dataclass
class Outcome:
    started_s: float  # since the start of the load
    latency_s: float
    status: int  # 0: no response
    error: str | None = None


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    turn_ids: list[uuid.UUID] = field(default_factory=list)
    job_ids: list[uuid.UUID] = field(default_factory=list)
    elapsed_s: float = 0.0


async def client(
    number: int,
    http: httpx.AsyncClient,
    args: argparse.Namespace,
    run: str,
    started: float,
    deadline: float,
    load: Load,
) -> None:
    """One conversation at a time: a user posting turns to a session, the next session after
    ``turns_per_session`` requests."""
    user = f"bench-{run}-user-{number}"
    sent = 0
    while time.monotonic() < deadline:
        session = f"bench-{run}-c{number}-s{sent // args.turns_per_session}"
        turns = [
            {
                "speaker": user if (sent + i) % 2 == 0 else "assistant",
                "text": SENTENCES[(number + sent + i) % len(SENTENCES)],
            }
            for i in range(args.turns_per_request)
        ]
        begin = time.monotonic()
        try:
            response = await http.post(
                f"/sessions/{session}/turns", json={"user_id": user, "turns": turns}
            )
        except httpx.HTTPError as exc:
            outcome = Outcome(begin - started, time.monotonic() - begin, 0, type(exc).__name__)
        else:
            outcome = Outcome(begin - started, time.monotonic() - begin, response.status_code)
            if response.status_code == 202:
                body = response.json()
                load.turn_ids.extend(uuid.UUID(t) for t in body["turn_ids"])
                load.job_ids.append(uuid.UUID(body["ingestion_job_id"]))
            else:
                outcome.error = response.text[:200]
        load.outcomes.append(outcome)
        sent += 1


async def run_load(server: Server, args: argparse.Namespace) -> Load:
    run = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    headers = {"Authorization": f"Bearer {server.api_key}"}
    load = Load()
    async with httpx.AsyncClient(
        base_url=server.url, headers=headers, limits=limits, timeout=args.timeout
    ) as http:
        # one request per connection first, so that connection setup is not in the figures
        warm = [http.get("/healthz") for _ in range(args.clients)]
        await asyncio.gather(*warm)
        started = time.monotonic()
        deadline = started + args.duration
        tasks = [client(n, http, args, run, started, deadline, load) for n in range(args.clients)]
        await asyncio.wait_for(asyncio.gather(*tasks), args.duration + args.timeout + 30)
        load.elapsed_s = time.monotonic() - started
    return load


# ----------------------------------------------------------------------------- the checks


def missing_rows(database_url: str, table: str, ids: Sequence[uuid.UUID]) -> int:
    found = 0
    with psycopg.connect(database_url) as conn:
        for start in range(0, len(ids), 10_000):
            chunk = list(ids[start : start + 10_000])
            row = conn.execute(
                f"SELECT count(*) FROM {table} WHERE id = ANY(%s)", (chunk,)
            ).fetchone()
            found += int(row[0]) if row else 0
    return len(ids) - found


def results_of(load: Load, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    ok = [o for o in load.outcomes if o.status == 202]
    errors = [o for o in load.outcomes if o.status != 202]
    by_error: dict[str, int] = {}
    for o in errors:
        key = f"{o.status} {o.error or ''}".strip()[:120]
        by_error[key] = by_error.get(key, 0) + 1
    checked: dict[str, Any] = {"checked": False}
    if server.database_url:
        checked = {
            "checked": True,
            "acknowledged_turns": len(load.turn_ids),
            "missing_turns": missing_rows(server.database_url, "turns", load.turn_ids),
            "acknowledged_jobs": len(load.job_ids),
            "missing_jobs": missing_rows(server.database_url, "ingestion_jobs", load.job_ids),
        }
    return {
        "config": {
            "url": server.url,
            "clients": args.clients,
            "duration_s": args.duration,
            "turns_per_request": args.turns_per_request,
            "turns_per_session": args.turns_per_session,
            "broker_url": args.broker_url or "(server default)",
            "server_startup_s": server.startup_s,
        },
        "requests": len(load.outcomes),
        "accepted": len(ok),
        "errors": len(errors),
        "errors_by_kind": by_error,
        "elapsed_s": round(load.elapsed_s, 2),
        "requests_per_s": round(len(load.outcomes) / load.elapsed_s, 1),
        "turns_per_s": round(len(load.turn_ids) / load.elapsed_s, 1),
        "latency": summarize_ms([o.latency_s for o in ok]),
        "persistence": checked,
    }


def chart(load: Load, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = np.array([o.started_s for o in load.outcomes])
    latency_ms = np.array([o.latency_s * 1000 for o in load.outcomes])
    seconds = np.arange(int(np.ceil(load.elapsed_s)) + 1)
    per_second = np.histogram(starts, bins=seconds)[0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(seconds[:-1], per_second, drawstyle="steps-post")
    top.set_ylabel("requests started / s")
    bottom.scatter(starts, latency_ms, s=3, alpha=0.4)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds into the run")
    top.set_title(f"POST /sessions/{{id}}/turns, {len(load.outcomes)} requests")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url:
        server_cm: Any = _given(Server(args.url.rstrip("/"), args.api_key, args.database_url))
    else:
        extra = {"MEMR1_BROKER_URL": args.broker_url} if args.broker_url else {}
        server_cm = started_server(
            args.out, args.name, workers=False, startup_timeout_s=args.startup_timeout, env=extra
        )
    with server_cm as server:
        print(f"{args.clients} clients posting turns for {args.duration:.0f} s ...", flush=True)
        load = asyncio.run(run_load(server, args))
        results = results_of(load, server, args)
    persistence = results["persistence"]
    print(
        f"\nrequests {results['requests']}  accepted {results['accepted']}  "
        f"errors {results['errors']} {results['errors_by_kind'] or ''}\n"
        f"throughput {results['requests_per_s']} requests/s ({results['turns_per_s']} turns/s)\n"
        f"latency {results['latency']}\n"
        f"persistence {persistence}"
    )
    checks = [
        Target("errors", results["errors"], 0, "requests"),
    ]
    if persistence["checked"]:
        checks.append(Target("acknowledged turns missing", persistence["missing_turns"], 0, ""))
    else:
        print("acknowledged turns not checked: pass --database-url with --url")
    results["targets"] = [t.as_dict() for t in checks]
    print_targets(checks)
    path = write_json(args.name, results, args.out)
    chart(load, args.out / f"{args.name}.png")
    print(f"\nwrote {path} and {args.out / (args.name + '.png')}")
    return 0 if all(t.passed for t in checks) else 1


@contextmanager
def _given(server: Server) -> Iterator[Server]:
    yield server


if __name__ == "__main__":
    sys.exit(main())
