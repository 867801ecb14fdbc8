import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import xgrammar as xgr
from transformers import AutoTokenizer

from app.episodes.views import fact_from_json
from app.memory.manager import validate_operations
from app.memory.prompts import manager_schema, mentions
from training.datasets import memory_from_dict
from training.warm_start import manager_warm_start_rows

BEHAVIOUR = Path(__file__).resolve().parents[2] / "bench" / "behaviour.json"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return manager_warm_start_rows(300)


def test_every_kind_of_decision_is_taught(rows: list[dict]) -> None:
    kinds = Counter(tuple(row["expected_ops"]) for row in rows)
    assert set(kinds) == {("ADD",), ("NOOP",), ("UPDATE",), ("DELETE", "ADD")}
    # New facts stay the most common decision, as in a real conversation.
    assert kinds[("ADD",)] == max(kinds.values())


def test_each_reply_is_applied_as_exactly_the_expected_operations(rows: list[dict]) -> None:
    for row in rows:
        candidates = [memory_from_dict(m) for m in row["candidates"]]
        operations, rejected = validate_operations(
            json.loads(row["completion"]), candidates, fact=fact_from_json(row["fact"])
        )
        assert rejected == [], row["completion"]
        done = sorted(op.kind.value for op in operations) or ["NOOP"]
        assert done == sorted(row["expected_ops"])


def test_an_update_replaces_or_merges_with_the_memory_it_names(rows: list[dict]) -> None:
    updates = 0
    for row in rows:
        reply = json.loads(row["completion"])["operations"][0]
        if reply["op"] != "UPDATE":
            continue
        updates += 1
        memory = next(m for m in row["candidates"] if m["key"] == reply["id"])
        fact = row["fact"]["text"]
        assert reply["text"] in (fact, f"{memory['text']} {fact}")
        # The memory it changes is about the same person as the fact.
        assert mentions(memory["text"], row["fact"]["speaker"])
    assert updates > 0


@pytest.mark.model
def test_replies_are_what_the_serving_grammar_lets_the_model_write(
    rows: list[dict], bundled_model_dir: Path
) -> None:
    """Separators and key order as xgrammar forces them, so SFT teaches serving's tokens."""
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    compiler = xgr.GrammarCompiler(info)
    for row in rows[:100]:
        schema = manager_schema([memory_from_dict(m) for m in row["candidates"]])
        grammar = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        matcher = xgr.GrammarMatcher(grammar)
        assert matcher.accept_string(row["completion"]), row["completion"]


def test_held_out_rows_share_no_names_with_training_rows(rows: list[dict]) -> None:
    held_out = manager_warm_start_rows(100, held_out=True)
    assert {r["fact"]["speaker"] for r in rows}.isdisjoint({r["fact"]["speaker"] for r in held_out})


def test_no_row_uses_a_behaviour_suite_speaker(rows: list[dict]) -> None:
    """The suite measures the warm start; it must not have been trained on its people."""
    suite = {s["speaker"] for s in json.loads(BEHAVIOUR.read_text())["scenarios"]}
    held_out = manager_warm_start_rows(100, held_out=True)
    for row in rows + held_out:
        shown = [row["fact"]["text"], *(m["text"] for m in row["candidates"])]
        assert not any(mentions(text, name) for text in shown for name in suite)


def test_rows_are_the_same_for_a_seed() -> None:
    assert manager_warm_start_rows(20, seed=3) == manager_warm_start_rows(20, seed=3)
    assert manager_warm_start_rows(20, seed=3) != manager_warm_start_rows(20, seed=4)


def test_training_rows_may_show_more_changes() -> None:
    def changes(rows: list[dict]) -> int:
        return sum(row["expected_ops"] not in (["ADD"], ["NOOP"]) for row in rows)

    assert changes(manager_warm_start_rows(200, change_share=0.6)) > changes(
        manager_warm_start_rows(200)
    )
    with pytest.raises(ValueError, match="change_share"):
        manager_warm_start_rows(10, change_share=0.9)


def test_the_rows_are_the_ones_the_shipped_manager_learned_from() -> None:
    """The shipped Manager's card command draws these rows; a change to them needs a
    retrained adapter and this digest updated with it."""
    rows = manager_warm_start_rows(480, change_share=0.55, near_share=0.3)
    for row in rows:
        row.pop("decision")
        row.pop("expected_reply")  # the same as "completion", for GRPO's reward
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    assert digest == "02b363970c91159f3de1eafd9e4e2aa381f97436e5af66aac717f5bebd026517"


def test_a_new_fact_beside_its_memory_is_added_and_keeps_the_memory() -> None:
    rows = manager_warm_start_rows(200, near_share=1.0)
    related = [row for row in rows if row["decision"] == "related"]
    assert related
    for row in related:
        assert row["expected_ops"] == ["ADD"]
        speaker, fact = row["fact"]["speaker"], row["fact"]["text"]
        assert mentions(fact, speaker)
        # The memory it sits beside is shown, and the question is answered from that memory
        # (a yes/no one from what it says, "hates olives" for "Does Olga like olives?").
        if row["gold"] not in ("yes", "no"):
            about = [m["text"] for m in row["candidates"] if row["gold"] in m["text"]]
            assert about and all(mentions(text, speaker) for text in about)
    assert not any(row["decision"] == "related" for row in manager_warm_start_rows(200))
