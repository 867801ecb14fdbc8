"""``memory-r1 eval``: the arguments and the wiring from them to :func:`run_eval`.

The project's CLI owns the process (settings, the in-process app, model and embedder); this
module only adds the eval arguments to its parser and runs an evaluation from them.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from app.core.schemas import ADD_ONLY
from app.llm.backend import LLMBackend
from training.eval.harness import EvalOptions, run_eval
from training.eval.judge import LLMJudge
from training.eval.loaders import CATEGORY_NAMES, DEFAULT_CATEGORIES, load_conversations
from training.eval.targets import (
    DEFAULT_TOP_K,
    Embedder,
    FullContextTarget,
    PlainRagTarget,
    ServiceTarget,
    Target,
    service_client,
)

CONFIGS = ("full-context", "rag", "add-only", "base", "trained-answer", "trained-both")
SERVICE_CONFIGS = frozenset({"add-only", "base", "trained-answer", "trained-both"})
DEFAULT_CONFIGS = "full-context,rag,base"

T = TypeVar("T")


class EvalUsageError(ValueError):
    """The arguments do not describe a run that can be done; the message says what to add."""


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _categories(text: str) -> frozenset[int]:
    try:
        values = frozenset(int(part) for part in _csv(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"categories are numbers, e.g. 1,2,3,4: {text}") from exc
    if not values or not values <= set(CATEGORY_NAMES):
        raise argparse.ArgumentTypeError(
            "categories are 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial"
        )
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        nargs="+",
        type=Path,
        required=True,
        metavar="FILE",
        help="LoCoMo-format JSON files (e.g. locomo10.json) or MSC JSONL files.",
    )
    data.add_argument(
        "--conversations",
        type=_csv,
        default=None,
        metavar="IDS",
        help="Comma-separated sample ids to evaluate (default: every conversation).",
    )
    data.add_argument(
        "--categories",
        type=_categories,
        default=DEFAULT_CATEGORIES,
        metavar="NUMS",
        help="LoCoMo categories: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, "
        "5 adversarial (default 1,2,3,4, as the paper).",
    )
    data.add_argument(
        "--limit-questions",
        type=int,
        default=None,
        metavar="N",
        help="At most N questions per conversation, sampled with --seed.",
    )
    data.add_argument("--seed", type=int, default=0, help="Seed of the question sample.")

    run = parser.add_argument_group("configurations")
    run.add_argument(
        "--configs",
        type=_csv,
        default=_csv(DEFAULT_CONFIGS),
        metavar="NAMES",
        help=f"Comma-separated, from {', '.join(CONFIGS)} (default {DEFAULT_CONFIGS}).",
    )
    run.add_argument(
        "--answer-adapter",
        default=None,
        metavar="ID",
        help="Trained Answer Agent adapter id, or 'active' for what serves the tenant (its "
        "own active adapter, else the shipped default) (trained-answer, trained-both).",
    )
    run.add_argument(
        "--manager-adapter",
        default=None,
        metavar="ID",
        help="Trained Memory Manager adapter id, or 'active' (trained-both).",
    )
    run.add_argument(
        "--extractor-adapter",
        default="active",
        metavar="ID",
        help="Trained fact extractor adapter id, or 'active' (default: the tenant's own "
        "active adapter, else the shipped default) (trained-both; the other service rows use "
        "the base extractor).",
    )
    run.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="Memories retrieved (<=60).")
    run.add_argument(
        "--context-tokens",
        type=int,
        default=8192,
        help="The answer model's context window, for the full-context baseline.",
    )
    run.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="Questions in flight per configuration (raise it for a batching server).",
    )

    service = parser.add_argument_group("service (remote; default: in process)")
    service.add_argument("--server-url", default=None, help="Base URL of a running service.")
    service.add_argument("--api-key", default=None, help="API key with the memory scope.")
    service.add_argument(
        "--ingest-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="Read timeout of one session's ingestion request (it waits for the Manager).",
    )

    judge = parser.add_argument_group("LLM judge (J column; off unless --judge-url is given)")
    judge.add_argument(
        "--judge-url", default=None, help="OpenAI-compatible base or chat completions URL."
    )
    judge.add_argument("--judge-model", default=None, help="Judge model name.")
    judge.add_argument("--judge-api-key", default=None, help="Bearer token for the judge.")

    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=Path("results/eval"),
        metavar="DIR",
        help="Results directory; running again with the same one resumes.",
    )
    out.add_argument("--no-progress", action="store_true", help="No progress bars.")


def _check(args: argparse.Namespace, *, app: Any, llm: Any, embedder: Any) -> None:
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        raise EvalUsageError(f"--configs takes names from {', '.join(CONFIGS)}; got {unknown}")
    configs = set(args.configs)
    if configs & {"trained-answer", "trained-both"} and not args.answer_adapter:
        raise EvalUsageError("trained-answer and trained-both need --answer-adapter ID")
    if "trained-both" in configs and not args.manager_adapter:
        raise EvalUsageError("trained-both needs --manager-adapter ID")
    if configs & SERVICE_CONFIGS and args.server_url is None and app is None:
        raise EvalUsageError("service configurations need --server-url (or an in-process app)")
    if args.server_url is not None and not args.api_key:
        raise EvalUsageError("--server-url needs --api-key")
    if configs & {"full-context", "rag"} and llm is None:
        raise EvalUsageError(
            "full-context and rag call the answer model directly: "
            "run in process, or leave them out of --configs"
        )
    if "rag" in configs and embedder is None:
        raise EvalUsageError("rag needs an embedder: run in process, or leave it out")
    if not 1 <= args.top_k <= 60:
        raise EvalUsageError("--top-k must be between 1 and 60")
    if (args.judge_url is None) != (args.judge_model is None):
        raise EvalUsageError("the judge needs both --judge-url and --judge-model")


def _need(value: T | None, problem: str) -> T:
    if value is None:
        raise EvalUsageError(problem)
    return value


def build_targets(
    configs: Sequence[str],
    *,
    client: httpx.AsyncClient | None,
    llm: LLMBackend | None,
    embedder: Embedder | None,
    answer_adapter: str | None,
    manager_adapter: str | None,
    extractor_adapter: str = "active",
    top_k: int = DEFAULT_TOP_K,
    context_tokens: int = 8192,
) -> list[Target]:
    """One target per configuration name, in the order given."""
    targets: list[Target] = []
    for name in configs:
        match name:
            case "full-context":
                model = _need(llm, "full-context needs the answer model")
                targets.append(FullContextTarget(model, context_tokens=context_tokens))
            case "rag":
                model = _need(llm, "rag needs the answer model")
                vectors = _need(embedder, "rag needs an embedder")
                targets.append(PlainRagTarget(model, vectors, top_k=top_k))
            case "add-only":
                http = _need(client, "add-only needs a client for the service")
                targets.append(
                    ServiceTarget(
                        name, http, manager_adapter=ADD_ONLY, answer_adapter="base", top_k=top_k
                    )
                )
            case "base" | "trained-answer" | "trained-both":
                http = _need(client, f"{name} needs a client for the service")
                answer = (
                    "base"
                    if name == "base"
                    else _need(answer_adapter, f"{name} needs an answer adapter id")
                )
                manager = (
                    _need(manager_adapter, f"{name} needs a manager adapter id")
                    if name == "trained-both"
                    else "base"
                )
                extractor = extractor_adapter if name == "trained-both" else "base"
                targets.append(
                    ServiceTarget(
                        name,
                        http,
                        manager_adapter=manager,
                        answer_adapter=answer,
                        extractor_adapter=extractor,
                        top_k=top_k,
                    )
                )
            case _:
                raise EvalUsageError(f"unknown configuration {name!r}")
    return targets


async def run_from_args(
    args: argparse.Namespace,
    *,
    app: Any = None,
    llm: LLMBackend | None = None,
    embedder: Embedder | None = None,
) -> Path:
    """Run the evaluation the arguments describe; returns the results directory.

    ``app`` is the service's ASGI app for in-process runs (ignored with ``--server-url``);
    ``llm`` and ``embedder`` serve the baselines that bypass the memory bank."""
    _check(args, app=app, llm=llm, embedder=embedder)
    conversations = load_conversations(args.data)
    if args.conversations:
        known = {c.sample_id for c in conversations}
        missing = [c for c in args.conversations if c not in known]
        if missing:
            raise EvalUsageError(f"no conversation {', '.join(missing)} in {args.data}")
        conversations = [c for c in conversations if c.sample_id in args.conversations]
    options = EvalOptions(
        out_dir=args.out,
        categories=frozenset(args.categories),
        limit_questions=args.limit_questions,
        seed=args.seed,
        concurrency=args.concurrency,
        progress=not args.no_progress,
        data_files=tuple(str(p) for p in args.data),
    )
    client = None
    if set(args.configs) & SERVICE_CONFIGS:
        client = service_client(
            base_url=args.server_url,
            app=None if args.server_url else app,
            api_key=args.api_key,
            timeout_s=args.ingest_timeout,
        )
    judge = None
    if args.judge_url is not None:
        judge = LLMJudge(args.judge_url, args.judge_model, args.judge_api_key)
    try:
        targets = build_targets(
            args.configs,
            client=client,
            llm=llm,
            embedder=embedder,
            answer_adapter=args.answer_adapter,
            manager_adapter=args.manager_adapter,
            extractor_adapter=args.extractor_adapter,
            top_k=args.top_k,
            context_tokens=args.context_tokens,
        )
        return await run_eval(conversations, targets, options, judge=judge)
    finally:
        if client is not None:
            await client.aclose()
        if judge is not None:
            await judge.aclose()
