from datetime import datetime

import pytest

from app.core.errors import BadUpstreamResponse, UnusableOutput, Upstream
from app.llm.backend import LLMBackend
from app.memory.extractor import Extraction, anchor_fact, extract_facts
from app.memory.prompts import extract_schema
from app.memory.schemas import Fact
from tests.fixtures.fake_llm import FakeLLM, Reply

MAY_8 = datetime(2023, 5, 8, 13, 56)


async def extract(
    reply: Reply,
    *,
    at: datetime | None = MAY_8,
    max_facts: int = 5,
    text: str = "I went to a support group yesterday.",
) -> tuple[Extraction, FakeLLM]:
    llm = FakeLLM([reply])
    backend: LLMBackend = llm
    extraction = await extract_facts(
        backend,
        speaker="Caroline",
        text=text,
        occurred_at=at,
        adapter="extractor-v2",
        max_facts=max_facts,
    )
    return extraction, llm


class TestAnchoring:
    @pytest.mark.parametrize(
        ("text", "at", "expected"),
        [
            (
                "On 8 May 2023, Caroline went to a support group.",
                MAY_8,
                "On 8 May 2023, Caroline went to a support group.",
            ),
            (
                "Caroline went to a support group.",
                MAY_8,
                "On 8 May 2023, Caroline went to a support group.",
            ),
            (
                "went to a support group on 8 May 2023.",
                MAY_8,
                "Caroline: went to a support group on 8 May 2023.",
            ),
            (
                "I went to a support group yesterday.",
                MAY_8,
                "Caroline on 8 May 2023: I went to a support group yesterday.",
            ),
            ("I love painting.", None, "Caroline: I love painting."),
            ("caroline loves painting.", None, "caroline loves painting."),
        ],
    )
    def test_adds_what_is_missing(self, text: str, at: datetime | None, expected: str) -> None:
        assert anchor_fact(text, "Caroline", at) == expected

    def test_a_name_containing_the_speaker_does_not_count(self) -> None:
        assert anchor_fact("Carolinex went out.", "Caroline", None).startswith("Caroline: ")


class TestExtractFacts:
    async def test_facts_carry_speaker_and_date(self) -> None:
        extraction, _ = await extract(
            {"facts": ["went to a support group yesterday", "Caroline went to a support group."]}
        )

        assert extraction.error is None
        # A resolved relative date dates the fact; the date of mention is then left out. The
        # second fact says the same with less (no date).
        assert extraction.facts == [
            Fact("Caroline: went to a support group on 7 May 2023", "Caroline", MAY_8)
        ]
        assert extraction.dropped == [
            ("Caroline went to a support group.", "repeats an earlier fact")
        ]

    async def test_what_the_turn_does_not_say_is_dropped_and_logged(self) -> None:
        extraction, _ = await extract(
            {"facts": ["Caroline is transgender.", "Caroline went to a support group."]}
        )

        assert [f.text for f in extraction.facts] == [
            "Caroline went to a support group on 7 May 2023."
        ]
        assert extraction.dropped == [
            ("Caroline is transgender.", "only 0 of its 1 content words are in its source")
        ]

    async def test_calls_the_model_with_the_schema_and_adapter(self) -> None:
        extraction, llm = await extract({"facts": []}, max_facts=3)

        assert extraction.facts == [] and extraction.error is None
        assert extraction.completion is not None
        assert extraction.completion.adapter == "extractor-v2"
        [call] = llm.calls
        assert call.json_schema == extract_schema(3)
        assert call.adapter == "extractor-v2"
        assert call.temperature == 0.0
        assert "I went to a support group yesterday." in call.last_user
        assert "Date: 8 May 2023" in call.last_user

    async def test_blank_and_repeated_facts_are_dropped_and_the_count_capped(self) -> None:
        reply = {
            "facts": [
                "  ",
                "Caroline paints.",
                "caroline  paints",
                "Caroline runs.",
                "Caroline swims.",
            ]
        }
        turn = "I paint, I run and I swim."
        extraction, _ = await extract(reply, at=None, max_facts=2, text=turn)

        assert [f.text for f in extraction.facts] == ["Caroline paints.", "Caroline runs."]

    @pytest.mark.parametrize(
        "reply",
        [
            "Caroline went to a support group.",  # not JSON
            '{"facts": ["Caroline went',  # truncated
            {"fact": ["Caroline paints."]},
            ["Caroline paints."],
            {"facts": "Caroline paints."},
            {"facts": ["Caroline paints.", {"text": "x"}]},
        ],
    )
    async def test_malformed_output_is_an_error_without_facts(self, reply: Reply) -> None:
        extraction, _ = await extract(reply)

        assert extraction.facts == []
        assert extraction.error
        assert extraction.completion is not None  # kept for the episode log

    async def test_unusable_upstream_answer_is_an_error(self) -> None:
        extraction, _ = await extract(UnusableOutput("no JSON in output"))

        assert extraction.facts == [] and extraction.completion is None
        assert extraction.error is not None and "no JSON in output" in extraction.error

    @pytest.mark.parametrize(
        "error", [Upstream("model server unreachable"), BadUpstreamResponse("HTTP 404")]
    )
    async def test_an_outage_or_a_refused_request_propagates(self, error: Exception) -> None:
        with pytest.raises(type(error)):
            await extract(error)
