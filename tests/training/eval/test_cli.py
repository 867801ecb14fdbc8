"""``memory-r1 eval`` arguments, and a whole run in process: baselines with a scripted model
and the service configurations through a small ASGI app that speaks the service's API."""

import argparse
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_DATA
from tests.training.eval.test_targets import BagOfWordsEmbedder, ScriptedLLM
from training.eval.cli import EvalUsageError, add_arguments, run_from_args
from training.eval.loaders import DEFAULT_CATEGORIES
from training.eval.targets import ServiceRejected

CONV26 = SHARED_DATA / "locomo" / "locomo_train_conv26.json"
CONV30 = SHARED_DATA / "locomo" / "locomo_val_conv30.json"

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class FakeService:
    """The two endpoints the harness uses: stores turns per user, answers with the latest
    stored turn of the user, and refuses requests without the right key."""

    def __init__(self) -> None:
        self.turns: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.ingest_adapters: set[tuple[str, str]] = set()  # (extractor, manager)
        self.asks: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, reply = self.handle(scope, json.loads(body or b"{}"))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(reply).encode()})

    def handle(self, scope: dict[str, Any], payload: dict[str, Any]) -> tuple[int, Any]:
        if dict(scope["headers"]).get(b"authorization") != b"Bearer eval-key":
            return 401, {"error": "unauthorized", "detail": "bad key"}
        path = scope["path"]
        if path.endswith("/turns") and scope["query_string"] == b"wait=true":
            self.turns[payload["user_id"]].extend(payload["turns"])
            self.ingest_adapters.add((payload["extractor_adapter"], payload["manager_adapter"]))
            ops = [{"op": "ADD"}] * len(payload["turns"])
            return 200, {
                "turn_ids": [],
                "ingestion_job_id": "j",
                "status": "succeeded",
                "operations": ops,
            }
        if path == "/ask":
            self.asks.append(payload)
            latest = self.turns[payload["user_id"]][-1]
            memory = {
                "id": "m-uuid",
                "text": latest["text"],
                "speaker": latest["speaker"],
                "occurred_at": latest["occurred_at"],
            }
            adapter = None if payload["answer_adapter"] == "base" else payload["answer_adapter"]
            return 200, {
                "answer": latest["text"][:40],
                "memories": [memory],
                "episode_id": "e1",
                "model": "smol",
                "adapter": adapter,
            }
        return 404, {"error": "not_found", "detail": path}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="memory-r1 eval")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    args = parse("--data", str(CONV30))
    assert args.data == [CONV30]
    assert args.configs == ["full-context", "rag", "base"]
    assert args.categories == DEFAULT_CATEGORIES
    assert (args.limit_questions, args.seed, args.top_k) == (None, 0, 60)
    assert args.judge_url is None and args.server_url is None
    assert args.out == Path("results/eval")


def test_lists_and_categories_parse() -> None:
    args = parse(
        "--data",
        str(CONV26),
        str(CONV30),
        "--configs",
        "base,trained-both",
        "--categories",
        "1,5",
        "--conversations",
        "conv-30",
    )
    assert args.configs == ["base", "trained-both"]
    assert args.categories == frozenset({1, 5})
    assert args.conversations == ["conv-30"]
    with pytest.raises(SystemExit):
        parse("--data", str(CONV30), "--categories", "6")


@pytest.mark.parametrize(
    ("argv", "kwargs", "problem"),
    [
        (["--configs", "trained-answer"], {"app": object()}, "--answer-adapter"),
        (
            ["--configs", "trained-both", "--answer-adapter", "a"],
            {"app": object()},
            "--manager-adapter",
        ),
        (["--configs", "base"], {}, "--server-url"),
        (["--configs", "base", "--server-url", "http://s"], {}, "--api-key"),
        (["--configs", "full-context"], {}, "in process"),
        (["--configs", "rag"], {"llm": ScriptedLLM()}, "embedder"),
        (["--configs", "everything"], {}, "--configs"),
        (["--configs", "base", "--judge-url", "http://j"], {"app": object()}, "--judge-model"),
    ],
)
async def test_runs_that_cannot_be_done_are_refused(
    tmp_path: Path, argv: list[str], kwargs: dict[str, Any], problem: str
) -> None:
    args = parse("--data", str(CONV30), "--out", str(tmp_path), *argv)
    with pytest.raises(EvalUsageError, match=problem):
        await run_from_args(args, **kwargs)


async def test_unknown_conversations_are_refused(tmp_path: Path) -> None:
    args = parse(
        "--data",
        str(CONV30),
        "--out",
        str(tmp_path),
        "--configs",
        "full-context",
        "--conversations",
        "conv-99",
    )
    with pytest.raises(EvalUsageError, match="conv-99"):
        await run_from_args(args, llm=ScriptedLLM())


async def test_a_whole_run_in_process(tmp_path: Path) -> None:
    service = FakeService()
    args = parse(
        "--data",
        str(CONV26),
        str(CONV30),
        "--conversations",
        "conv-30",
        "--configs",
        "full-context,rag,add-only,base,trained-answer,trained-both",
        "--answer-adapter",
        "answer-ad",
        "--manager-adapter",
        "manager-ad",
        "--limit-questions",
        "3",
        "--seed",
        "7",
        "--api-key",
        "eval-key",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    )
    embedder = BagOfWordsEmbedder(["gina", "jon", "dance", "store", "studio"])
    out = await run_from_args(args, app=service, llm=ScriptedLLM(), embedder=embedder)

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["configs"]) == [
        "full-context",
        "rag",
        "add-only",
        "base",
        "trained-answer",
        "trained-both",
    ]
    assert all(c["answered"] == 3 for c in summary["configs"].values())
    assert summary["seed"] == 7 and summary["conversations"] == ["conv-30"]
    assert summary["configs"]["trained-both"]["target"] == {
        "kind": "service",
        "extractor_adapter": "active",
        "manager_adapter": "manager-ad",
        "answer_adapter": "answer-ad",
        "top_k": 60,
    }
    assert summary["configs"]["trained-answer"]["adapters"] == ["answer-ad"]
    assert summary["data"] == [str(CONV26), str(CONV30)]
    # 369 turns do not fit an 8k window: the baseline says so
    (note,) = summary["configs"]["full-context"]["notes"]
    assert "context truncated to the last" in note

    # base and trained-answer share the base manager's bank: three banks, each one ingestion;
    # add-only asks no Manager and answers with the base model; only trained-both extracts
    # with the trained extractor
    assert len(service.turns) == 3
    assert all(len(turns) == 369 for turns in service.turns.values())
    assert service.ingest_adapters == {
        ("base", "add-only"),
        ("base", "base"),
        ("active", "manager-ad"),
    }
    assert [a["answer_adapter"] for a in service.asks] == ["base"] * 6 + ["answer-ad"] * 6
    assert (out / "results.md").exists() and (out / "chart.png").exists()

    # a rerun of the same command asks nothing and ingests nothing
    asks_before = len(service.asks)
    await run_from_args(args, app=service, llm=ScriptedLLM(), embedder=embedder)
    assert len(service.asks) == asks_before and len(service.turns) == 3


async def test_a_wrong_key_stops_the_run(tmp_path: Path) -> None:
    args = parse(
        "--data",
        str(CONV30),
        "--configs",
        "base",
        "--api-key",
        "wrong",
        "--limit-questions",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    )
    with pytest.raises(ServiceRejected, match="401"):
        await run_from_args(args, app=FakeService())
