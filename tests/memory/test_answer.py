import uuid
from datetime import datetime

import pytest

from app.core.errors import BadUpstreamResponse, UnusableOutput, Upstream
from app.memory.answer import answer_question, parse_answer, split_per_speaker
from app.memory.prompts import answer_schema
from app.memory.schemas import MemoryView, as_views
from tests.fixtures.fake_llm import FakeLLM, Reply

MAY_8 = datetime(2023, 5, 8)


def memories(n: int, speaker: str | None = "Caroline") -> list[MemoryView]:
    return as_views([(uuid.uuid4(), f"fact {i}", speaker, MAY_8) for i in range(n)])


class TestParseAnswer:
    def test_unknown_and_repeated_keys_are_dropped_in_model_order(self) -> None:
        shown = memories(3)
        parsed = {
            "selected": ["m3", "m9", str(shown[0].id), "m1", "m3", 1],
            "answer": " 7 May  2023 ",
        }

        selected, answer, error = parse_answer(parsed, shown)

        assert selected == [shown[2], shown[0]]
        assert answer == "7 May 2023"
        assert error is None

    @pytest.mark.parametrize(
        ("written", "expected"),
        [
            ("2023-05-08 23:30:52", "8 May 2023"),
            ("On 2023-05-08T23:30:52Z.", "On 8 May 2023."),
            ("2023-05-08", "8 May 2023"),
            ("2023-13-45", "2023-13-45"),
            ("at 10:30 on 8 May 2023", "at 10:30 on 8 May 2023"),
        ],
    )
    def test_a_timestamp_is_written_as_the_memories_write_dates(
        self, written: str, expected: str
    ) -> None:
        _, answer, _ = parse_answer({"selected": [], "answer": written}, memories(1))
        assert answer == expected

    def test_nothing_selected_is_allowed(self) -> None:
        assert parse_answer({"selected": [], "answer": "Single"}, memories(2)) == (
            [],
            "Single",
            None,
        )

    def test_blank_answer_is_an_error(self) -> None:
        shown = memories(1)
        selected, answer, error = parse_answer({"selected": ["m1"], "answer": "  "}, shown)
        assert selected == shown and answer is None and error == "empty answer"

    @pytest.mark.parametrize(
        "parsed",
        [
            None,
            "Single",
            ["m1"],
            {"answer": "x"},
            {"selected": "m1", "answer": "x"},
            {"selected": [], "answer": 3},
        ],
    )
    def test_wrong_shape_is_an_error(self, parsed: object) -> None:
        selected, answer, error = parse_answer(parsed, memories(1))
        assert selected == [] and answer is None and error


class TestAnswerQuestion:
    async def test_answers_from_the_selected_memories(self) -> None:
        shown = memories(60)
        llm = FakeLLM([{"selected": ["m2", "m61"], "answer": "Adoption agencies"}])

        result = await answer_question(
            llm, "What did Caroline research?", shown, adapter="answer-v1"
        )

        assert result.error is None
        assert result.answer == "Adoption agencies"
        assert result.selected == [shown[1]]
        assert result.completion is not None and result.completion.adapter == "answer-v1"
        [call] = llm.calls
        assert call.json_schema == answer_schema([m.key for m in shown], call.last_user)
        assert call.temperature == 0.0
        assert all(f"m{i + 1} [8 May 2023] Caroline: fact {i}" in call.last_user for i in range(60))
        assert call.last_user.endswith("Question: What did Caroline research?")

    @pytest.mark.parametrize("reply", ["Adoption agencies", '{"selected": ["m1"], "answ'])
    async def test_malformed_output_is_an_error(self, reply: Reply) -> None:
        result = await answer_question(FakeLLM([reply]), "Q?", memories(2))
        assert result.error and result.answer is None and result.selected == []

    async def test_unusable_upstream_answer_is_an_error(self) -> None:
        result = await answer_question(FakeLLM([UnusableOutput("bad")]), "Q?", memories(2))
        assert result.answer is None and result.completion is None and result.error

    @pytest.mark.parametrize("error", [Upstream("down"), BadUpstreamResponse("HTTP 404")])
    async def test_an_outage_or_a_refused_request_propagates(self, error: Exception) -> None:
        with pytest.raises(type(error)):
            await answer_question(FakeLLM([error]), "Q?", memories(2))


class TestSplitPerSpeaker:
    def test_keeps_the_best_of_each_speaker_in_rank_order(self) -> None:
        ranked = as_views(
            [
                (uuid.uuid4(), f"{s} {i}", s, None)
                for i in range(40)
                for s in ("Caroline", "Melanie")
            ]
        )

        kept = split_per_speaker(ranked, ("Caroline", "Melanie"))

        assert len(kept) == 60
        assert [m.key for m in kept] == [f"m{i}" for i in range(1, 61)]
        assert [m.text for m in kept] == [
            f"{s} {i}" for i in range(30) for s in ("Caroline", "Melanie")
        ]

    def test_one_speakers_memories_do_not_crowd_out_the_other(self) -> None:
        ranked = as_views(
            [(uuid.uuid4(), f"C{i}", "Caroline", None) for i in range(50)]
            + [(uuid.uuid4(), f"M{i}", "Melanie", None) for i in range(5)]
        )

        kept = split_per_speaker(ranked, ("Caroline", "Melanie"), per_speaker=3)

        assert [m.text for m in kept] == ["C0", "C1", "C2", "M0", "M1", "M2"]
        assert kept[3].id == ranked[50].id

    def test_other_speakers_are_left_out(self) -> None:
        ranked = as_views(
            [
                (uuid.uuid4(), "a", "Caroline", None),
                (uuid.uuid4(), "b", None, None),
                (uuid.uuid4(), "c", "Bob", None),
            ]
        )
        assert [m.text for m in split_per_speaker(ranked, ("Caroline", "Melanie"))] == ["a"]
