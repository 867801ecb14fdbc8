import json
import re
import uuid
import zlib
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest
from datasets import Dataset

from app.episodes.views import fact_from_json, fact_json
from app.memory.guard import check
from app.memory.prompts import answer_messages, extraction_messages, format_date, manager_messages
from app.memory.schemas import Fact, MemoryView
from tests.conftest import SHARED_DATA
from training.datasets import (
    Retriever,
    answer_rows_from_eval,
    answer_rows_from_locomo,
    extractor_rows_from_locomo,
    load_encoder,
    manager_rows_from_locomo,
    memory_from_dict,
    memory_to_dict,
    observation_bank,
    rows_from_episodes,
)
from training.eval.loaders import load_locomo

DATA = SHARED_DATA / "locomo"
TRAIN = DATA / "locomo_train_conv26.json"
VAL = DATA / "locomo_val_conv30.json"


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in for MiniLM: hashed word counts, normalised."""
    vectors = np.zeros((len(texts), 4096), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            vectors[row, zlib.crc32(word.encode()) % 4096] += 1.0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-9)


@pytest.fixture(scope="module")
def retriever() -> Retriever:
    return Retriever(bag_of_words)


@pytest.fixture(scope="module")
def answer_rows(retriever: Retriever) -> list[dict]:
    return answer_rows_from_locomo(TRAIN, retriever, per_speaker=5)


@pytest.fixture(scope="module")
def manager_rows(retriever: Retriever) -> list[dict]:
    return manager_rows_from_locomo(TRAIN, retriever, candidates=4)


def memory(key: str, text: str, speaker: str | None = "Ann") -> MemoryView:
    return MemoryView(key, uuid.uuid4(), text, speaker, datetime(2023, 5, 1, tzinfo=UTC))


class TestSerialisation:
    def test_memory_round_trip(self) -> None:
        original = memory("m3", "Ann likes tea.")
        assert memory_from_dict(memory_to_dict(original)) == original
        undated = MemoryView("m1", uuid.uuid4(), "x", None, None)
        assert memory_from_dict(memory_to_dict(undated)) == undated

    def test_fact_round_trip(self) -> None:
        fact = Fact("Ann moved.", "Ann", datetime(2023, 5, 2, 13, 5, tzinfo=UTC))
        assert fact_from_json(fact_json(fact)) == fact


class TestRetriever:
    def test_ranks_by_similarity_and_caches(self) -> None:
        calls: list[list[str]] = []

        def encode(texts: list[str]) -> np.ndarray:
            calls.append(texts)
            return bag_of_words(texts)

        retriever = Retriever(encode)
        bank = [memory("", "Ann likes tea."), memory("", "Ann adopted a dog named Rex.")]
        assert retriever.rank("What is the dog called?", bank)[0].text == bank[1].text
        retriever.rank("Does Ann like tea?", bank)
        assert calls[2:] == [["Does Ann like tea?"]]  # memory texts were embedded once

    def test_for_answer_splits_per_speaker_and_rekeys(self, retriever: Retriever) -> None:
        bank = [memory("", f"Ann fact {i}", "Ann") for i in range(5)]
        bank += [memory("", f"Bob fact {i}", "Bob") for i in range(5)]
        shown = retriever.for_answer("fact", bank, ("Ann", "Bob"), per_speaker=2)
        assert Counter(m.speaker for m in shown) == {"Ann": 2, "Bob": 2}
        assert [m.key for m in shown] == ["m1", "m2", "m3", "m4"]
        # Without two speakers the best 2 * per_speaker are shown.
        assert len(retriever.for_answer("fact", bank, (), per_speaker=3)) == 6


class TestLocomoBank:
    def test_bank_holds_every_observation_dated(self) -> None:
        [conv] = load_locomo(TRAIN)
        bank = observation_bank(conv)
        assert len(bank) == sum(len(s.observations) for s in conv.sessions)
        assert [m.key for m in bank[:3]] == ["m1", "m2", "m3"]
        assert all(re.match(r"On \d{1,2} \w+ \d{4}, ", m.text) for m in bank)
        assert all(m.speaker in (conv.speaker_a, conv.speaker_b) for m in bank)
        assert len({m.id for m in bank}) == len(bank)
        assert observation_bank(conv) == bank  # ids are stable across builds
        dates = [m.occurred_at for m in bank]
        assert dates == sorted(dates)  # dialogue order


class TestAnswerRows:
    def test_the_papers_152_training_questions(self, answer_rows: list[dict]) -> None:
        assert len(answer_rows) == 152
        assert 5 not in {row["category"] for row in answer_rows}
        assert all(row["gold"] for row in answer_rows)

    def test_category_5_on_request(self, retriever: Retriever) -> None:
        rows = answer_rows_from_locomo(TRAIN, retriever, per_speaker=2, categories=[5])
        assert len(rows) == 47 and {row["category"] for row in rows} == {5}

    def test_prompt_is_the_serving_prompt(self, answer_rows: list[dict]) -> None:
        row = answer_rows[0]
        assert row["prompt"][0] == answer_messages(row["question"], [])[0]
        last = row["prompt"][-1]["content"]
        assert last.endswith(f"Question: {row['question']}")
        assert row["memory_keys"] == [f"m{i + 1}" for i in range(10)]
        assert all(re.search(rf"^{key} ", last, re.MULTILINE) for key in row["memory_keys"])
        assert row["rating"] is None and row["logged_answer"] is None

    def test_rows_load_into_a_dataset(self, answer_rows: list[dict]) -> None:
        dataset = Dataset.from_list(answer_rows)
        assert len(dataset) == 152
        assert dataset[0]["prompt"] == answer_rows[0]["prompt"]


class TestManagerRows:
    def test_one_row_per_question_with_observed_evidence(self, manager_rows: list[dict]) -> None:
        assert 100 < len(manager_rows) < 152
        assert 5 not in {row["category"] for row in manager_rows}

    def test_state_is_the_bank_before_the_new_fact(self, manager_rows: list[dict]) -> None:
        for row in manager_rows:
            fact = fact_from_json(row["fact"])
            bank = [memory_from_dict(m) for m in row["bank"]]
            assert all(m.occurred_at <= fact.occurred_at for m in bank)
            assert fact.text not in {m.text for m in bank}
            candidates = [memory_from_dict(m) for m in row["candidates"]]
            assert len(candidates) == min(4, len(bank))
            assert {m.id for m in candidates} <= {m.id for m in bank}
            assert row["prompt"] == manager_messages(fact, candidates)
            assert row["speakers"] == ["Caroline", "Melanie"]

    def test_new_fact_comes_from_the_evidence(self, manager_rows: list[dict]) -> None:
        row = next(r for r in manager_rows if "LGBTQ support group" in r["question"])
        assert "support group" in row["fact"]["text"]
        assert row["fact"]["text"].startswith("On 8 May 2023, Caroline")

    def test_rows_load_into_a_dataset(self, manager_rows: list[dict]) -> None:
        dataset = Dataset.from_list(manager_rows)
        assert dataset[3]["bank"] == manager_rows[3]["bank"]


class TestEpisodes:
    MEMORIES = [
        memory_to_dict(memory("m1", "Ann lives in Rome.")),
        memory_to_dict(memory("m2", "x")),
    ]

    def answer_episode(self, feedback: dict | None, output: dict | None = None) -> dict:
        episode = {
            "agent": "answer",
            "input": {"question": "Where does Ann live?", "memories": self.MEMORIES},
            "feedback": feedback,
        }
        if output is not None:
            episode["output"] = output
        return episode

    def test_answer_episodes(self) -> None:
        episodes = [
            self.answer_episode({"gold_answer": "Rome", "rating": None}),
            self.answer_episode({"gold_answer": None, "rating": 1}, {"answer": "Rome"}),
            self.answer_episode({"gold_answer": None, "rating": -1}, {"answer": "Paris"}),
            self.answer_episode({"gold_answer": None, "rating": 1}),  # no logged answer
            self.answer_episode({"gold_answer": None, "rating": 0}, {"answer": "Rome"}),
            self.answer_episode(None),
        ]
        rows = rows_from_episodes(episodes, "answer")
        assert [(r["gold"], r["rating"], r["logged_answer"]) for r in rows] == [
            ("Rome", None, None),
            (None, 1, "Rome"),
            (None, -1, "Paris"),
        ]
        assert rows[0]["memory_keys"] == ["m1", "m2"]
        assert "m1 [1 May 2023] Ann lives in Rome." in rows[0]["prompt"][-1]["content"]
        assert len(Dataset.from_list(rows)) == 3

    def test_answer_rows_from_an_eval_run(self) -> None:
        """Questions of an eval run with the memories their episodes logged; one without an
        episode (a failed answer) is skipped, and the LoCoMo category is kept."""
        questions = [
            {"question": "Where does Ann live?", "gold": "Rome", "category": 4, "episode_id": "e1"},
            {"question": "When?", "gold": "7 May 2023", "category": 2, "episode_id": None},
        ]
        rows = answer_rows_from_eval(questions, {"e1": self.MEMORIES})
        assert [(r["question"], r["gold"], r["category"]) for r in rows] == [
            ("Where does Ann live?", "Rome", 4)
        ]
        assert rows[0]["memory_keys"] == ["m1", "m2"]
        assert rows[0]["prompt"] == answer_messages(
            "Where does Ann live?", [memory_from_dict(m) for m in self.MEMORIES]
        )

    def test_manager_episodes_need_a_question_and_gold(self) -> None:
        fact = fact_json(Fact("Ann moved to Paris.", "Ann", None))
        base = {"agent": "manager", "input": {"fact": fact, "candidates": self.MEMORIES}}
        episodes = [
            {**base, "feedback": {"question": "Where does Ann live?", "gold_answer": "Paris"}},
            {**base, "feedback": {"rating": 1}},
            self.answer_episode({"gold_answer": "Rome"}),  # another agent's episode
        ]
        [row] = rows_from_episodes(episodes, "manager")
        assert row["gold"] == "Paris" and row["bank"] == row["candidates"] == self.MEMORIES
        assert row["prompt"][-1]["content"].endswith("<fact>Ann moved to Paris.</fact>")


@pytest.mark.model
def test_minilm_retrieves_the_evidence() -> None:
    rows = answer_rows_from_locomo(VAL, Retriever(load_encoder()), per_speaker=10)
    assert len(rows) == 81
    row = next(r for r in rows if r["question"] == "When Jon has lost his job as a banker?")
    assert "lost his job as a banker" in row["prompt"][-1]["content"]


class TestExtractorRows:
    @pytest.fixture(scope="class")
    def rows(self) -> list[dict]:
        return extractor_rows_from_locomo(TRAIN)

    def test_the_reply_is_the_turns_observations_as_facts(self, rows: list[dict]) -> None:
        [conv] = load_locomo(TRAIN)
        turns = {t.text: t for s in conv.sessions for t in s.turns}
        for row in rows:
            assert json.loads(row["completion"]) == {"facts": row["facts"]}
            assert row["prompt"] == extraction_messages(
                row["speaker"], row["turn"], datetime.fromisoformat(row["occurred_at"]), 3
            )
            assert turns[row["turn"]].speaker == row["speaker"]
            date = format_date(datetime.fromisoformat(row["occurred_at"]))
            for fact in row["facts"]:
                assert fact.startswith(f"On {date}, ") and row["speaker"] in fact

    def test_no_row_teaches_what_the_guard_would_drop(self, rows: list[dict]) -> None:
        for row in rows:
            for fact in row["facts"]:
                at = datetime.fromisoformat(row["occurred_at"])
                assert check(fact, [row["turn"]], row["speaker"], at).text is not None, fact
                assert "conversation" not in fact.lower()

    def test_turns_without_observations_are_a_share_of_the_rows(self, rows: list[dict]) -> None:
        empty = sum(not row["facts"] for row in rows)
        assert 0.35 <= empty / len(rows) <= 0.45
        # Spread over the dialogue, not bunched at its start.
        half = rows[: len(rows) // 2]
        assert 0.25 <= sum(not row["facts"] for row in half) / empty <= 0.75
