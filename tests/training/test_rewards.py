import copy
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from app.episodes.views import fact_json
from app.memory.schemas import Fact, MemoryView, as_views, rekey
from training.datasets import memory_to_dict
from training.rewards import (
    answer_format_reward,
    answer_format_score,
    answer_reward,
    completion_text,
    decision_score,
    exact_match_reward,
    f1_reward,
    manager_format_score,
    manager_outcome_reward,
    parse_json,
    rated_score,
)


def reply(selected: list[str], answer: str) -> str:
    return json.dumps({"selected": selected, "answer": answer})


def as_message(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


KEYS = ["m1", "m2", "m3"]


class TestParsing:
    def test_completion_text_accepts_both_shapes(self) -> None:
        assert completion_text("abc") == "abc"
        assert completion_text(as_message("abc")) == "abc"

    def test_forced_reply_prefix_is_put_back(self) -> None:
        prefix = '{"selected": ['
        completion = '"m1"], "answer": "Rome"}'
        rewards = answer_reward("em", 0.5)(
            [],
            [completion],
            gold=["Rome"],
            category=[4],
            memory_keys=[KEYS],
            response_prefix=[prefix],
        )
        assert rewards == [1.0]

    def test_parse_json_reports_trailing_text(self) -> None:
        assert parse_json(' {"a": 1} ') == ({"a": 1}, True)
        assert parse_json('{"a": 1} and more') == ({"a": 1}, False)
        assert parse_json("no json") == (None, False)


class TestAnswerOutcome:
    def test_exact_match(self) -> None:
        completions = [
            as_message(reply(["m1"], "7 May 2023")),
            as_message(reply(["m1"], "8 May 2023")),
            as_message("7 May 2023"),  # right words, but not the output serving can read
        ]
        gold = ["7 May 2023"] * 3
        assert exact_match_reward([], completions, gold=gold, category=[2, 2, 2]) == [
            1.0,
            0.0,
            0.0,
        ]

    def test_f1_gives_partial_credit(self) -> None:
        completions = [as_message(reply([], "in Rome, Italy")), as_message(reply([], "Rome"))]
        rewards = f1_reward([], completions, gold=["Rome", "Rome"], category=[4, 4])
        assert rewards[0] == pytest.approx(0.5)
        assert rewards[1] == 1.0

    def test_trailing_text_does_not_change_the_answer(self) -> None:
        completion = reply(["m1"], "Rome") + " I hope this helps"
        assert f1_reward([], [completion], gold=["Rome"], category=[4]) == [1.0]

    def test_open_domain_uses_first_gold_alternative(self) -> None:
        completion = reply([], "psychology")
        rewards = exact_match_reward(
            [], [completion], gold=["psychology; counseling"], category=[3]
        )
        assert rewards == [1.0]

    def test_rated_rows_follow_the_rating(self) -> None:
        endorsed = rated_score("Rome", "Rome", 1, "f1")
        rejected = rated_score("Rome", "Rome", -1, "f1")
        other = rated_score("Paris", "Rome", -1, "f1")
        assert endorsed == 1.0 and rejected == -1.0 and other == 0.0
        rewards = f1_reward(
            [],
            [reply([], "Rome"), reply([], "Rome")],
            gold=[None, None],
            category=[4, 4],
            rating=[1, -1],
            logged_answer=["Rome", "Rome"],
        )
        assert rewards == [1.0, -1.0]

    def test_row_without_gold_or_rating_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="gold answer, or a rating"):
            f1_reward([], [reply([], "x")], gold=[None], category=[4])


class TestAnswerFormat:
    @pytest.mark.parametrize(
        ("text", "score"),
        [
            (reply(["m1", "m3"], "Rome"), 1.0),
            (reply([], "Rome"), 1.0),
            (reply(["m9"], "Rome"), 0.75),  # names a memory it was not shown
            (reply(["m1", "m1"], "Rome"), 0.75),  # repeats
            (reply(["m1", "m2", "m3", "m1", "m2", "m3"], "Rome"), 0.75),  # too many
            (reply(["m1"], ""), 0.75),  # blank answer
            (reply(["m1"], "x" * 101), 0.75),  # longer than the schema allows
            (reply(["m1"], "Rome") + " trailing", 0.75),
            (json.dumps({"selected": ["m1"], "answer": "Rome", "why": "m1"}), 0.75),
            (json.dumps({"answer": "Rome"}), 0.5),  # no selected list
            (json.dumps(["Rome"]), 0.0),
            ("Rome", 0.0),
        ],
    )
    def test_scores(self, text: str, score: float) -> None:
        assert answer_format_score(text, KEYS) == pytest.approx(score)

    def test_reward_uses_each_rows_keys(self) -> None:
        completions = [reply(["m3"], "a"), reply(["m3"], "a")]
        assert answer_format_reward([], completions, memory_keys=[KEYS, ["m1"]]) == [1.0, 0.75]


