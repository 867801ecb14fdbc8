"""The memory-behaviour suite: hand-written scenarios (bench/behaviour.json) run through the API
with the bundled model, one fresh user each, then checked on the live bank and on /ask answers.

Each scenario runs twice, with the base agents (``"base"`` adapters) and with the trained ones
(``"active"``: the adapters shipped in app/adapters/defaults, registered as global defaults;
an agent with none shipped runs its base model there too).

Figures, per side: banks right, operations right (UPDATE / DELETE where a scenario expects
one), answers right, operations by kind, overrides (guard cuts, rejected operations), and how
many live memories repeat a sentence or name what no turn said. Every bank, answer and
override is printed so they can be read.
Targets: the trained side gets >= 80 % of banks and of answers right and beats the base side on
both; no memory on either side repeats a sentence or names what no turn said. Exits 1 when a
target fails.

    python -m bench.behaviour [--only NAME] [--top-k K]
"""

import argparse
import asyncio
import json
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from app.adapters.service import install_defaults
from app.core.config import Settings
from app.core.db import transaction, upgrade_to_head
from app.memory.guard import sentences
from app.memory.schemas import text_key
from app.models import Episode, User
from bench.common import (
    Target,
    bench_api,
    embedded_database,
    print_targets,
    recreate_database,
    write_json,
)

SCENARIOS = Path(__file__).with_name("behaviour.json")
_WORD = re.compile(r"[A-Za-z]+|\d+")
_MONTHS = {
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
}  # fmt: skip


def invented(memory: str, turns: list[str], speaker: str) -> list[str]:
    """Names (capitalised words past a sentence start) and numbers in ``memory`` that neither
    the turns, the speaker nor a date gives: a crude, independent check of the guard."""
    said = {w.casefold() for w in _WORD.findall(" ".join(turns) + " " + speaker)}
    found = []
    for sentence in sentences(re.sub(r"^[^:]*:\s*", "", memory)):
        words = _WORD.findall(sentence)
        for i, word in enumerate(words):
            if word.casefold() in said or word in _MONTHS or word == "I":
                continue
            if word.isdigit() and (len(word) == 4 or int(word) <= 31):
                continue  # a day or a year, as resolved dates write them
            if word.isdigit() or (i > 0 and word[0].isupper()):
                found.append(word)
    return found


def repeats_sentence(memory: str) -> bool:
    """Whether a sentence of ``memory`` says again (or starts again) one before it, ignoring
    labels ("Ann:", "Ann on 8 May 2023:") and dates."""
    keys = [
        text_key(re.sub(r"^[^:]*:\s*|\bOn \d+ \w+ \d{4},?\s*", "", s)) for s in sentences(memory)
    ]
    return any(
        keys[j].startswith(keys[i]) or keys[i].startswith(keys[j])
        for i in range(len(keys))
        for j in range(i)
    )


def says(text: str, word: str) -> bool:
    """Whether ``word`` starts a word of ``text`` ("cancel" in "cancelled"), ignoring case; a
    number must be the whole number ("5" is not in "15.56")."""
    end = r"(?![\d])" if word[-1].isdigit() else ""
    return re.search(rf"(?<![\w.]){re.escape(word)}{end}", text, re.IGNORECASE) is not None


def check_bank(scenario: dict[str, Any], bank: list[str]) -> list[str]:
    """What is wrong with ``bank`` (live memory texts) for ``scenario``; empty when right."""
    lowered = [m.casefold() for m in bank]
    problems = []
    for words in scenario.get("bank_has", []):
        if not any(all(says(m, w) for w in words) for m in bank):
            problems.append(f"no memory has {' + '.join(words)}")
    for pattern in scenario.get("bank_lacks", []):
        if any(re.search(pattern, m) for m in lowered):
            problems.append(f"a memory matches {pattern}")
    if "max_memories" in scenario and len(bank) > scenario["max_memories"]:
        problems.append(f"{len(bank)} memories, at most {scenario['max_memories']} expected")
    return problems


