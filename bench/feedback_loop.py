"""Learning from production feedback, end to end, through the HTTP API only.

A user's agent would do exactly this: start `memory-r1 serve` (with its workers), send
conv-26's sessions, ask its questions, post each gold answer as feedback, then start one
training job per agent (`source=episodes`, `activate=if_better`, validated on conv-30). The
adapters the gate activates are then compared with the base agents on conv-30 through the
API: two configurations of the service (base Manager and Answer Agent; the active ones)
answer the same questions from banks they each built (F1 / BLEU-1 / EM, the eval harness's
report and chart). Target: the active configuration beats the base on conv-30 F1, question by
question, with the 95 % bootstrap interval of the gain above 0. Exits 1 when a target fails (a
job that failed, no adapter activated, no gain beyond the noise).

    python -m bench.feedback_loop                                   # every session (hours)
    python -m bench.feedback_loop --sessions 2 --questions 20 --steps 4   # a slice
"""

import argparse
import asyncio
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    OUT_DIR,
    Server,
    Target,
    print_targets,
    started_server,
    write_json,
)
from training.datasets import dia_ids  # noqa: E402
from training.eval.harness import EvalOptions, run_eval, select_questions  # noqa: E402
from training.eval.loaders import DEFAULT_CATEGORIES, Conversation, load_locomo  # noqa: E402
from training.eval.report import OVERALL  # noqa: E402
from training.eval.targets import ServiceTarget, service_client  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo"
CONV26 = DATA / "locomo_train_conv26.json"
CONV30 = DATA / "locomo_val_conv30.json"
AGENTS = ("answer", "manager")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=None, help="sessions of each conversation")
    parser.add_argument(
        "--questions", type=int, default=None, help="questions of each conversation (sampled)"
    )
    parser.add_argument("--steps", type=int, default=40, help="GRPO steps of each training job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--job-timeout", type=float, default=4 * 3600, help="seconds per job")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    return parser.parse_args(argv)


def sliced(conversation: Conversation, sessions: int | None) -> Conversation:
    """The first ``sessions`` sessions, with the questions whose evidence lies in them."""
    if sessions is None:
        return conversation
    kept = conversation.sessions[:sessions]
    prefixes = tuple(f"D{s.index}:" for s in kept)
    return replace(
        conversation,
        sessions=kept,
        qa=[
            qa
            for qa in conversation.qa
            if (ids := dia_ids(qa.evidence)) and all(i.startswith(prefixes) for i in ids)
        ],
    )


def validation_file(
    conversation: Conversation, source: Path, target: Path, limit: int | None, seed: int
) -> int:
    """A LoCoMo file of ``source``'s conversation whose questions are those the evaluation
    asks, for the training jobs' gate (the gate answers from the conversation's gold
    observations, so the whole conversation stays); returns how many questions it holds."""
    asked = {
        qa.question for _, qa in select_questions(conversation, DEFAULT_CATEGORIES, limit, seed)
    }
    [sample] = json.loads(source.read_text(encoding="utf-8"))
    sample = {**sample, "qa": [qa for qa in sample["qa"] if qa["question"] in asked]}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps([sample]), encoding="utf-8")
    return len(sample["qa"])


async def production(
    client: httpx.AsyncClient, conversation: Conversation, limit: int | None, seed: int
) -> dict[str, Any]:
    """Ingest the conversation with the serving agents, ask its questions, post the gold
    answers as feedback; what was asked and answered."""
    service = ServiceTarget(
        "production",
        client,
        manager_adapter="active",
        answer_adapter="active",
        extractor_adapter="active",
    )
    user = f"{conversation.sample_id}-production"
    print(
        f"ingesting {conversation.sample_id}: {len(conversation.sessions)} sessions, "
        f"{len(conversation.turns)} turns (one request per session, waiting for each)",
        flush=True,
    )
    started = time.perf_counter()
    report = await service.prepare(conversation, user)
    ingest_s = time.perf_counter() - started
    answers = []
    questions = select_questions(conversation, DEFAULT_CATEGORIES, limit, seed)
    for _, qa in tqdm(questions, desc="asking conv-26, posting feedback", unit="question"):
        answer = await service.answer(conversation, user, qa.question)
        response = await client.post(
            "/feedback", json={"episode_id": answer.episode_id, "gold_answer": qa.answer}
        )
        response.raise_for_status()
        answers.append({"question": qa.question, "gold": qa.answer, "answer": answer.answer})
    return {
        "ingest_s": round(ingest_s, 1),
        "operations": report.operations,
        "feedback": len(answers),
        "answers": answers,
    }