class TestAnswerReward:
    def test_mixes_outcome_and_format(self) -> None:
        reward = answer_reward("f1", 0.2)
        assert reward.__name__ == "answer_f1"
        completions = [
            as_message(reply(["m1"], "Rome")),  # right and well formed
            as_message(reply(["m9"], "Rome")),  # right, unknown key
            as_message(reply(["m1"], "Paris")),  # wrong, well formed
            as_message("Rome"),  # unusable
        ]
        logged: dict[str, list[float]] = {}
        rewards = reward(
            [],
            completions,
            gold=["Rome"] * 4,
            category=[4] * 4,
            memory_keys=[KEYS] * 4,
            log_metric=lambda name, value: logged.setdefault(name, []).append(value),
        )
        assert rewards == pytest.approx([1.0, 0.8 + 0.2 * 0.75, 0.2, 0.0])
        assert logged["outcome"] == [pytest.approx(0.5)]
        assert logged["format"] == [pytest.approx((1 + 0.75 + 1 + 0) / 4)]

    def test_em_reward_is_named_after_its_kind(self) -> None:
        assert answer_reward("em", 0.0).__name__ == "answer_em"

    @pytest.mark.parametrize(("kind", "weight"), [("judge", 0.1), ("f1", -0.1), ("em", 1.5)])
    def test_rejects_bad_arguments(self, kind: str, weight: float) -> None:
        with pytest.raises(ValueError):
            answer_reward(kind, weight)


# --- Memory Manager -------------------------------------------------------------------------

MAY_1 = datetime(2023, 5, 1, tzinfo=UTC)
MAY_2 = datetime(2023, 5, 2, tzinfo=UTC)
BANK = as_views(
    [
        (uuid.UUID(int=1), "On 1 May 2023, Ann adopted a dog named Rex.", "Ann", MAY_1),
        (uuid.UUID(int=2), "On 1 May 2023, Ann lives in Paris.", "Ann", MAY_1),
        (uuid.UUID(int=3), "On 1 May 2023, Bob likes tea.", "Bob", MAY_1),
    ]
)
CANDIDATES = rekey([BANK[1], BANK[0]])  # m1 = Paris, m2 = Rex
FACT = Fact("On 2 May 2023, Ann moved to Rome.", "Ann", MAY_2)


def manager_reply(*operations: tuple[str, str, str]) -> str:
    return json.dumps({"operations": [{"op": o, "id": i, "text": t} for o, i, t in operations]})