def answer_right(check: dict[str, Any], answer: str) -> bool:
    return all(says(answer, w) for w in check.get("answer_has", [])) and (
        not check.get("answer_any") or any(says(answer, w) for w in check["answer_any"])
    )


# The adapter choice each side sends for every agent.
SIDES = {"base": "base", "trained": "active"}


async def run_scenario(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    scenario: dict[str, Any],
    top_k: int | None,
    adapters: str,
) -> dict[str, Any]:
    user = f"behaviour-{uuid.uuid4().hex[:8]}"
    ops: Counter[str] = Counter()
    for at, text in scenario["turns"]:
        body = {
            "user_id": user,
            "turns": [{"speaker": scenario["speaker"], "text": text, "occurred_at": at}],
            "manager_adapter": adapters,
            "extractor_adapter": adapters,
        }
        response = await client.post(
            f"/sessions/{user}/turns?wait=true", json=body, headers=headers
        )
        response.raise_for_status()
        ops.update(op["op"] for op in response.json()["operations"] or [])
    page = (await client.get(f"/users/{user}/memories?limit=200", headers=headers)).json()
    bank = [item["text"] for item in page["items"]]
    answers = []
    for check in scenario["questions"]:
        question = {
            "user_id": user,
            "question": check["question"],
            "answer_adapter": adapters,
        } | ({"top_k": top_k} if top_k else {})
        response = await client.post("/ask", json=question, headers=headers)
        response.raise_for_status()
        answer = response.json()["answer"]
        answers.append(
            {"question": check["question"], "answer": answer, "right": answer_right(check, answer)}
        )
    turns = [text for _, text in scenario["turns"]]
    expected = scenario.get("expect_ops")
    return {
        "name": scenario["name"],
        "user": user,
        "bank": bank,
        "bank_problems": check_bank(scenario, bank),
        "ops": dict(ops),
        "ops_right": None if not expected else any(ops[k] for k in expected),
        "answers": answers,
        "repeated_sentence": [m for m in bank if repeats_sentence(m)],
        "invented": {m: words for m in bank if (words := invented(m, turns, scenario["speaker"]))},
    }


async def overrides(runtime: Any, users: list[str]) -> list[dict[str, str]]:
    """Everything the checks overrode for ``users``, in the order it happened: the sentences
    the guard cut from facts and Manager texts, the Manager's rejected operations, overruled
    NOOPs and DELETEs that would have lost their fact."""
    async with transaction(runtime.sessions) as db:
        rows = (
            await db.execute(
                select(Episode.agent, Episode.parsed)
                .join(User, User.id == Episode.user_id)
                .where(User.external_id.in_(users))
                .order_by(Episode.created_at)
            )
        ).all()
    found = []
    for agent, parsed in rows:
        for item in (parsed or {}).get("rejected", []):
            raw = item["raw"]
            text = raw if isinstance(raw, str) else raw.get("sentence", json.dumps(raw))
            found.append({"agent": str(agent), "text": str(text), "reason": item["reason"]})
    return found


def report(results: list[dict[str, Any]], cut: list[dict[str, str]]) -> None:
    for r in results:
        verdict = "right" if not r["bank_problems"] else "; ".join(r["bank_problems"])
        print(f"\n== {r['name']}: bank {verdict}; ops {r['ops']} (expected ok: {r['ops_right']})")
        for memory in r["bank"]:
            print(f"   memory: {memory}")
        for a in r["answers"]:
            print(f"   {'RIGHT' if a['right'] else 'WRONG'} {a['question']} -> {a['answer']}")
    print(f"\n== {len(cut)} overrides")
    for item in cut:
        print(f"   {item['agent']}: {item['text']!r} ({item['reason']})")


def figures_of(results: list[dict[str, Any]], cut: list[dict[str, str]]) -> dict[str, Any]:
    answers = [a for r in results for a in r["answers"]]
    expected_ops = [r for r in results if r["ops_right"] is not None]
    ops: Counter[str] = Counter()
    for r in results:
        ops.update(r["ops"])
    return {
        "scenarios": len(results),
        "banks_right": sum(not r["bank_problems"] for r in results),
        "ops_right": sum(bool(r["ops_right"]) for r in expected_ops),
        "ops_expected": len(expected_ops),
        "answers_right": sum(a["right"] for a in answers),
        "answers": len(answers),
        "operations": dict(ops),
        "overrides": len(cut),
        "memories_repeating_a_sentence": sum(len(r["repeated_sentence"]) for r in results),
        "memories_with_invented_words": sum(len(r["invented"]) for r in results),
    }