async def train(
    client: httpx.AsyncClient, agent: str, validation: str, steps: int, timeout_s: float
) -> dict[str, Any]:
    """One training job from the tenant's episodes, gated on ``validation``; its end state."""
    response = await client.post(
        "/admin/training-jobs",
        json={
            "agent": agent,
            "source": "episodes",
            "validation_dataset": validation,
            "params": {"max_steps": steps},
            "activate": "if_better",
        },
    )
    response.raise_for_status()
    job = response.json()
    started = time.perf_counter()
    with tqdm(total=steps, desc=f"training the {agent} agent", unit="step") as bar:
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"training job {job['id']} still {job['status']}")
            await asyncio.sleep(5)
            job = (await client.get(f"/admin/training-jobs/{job['id']}")).json()
            step = (job.get("metrics") or {}).get("step")
            if isinstance(step, int) and step > bar.n:
                bar.update(step - bar.n)
    adapters = (await client.get("/admin/adapters", params={"agent": agent})).json()
    trained = next((a for a in adapters if a["id"] == job["adapter_id"]), None)
    return {
        "job_id": job["id"],
        "status": job["status"],
        "error": job["error"],
        "wall_s": round(time.perf_counter() - started, 1),
        "validation": (job.get("metrics") or {}).get("validation"),
        "adapter_id": job["adapter_id"],
        "activated": bool(trained and trained["status"] == "active"),
        "log_tail": job["log_tail"].splitlines()[-8:],
    }


async def evaluate(
    client: httpx.AsyncClient, conversation: Conversation, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """conv-30 through the API, the base agents against the active ones: the harness's
    summary, and the gain question by question."""
    targets = [
        ServiceTarget("base", client, manager_adapter="base", answer_adapter="base"),
        ServiceTarget(
            "trained",
            client,
            manager_adapter="active",
            answer_adapter="active",
            extractor_adapter="active",
        ),
    ]
    out_dir = args.out / "feedback_loop"
    shutil.rmtree(out_dir, ignore_errors=True)  # a rerun would resume from banks now gone
    options = EvalOptions(
        out_dir=out_dir,
        limit_questions=args.questions,
        seed=args.seed,
        data_files=(str(CONV30),),
    )
    await run_eval([conversation], targets, options)
    summary: dict[str, Any] = json.loads((out_dir / "summary.json").read_text())
    return summary, paired_gain(out_dir / "questions.jsonl", args.seed)


async def run(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    assert server.data_dir is not None
    [conv26] = load_locomo(CONV26)
    [conv30] = load_locomo(CONV30)
    conv26, conv30 = sliced(conv26, args.sessions), sliced(conv30, args.sessions)
    gate = server.data_dir / "datasets" / "conv30-validation.json"
    gate_questions = validation_file(conv30, CONV30, gate, args.questions, args.seed)
    started = time.perf_counter()
    async with service_client(base_url=server.url, api_key=server.api_key) as client:
        results: dict[str, Any] = {
            "production": await production(client, conv26, args.questions, args.seed)
        }
        results["gate_questions"] = gate_questions
        results["jobs"] = {
            agent: await train(client, agent, str(gate), args.steps, args.job_timeout)
            for agent in AGENTS
        }
        results["conv30"], results["conv30_gain"] = await evaluate(client, conv30, args)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    return results


def paired_gain(questions: Path, seed: int, resamples: int = 2000) -> dict[str, Any]:
    """The trained configuration's F1 minus the base's, question by question: wins, losses,
    ties, the mean gain and its 95 % bootstrap interval (a gain of a few questions in twenty
    is within the noise, and the interval says so)."""
    f1: dict[str, dict[int, float]] = {"base": {}, "trained": {}}
    for line in questions.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        f1[row["config"]][int(row["qa_index"])] = float(row["scores"]["f1"])
    both = sorted(set(f1["base"]) & set(f1["trained"]))
    gains = np.array([f1["trained"][i] - f1["base"][i] for i in both])
    if gains.size == 0:
        return {"questions": 0, "mean": 0.0, "ci95": [0.0, 0.0]}
    rng = np.random.default_rng(seed)
    means = rng.choice(gains, size=(resamples, gains.size)).mean(axis=1)
    return {
        "questions": int(gains.size),
        "wins": int((gains > 0).sum()),
        "losses": int((gains < 0).sum()),
        "ties": int((gains == 0).sum()),
        "mean": round(float(gains.mean()), 4),
        "ci95": [round(float(q), 4) for q in np.percentile(means, [2.5, 97.5])],
    }


def targets(results: dict[str, Any]) -> list[Target]:
    gain = results["conv30_gain"]
    checks = [
        Target(f"{agent} job succeeded", float(job["status"] == "succeeded"), 1, "", True)
        for agent, job in results["jobs"].items()
    ]
    checks.append(
        Target(
            "adapters activated",
            sum(job["activated"] for job in results["jobs"].values()),
            1,
            "",
            True,
        )
    )
    # The gain counts when its interval excludes 0 (so no gain over an empty baseline does).
    checks.append(Target("conv-30 F1 gain, 95% CI low", gain["ci95"][0], 1e-4, "", True))
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with started_server(args.out, "feedback_loop", workers=True) as server:
        results = asyncio.run(run(server, args))
    written = write_json("feedback_loop", results, args.out)
    for agent, job in results["jobs"].items():
        print(
            f"{agent}: {job['status']} activated={job['activated']} validation={job['validation']}"
        )
    for name, config in results["conv30"]["configs"].items():
        print(f"conv-30 {name}: {config['scores'][OVERALL]}")
    print(f"conv-30 F1 gain, question by question: {results['conv30_gain']}")
    checks = targets(results)
    print_targets(checks)
    print(f"wrote {written} and {args.out / 'feedback_loop'}/ (results.md, chart.png)")
    return 0 if all(t.passed for t in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