class StubAnswerer:
    """Answers where Ann lives from the memories it is shown, and records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[MemoryView]]] = []

    def __call__(self, requests: Sequence[tuple[str, list[MemoryView]]]) -> list[str | None]:
        self.requests.extend(requests)
        return [
            "Rome" if any("Rome" in m.text for m in shown) else "Paris" for _, shown in requests
        ]


def retrieve_all(
    question: str, bank: list[MemoryView], speakers: Sequence[str]
) -> list[MemoryView]:
    return rekey(bank)


def manager_columns(n: int) -> dict[str, list[object]]:
    return {
        "fact": [fact_json(FACT)] * n,
        "candidates": [[memory_to_dict(m) for m in CANDIDATES]] * n,
        "bank": [[memory_to_dict(m) for m in BANK]] * n,
        "speakers": [["Ann", "Bob"]] * n,
        "question": ["Where does Ann live?"] * n,
        "gold": ["Rome"] * n,
        "category": [4] * n,
    }


class TestManagerFormat:
    @pytest.mark.parametrize(
        ("text", "score"),
        [
            (manager_reply(("ADD", "", "")), 1.0),  # an ADD stores the fact
            (manager_reply(("UPDATE", "m1", "Ann lives in Rome.")), 1.0),
            (manager_reply(("NOOP", "", "")), 1.0),
            (manager_reply(("DELETE", "m7", "")), 0.5),  # not a shown memory
            (manager_reply(("UPDATE", "m1", "")), 0.5),  # an update needs a text
            (
                manager_reply(
                    ("ADD", "", "x"), ("ADD", "", "y"), ("ADD", "", "z"), ("NOOP", "", "")
                ),
                0.5,
            ),
            (manager_reply(("NOOP", "", "")) + " done", 0.5),
            (json.dumps({"operations": []}), 0.5),
            (json.dumps({"ops": []}), 0.0),
            ("ADD Ann moved to Rome", 0.0),
        ],
    )
    def test_scores(self, text: str, score: float) -> None:
        assert manager_format_score(text, CANDIDATES, FACT) == score


class TestManagerOutcome:
    def test_rewards_the_operations_that_make_the_question_answerable(self) -> None:
        answerer = StubAnswerer()
        reward = manager_outcome_reward(answerer, "em", 0.2, retrieve=retrieve_all)
        assert reward.__name__ == "manager_em"
        completions = [
            manager_reply(("ADD", "", "")),
            manager_reply(("UPDATE", "m1", "On 2 May 2023, Ann lives in Rome.")),
            manager_reply(("NOOP", "", "")),
            manager_reply(("DELETE", "m1", "")),
            "not json at all",
            manager_reply(("UPDATE", "m9", "Ann lives in Rome.")),  # rejected: changes nothing
        ]
        columns = manager_columns(len(completions))
        before = copy.deepcopy(columns)
        rewards = reward([], [as_message(c) for c in completions], **columns)
        assert rewards == pytest.approx([1.0, 1.0, 0.2, 0.2, 0.0, 0.1])
        assert columns == before  # the row's bank is copied, never changed

    def test_the_bank_the_answerer_sees_reflects_the_operations(self) -> None:
        answerer = StubAnswerer()
        reward = manager_outcome_reward(answerer, "f1", 0.0, retrieve=retrieve_all)
        reward(
            [],
            [manager_reply(("DELETE", "m2", "")), manager_reply(("ADD", "", ""))],
            **manager_columns(2),
        )
        deleted, added = (shown for _, shown in answerer.requests)
        assert [m.text for m in deleted] == [BANK[1].text, BANK[2].text]  # Rex is gone
        assert added[-1].text == FACT.text
        assert added[-1].speaker == "Ann" and added[-1].occurred_at == MAY_2  # from the fact
        assert [m.key for m in added] == ["m1", "m2", "m3", "m4"]

    def test_identical_outcomes_are_answered_once(self) -> None:
        answerer = StubAnswerer()
        reward = manager_outcome_reward(answerer, "em", 0.0, retrieve=retrieve_all)
        completions = [manager_reply(("NOOP", "", ""))] * 3 + ["garbage"]
        assert reward([], completions, **manager_columns(4)) == [0.0] * 4
        assert len(answerer.requests) == 1  # NOOP and unusable output leave the same bank

    def test_logs_outcome_and_format(self) -> None:
        logged: dict[str, float] = {}
        reward = manager_outcome_reward(StubAnswerer(), "em", 0.5, retrieve=retrieve_all)
        reward(
            [],
            [manager_reply(("ADD", "", "")), "garbage"],
            log_metric=logged.__setitem__,
            **manager_columns(2),
        )
        assert logged == {"outcome": 0.5, "format": 0.5}


class TestManagerDecision:
    """Generated rows know their decision (``expected_reply``): a share of the outcome goes to
    it."""

    @pytest.mark.parametrize(
        ("text", "expected", "score"),
        [
            (manager_reply(("UPDATE", "m1", "On 2 May 2023, Ann moved to Rome.")), "UPDATE m1", 1),
            (manager_reply(("UPDATE", "m2", "On 2 May 2023, Ann moved to Rome.")), "UPDATE m1", 0),
            (manager_reply(("ADD", "", "")), "UPDATE m1", 0),
            (manager_reply(("ADD", "", "")), "ADD", 1),
            (manager_reply(("NOOP", "", "")), "NOOP", 1),
            (manager_reply(("DELETE", "m1", ""), ("ADD", "", "")), "DELETE m1 ADD", 1),
            (manager_reply(("DELETE", "m1", "")), "DELETE m1 ADD", 0),
            (manager_reply(("DELETE", "m7", "")), "NOOP", 0),  # unknown key: nothing applied
            ("garbage", "NOOP", 0),
        ],
    )
    def test_scores_the_operations_serving_applies(
        self, text: str, expected: str, score: float
    ) -> None:
        words = expected.split()
        ops = [
            (w, words[i + 1] if w in ("UPDATE", "DELETE") else "", "")
            for i, w in enumerate(words)
            if not w.startswith("m")
        ]
        columns = manager_columns(1) | {"expected_reply": [manager_reply(*ops)]}
        reward = manager_outcome_reward(
            StubAnswerer(), "em", 0.0, retrieve=retrieve_all, decision_weight=1.0
        )
        assert reward([], [text], **columns) == [score]

    def test_mixes_decision_and_outcome_and_leaves_other_rows_to_the_outcome(self) -> None:
        logged: dict[str, float] = {}
        reward = manager_outcome_reward(
            StubAnswerer(), "em", 0.0, retrieve=retrieve_all, decision_weight=0.5
        )
        update = manager_reply(("UPDATE", "m1", "On 2 May 2023, Ann moved to Rome."))
        add = manager_reply(("ADD", "", ""))
        columns = manager_columns(3) | {"expected_reply": [update, update, None]}
        # Both answer "Rome"; only the UPDATE is the decision the row calls for. The third row
        # knows no decision: its ADD gets the whole outcome.
        rewards = reward([], [update, add, add], log_metric=logged.__setitem__, **columns)
        assert rewards == [1.0, 0.5, 1.0]
        assert logged["decision"] == 0.5  # over the two rows that know it

    def test_decision_score_of_an_unusable_output_is_zero(self) -> None:
        assert decision_score(None, CANDIDATES, manager_reply(("NOOP", "", ""))) == 0.0

    def test_rejects_a_weight_outside_0_1(self) -> None:
        with pytest.raises(ValueError, match="decision_weight"):
            manager_outcome_reward(
                StubAnswerer(), "em", 0.0, retrieve=retrieve_all, decision_weight=1.5
            )