def share(figures: dict[str, Any], key: str, total: str) -> float:
    return float(figures[key]) / max(int(figures[total]), 1)


async def main(args: argparse.Namespace) -> int:
    scenarios = json.loads(SCENARIOS.read_text())["scenarios"]
    if args.only:
        scenarios = [s for s in scenarios if s["name"] == args.only]
    server, url = embedded_database(Path(args.pgdata), "bench_behaviour")
    recreate_database(url, "bench_behaviour")
    upgrade_to_head(url)
    settings = Settings(database_url=url, data_dir=Path(args.data_dir))
    runtime, app, headers = await bench_api(settings, max_batch_size=4)
    sides: dict[str, dict[str, Any]] = {}
    try:
        async with transaction(runtime.sessions) as db:
            shipped = [a.name for a in await install_defaults(db, settings)]
        print("trained side: shipped adapters", shipped or "none", flush=True)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", timeout=600
        ) as client:
            for side, adapters in SIDES.items():
                results = []
                for i, scenario in enumerate(scenarios, 1):
                    print(f"[{side} {i}/{len(scenarios)}] {scenario['name']}", flush=True)
                    results.append(
                        await run_scenario(client, headers, scenario, args.top_k, adapters)
                    )
                cut = await overrides(runtime, [r["user"] for r in results])
                sides[side] = {"results": results, "overrides": cut}
    finally:
        await runtime.close()
        server.stop()
    for side, run in sides.items():
        print(f"\n==== {side} agents")
        report(run["results"], run["overrides"])
        run["figures"] = figures_of(run["results"], run["overrides"])
    print()
    for side, run in sides.items():
        f = run["figures"]
        print(
            f"{side:>8}: banks right {f['banks_right']}/{f['scenarios']}, "
            f"ops right {f['ops_right']}/{f['ops_expected']}, "
            f"answers right {f['answers_right']}/{f['answers']}, ops by kind {f['operations']}"
        )
    base, trained = sides["base"]["figures"], sides["trained"]["figures"]
    garbage = {
        key: sum(run["figures"][key] for run in sides.values())
        for key in ("memories_repeating_a_sentence", "memories_with_invented_words")
    }
    targets = [
        Target("trained: banks right", share(trained, "banks_right", "scenarios"), 0.8, "", True),
        Target("trained: answers right", share(trained, "answers_right", "answers"), 0.8, "", True),
        Target(
            "trained - base: banks right",
            share(trained, "banks_right", "scenarios") - share(base, "banks_right", "scenarios"),
            1e-9,
            "",
            True,
        ),
        Target(
            "trained - base: answers right",
            share(trained, "answers_right", "answers") - share(base, "answers_right", "answers"),
            1e-9,
            "",
            True,
        ),
        Target("memories repeating a sentence", garbage["memories_repeating_a_sentence"], 0, ""),
        Target("memories naming what no turn said", garbage["memories_with_invented_words"], 0, ""),
    ]
    print_targets(targets)
    payload = {
        "top_k": args.top_k,
        "shipped_adapters": shipped,
        "sides": sides,
        "targets": [t.as_dict() for t in targets],
    }
    print("written", write_json("behaviour", payload))
    return 0 if all(t.passed for t in targets) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="run the scenario of this name only")
    parser.add_argument(
        "--top-k", type=int, default=None, help="memories /ask retrieves (default: the service's)"
    )
    parser.add_argument("--pgdata", default="/tmp/memr1-bench-behaviour-pg")
    parser.add_argument("--data-dir", default=str(Path.home() / ".local/share/memory-r1-bench"))
    raise SystemExit(asyncio.run(main(parser.parse_args())))
