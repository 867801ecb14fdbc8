"""The loaders on the shared LoCoMo and MSC files: counts as the data README states them."""

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from training.eval.loaders import (
    ADVERSARIAL_GOLD,
    DEFAULT_CATEGORIES,
    load_conversations,
    load_locomo,
    load_msc,
    parse_locomo_date,
)

CONV26 = SHARED_DATA / "locomo" / "locomo_train_conv26.json"
CONV30 = SHARED_DATA / "locomo" / "locomo_val_conv30.json"
MSC = SHARED_DATA / "msc" / "msc_dialogue_session_2_valid.jsonl"


def test_parse_locomo_date() -> None:
    assert parse_locomo_date("1:56 pm on 8 May, 2023") == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert parse_locomo_date("12:48 am on 1 February, 2023") == datetime(
        2023, 2, 1, 0, 48, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="LoCoMo's form"):
        parse_locomo_date("yesterday")


@pytest.mark.parametrize(
    ("path", "sample_id", "turns", "all_qa", "without_adversarial"),
    [(CONV26, "conv-26", 419, 199, 152), (CONV30, "conv-30", 369, 105, 81)],
)
def test_locomo_counts_match_the_data_readme(
    path: Path, sample_id: str, turns: int, all_qa: int, without_adversarial: int
) -> None:
    (conversation,) = load_locomo(path)
    assert conversation.sample_id == sample_id
    assert len(conversation.sessions) == 19
    assert len(conversation.turns) == turns
    assert len(conversation.qa) == all_qa
    assert len(conversation.questions()) == without_adversarial
    assert len(conversation.questions(DEFAULT_CATEGORIES | {5})) == all_qa


def test_conv26_categories_follow_the_official_numbering() -> None:
    (conversation,) = load_locomo(CONV26)
    assert Counter(qa.category for qa in conversation.qa) == {4: 70, 5: 47, 2: 37, 1: 32, 3: 13}
    first = conversation.qa[0]
    assert first.question == "When did Caroline go to the LGBTQ support group?"
    assert (first.answer, first.category, first.evidence) == ("7 May 2023", 2, ["D1:3"])


def test_numeric_answers_become_strings() -> None:
    (conversation,) = load_locomo(CONV26)
    sunrise = next(
        qa for qa in conversation.qa if qa.question == "When did Melanie paint a sunrise?"
    )
    assert sunrise.answer == "2022"
    assert all(isinstance(qa.answer, str) for qa in conversation.qa)


def test_adversarial_items_keep_the_trap_answer_aside() -> None:
    (conversation,) = load_locomo(CONV26)
    adversarial = [qa for qa in conversation.qa if qa.category == 5]
    assert all(qa.answer == ADVERSARIAL_GOLD for qa in adversarial)
    assert adversarial[0].adversarial_answer == "self-care is important"


def test_sessions_are_dated_and_turns_keep_their_order() -> None:
    (conversation,) = load_locomo(CONV26)
    first, second = conversation.sessions[:2]
    assert first.index == 1
    assert first.occurred_at == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert second.occurred_at == datetime(2023, 5, 25, 13, 14, tzinfo=UTC)
    assert first.turns[0].occurred_at == first.occurred_at
    times = [t.occurred_at for t in conversation.turns]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(t.occurred_at.date() == first.occurred_at.date() for t in first.turns)
    assert first.turns[0].dia_id == "D1:1" and first.turns[0].speaker == "Caroline"


def test_image_turns_carry_the_caption() -> None:
    (conversation,) = load_locomo(CONV26)
    turn = next(t for t in conversation.turns if t.dia_id == "D1:5")
    assert turn.text.endswith(
        "[shares a photo: a photo of a dog walking past a wall with a painting of a woman]"
    )
    assert turn.text.startswith("The transgender stories were so inspiring!")


def test_observations_are_kept_per_session_with_evidence() -> None:
    (conversation,) = load_locomo(CONV26)
    observations = conversation.sessions[0].observations
    assert len(observations) == 7
    caroline = [o for o in observations if o.speaker == "Caroline"]
    assert caroline[0].text.startswith("Caroline attended an LGBTQ support group")
    assert caroline[0].evidence == ["D1:3"]


def test_observation_evidence_given_as_a_list() -> None:
    # conv-30 cites two turns for one observation ("D15:3", "D15:5")
    (conversation,) = load_locomo(CONV30)
    evidence = [o.evidence for s in conversation.sessions for o in s.observations]
    assert ["D15:3", "D15:5"] in evidence


def test_msc_loader_reads_the_file() -> None:
    conversations = load_msc(MSC)
    assert len(conversations) == 500
    first = conversations[0]
    assert first.qa == []
    assert [len(s.turns) for s in first.sessions] == [16, 12]
    # the previous session is 6 days before the current one
    assert (first.sessions[1].occurred_at - first.sessions[0].occurred_at).days == 6
    assert first.turns[0].text == "Hello what are doing today?"
    assert [t.speaker for t in first.sessions[1].turns[:2]] == ["Speaker 1", "Speaker 2"]
    assert first.sessions[0].observations[0].text == "I watch horror movies."
    assert len({c.sample_id for c in conversations}) == 500


def test_load_conversations_picks_the_format_and_rejects_duplicates(tmp_path: Path) -> None:
    conversations = load_conversations([CONV26, CONV30])
    assert [c.sample_id for c in conversations] == ["conv-26", "conv-30"]
    copy = tmp_path / "again.json"
    copy.write_text(json.dumps(json.loads(CONV26.read_text())), encoding="utf-8")
    with pytest.raises(ValueError, match="conv-26"):
        load_conversations([CONV26, copy])
