import uuid
from datetime import UTC, datetime

import pytest

from app.memory.answer import parse_answer
from app.memory.extractor import checked_facts
from app.memory.guard import check, resolve_dates, turn_time
from app.memory.schemas import as_views

AT = datetime(2026, 12, 3, 10, tzinfo=UTC)  # a Thursday


def kept(text: str, turn: str, speaker: str = "Ann") -> str | None:
    return check(text, [turn], speaker, AT).text


class TestCheck:
    def test_a_rewording_of_the_turn_is_kept(self) -> None:
        turn = "I moved to Lisbon for a nursing job."
        assert kept("Ann moved to Lisbon for a nursing job.", turn)
        assert kept("Ann is moving to Lisbon to work as a nurse.", turn)
        assert kept("On 3 December 2026, Ann moved to Lisbon.", turn)

    def test_a_repeated_sentence_is_dropped(self) -> None:
        turn = "I moved from Boston to Seattle last month for a new job at Amazon."
        text = "I moved from Boston to Seattle. " * 7
        checked = check(text, [turn], "Alice", AT)
        assert checked.text == "I moved from Boston to Seattle."
        assert [why for _, why in checked.dropped] == ["repeats an earlier sentence"] * 6

    def test_words_said_twice_in_a_row_are_said_once(self) -> None:
        turn = "I plan to go on a camping trip in June 2023."
        text = "Melanie plans to go on a camping trip in June 2023 in June 2023."
        checked = check(text, [turn], "Melanie", AT)
        assert checked.text == "Melanie plans to go on a camping trip in June 2023."
        assert checked.dropped == [(text, "says the same words twice in a row")]
        assert kept("Ann said bye bye to Tom.", "I said bye bye to Tom.") == (
            "Ann said bye bye to Tom."
        )

    def test_a_sentence_repeating_a_run_of_an_earlier_one_is_dropped(self) -> None:
        turn = "Pottery is a big part of my life, I love it so much."
        first = "Melanie loves pottery, and it's a big part of her life."
        again = "She loves it so much, and it's a big part of her life."
        checked = check(f"{first} {again}", [turn], "Melanie", AT)
        assert checked.text == first
        assert checked.dropped == [(again, "repeats 6 or more words of an earlier sentence")]
        # Five words in common is how two sentences about one thing start: both stay.
        two = "Ann adopted a dog named Rex. Later Ann adopted a dog named Max."
        assert kept(two, "I adopted a dog named Rex, and later a dog named Max.") == two

    def test_a_question_copied_from_the_turn_is_dropped(self) -> None:
        turn = "Loving the inclusivity and support. Anything you're excited for in the process?"
        text = "Mel loved the inclusivity and support. Anything you're excited for in the process?"
        checked = check(text, [turn], "Mel", AT)
        assert checked.text == "Mel loved the inclusivity and support."
        assert checked.dropped == [
            ("Anything you're excited for in the process?", "a question, which states nothing")
        ]

    def test_a_number_the_turn_does_not_give_is_invented(self) -> None:
        turn = "I moved from Boston to Seattle last month for a new job at Amazon."
        checked = check("I moved to Seattle. I'm a 2026-2027 employee.", [turn], "Alice", AT)
        assert checked.text == "I moved to Seattle."
        assert checked.dropped == [
            ("I'm a 2026-2027 employee.", "gives the number 2027, which its source does not")
        ]

    def test_a_name_the_turn_does_not_give_is_invented(self) -> None:
        checked = check(
            "Dave started a new blog at Lisbon City Council.", ["I live in Lisbon."], "Ann", AT
        )
        assert checked.text is None
        assert "names 'City'" in checked.dropped[0][1]

    def test_the_prompt_example_copied_into_a_fact_is_dropped(self) -> None:
        text = "Tom is taking a pottery class. He's going to Rome in July."
        assert kept(text, "I moved to Lisbon for a nursing job.") is None

    def test_a_time_the_turn_does_not_give_is_cut(self) -> None:
        turn = "Yesterday I adopted another dog, Scout."
        checked = check("I adopted a dog named Scout last week.", [turn], "Ann", AT)
        assert checked.text == "I adopted a dog named Scout."
        assert checked.dropped == [("last week", "a time its source does not give")]
        assert kept("Last week, Ann adopted Scout.", turn) == "Ann adopted Scout."
        assert kept("Ann adopted Scout two days ago.", turn) == "Ann adopted Scout."
        assert kept("Ann adopted a dog named Scout yesterday.", turn) == (
            "Ann adopted a dog named Scout yesterday."
        )
        # What is left after the cut must be well supported: the invented time is often the
        # sign of an invented fact (the bundled model on a LoCoMo turn).
        turn = "I get it, Jon. Dance is just me -- I can't picture life without it. It's like air."
        assert kept("Gina said she's going to dance at the party tonight.", turn, "Gina") is None
        # A time word outside a time the guard knows still makes the sentence invented.
        turn = "Yesterday I adopted another dog, Scout."
        checked = check("Ann adopted Scout at the last minute.", [turn], "Ann", AT)
        assert checked.text is None
        assert checked.dropped[0][1] == "says 'last', which its source does not"

    def test_an_unsupported_clause_is_cut_and_its_supported_start_kept(self) -> None:
        # Written by the extractor trained on LoCoMo's observations, which interpret the turn.
        turn = "I love green tea."
        text = "Dan enjoys green tea and finds it a calming and relaxing beverage."
        checked = check(text, [turn], "Dan", AT)
        assert checked.text == "Dan enjoys green tea."
        assert checked.dropped == [
            (
                "and finds it a calming and relaxing beverage",
                "only 0 of its 2 content words are in its source",
            )
        ]
        assert (
            kept("Ann moved to Lisbon, where she joined Lisbon City Council.", "I moved to Lisbon.")
            == "Ann moved to Lisbon."
        )
        # An unsupported one keeps its start before a purpose the model made up.
        turn = "I am planning a trip to Rome in July."
        text = "Gina is planning a trip to Rome in July to explore the city's history and culture."
        checked = check(text, [turn], "Gina", AT)
        assert checked.text == "Gina is planning a trip to Rome in July."
        assert checked.dropped == [
            (
                "to explore the city's history and culture",
                "only 0 of its 3 content words are in its source",
            )
        ]
        # A supported one keeps its "to": cut there, what is wanted would go.
        turn = "I want to open a dance studio, I can't wait."
        text = "Jon wants to open a dance studio to teach kids."
        assert kept(text, turn, "Jon") == text
        # A supported sentence loses its clauses from the first unsupported one on.
        turn = "I just moved to Seattle for a new job."
        text = "Ben moved to Seattle for a new job and is looking forward to exploring the city."
        assert kept(text, turn, "Ben") == "Ben moved to Seattle for a new job."
        turn = "I love green tea."
        # A reason or purpose the turn does not give starts a clause too (the shipped
        # extractor adapter, in the behaviour suite; whole, the sentence was dropped).
        text = "Dan enjoys green tea for its calming effects."
        assert kept(text, turn, "Dan") == "Dan enjoys green tea."
        turn = "I bought a gift for my mom."
        assert kept("Ann bought a gift for her mom for her birthday.", turn) == (
            "Ann bought a gift for her mom."
        )
        # A clause without content words is not a repeat of what went before.
        assert kept("Ann is grateful for it.", "I am so grateful for it.") == (
            "Ann is grateful for it."
        )
        turn = "I love green tea."
        # A start that says one thing alone is not a fact.
        assert kept("Ann loves it, and finds it a calming and relaxing beverage.", turn) is None

    def test_a_clause_that_says_again_what_went_before_is_cut(self) -> None:
        # Written by the shipped extractor adapter in the behaviour suite.
        turn = "I work as a nurse at the city hospital."
        text = "Cara works as a nurse at the city hospital and is a nurse at the hospital."
        checked = check(text, [turn], "Cara", AT)
        assert checked.text == "Cara works as a nurse at the city hospital."
        assert checked.dropped == [
            ("and is a nurse at the hospital", "says again what the sentence said before it")
        ]
        # A clause that adds something stays.
        turn = "I have a dog and a cat."
        assert kept("Ann has a dog and a cat.", turn) == "Ann has a dog and a cat."

    def test_a_wrong_opening_date_gives_way_to_the_turns(self) -> None:
        checked = check("On 3 June 2023, Ann moved to Lisbon.", ["I moved to Lisbon."], "Ann", AT)
        assert checked.text == "Ann moved to Lisbon."
        assert checked.dropped[0][0] == "On 3 June 2023,"
        # Anywhere else, a date nobody gave is invented.
        assert kept("Ann moved to Lisbon on 3 June 2023.", "I moved to Lisbon.") is None
        assert kept("Ann moved to Lisbon on 3 December 2026.", "I moved to Lisbon.")

    def test_markup_ends_the_text(self) -> None:
        # Written by the bundled Manager on LoCoMo conv-26: it went on as if closing its tags.
        turn = "I'm looking forward to your wedding day!"
        checked = check(
            "Caroline said she was looking forward to your wedding day.</context:",
            [turn],
            "Caroline",
            AT,
        )
        assert checked.text == "Caroline said she was looking forward to your wedding day."
        assert checked.dropped == [("</context:", "markup from the prompt or the JSON")]
        assert kept("Ann looks forward to it.</fact>}, {", "I look forward to it.") == (
            "Ann looks forward to it."
        )
        assert kept('Ann likes tea. {"op": "ADD"', "I like tea.") == "Ann likes tea."
        # Markup the turn itself has is the user's own.
        assert kept("Ann wrote <b>bold</b> notes.", "I wrote <b>bold</b> notes.")

    def test_a_looping_sentence_is_dropped(self) -> None:
        assert kept("Ann likes tea tea tea tea tea.", "I like tea.") is None

    def test_what_the_turn_says_of_the_one_spoken_to_is_not_the_speakers(self) -> None:
        turn = "Wow, Gina! You found the perfect spot for your store. Way to go!"
        fact = "On 3 December 2026, Jon found the perfect spot for his store."
        checked = check(fact, [turn], "Jon", AT)
        assert checked.text is None
        assert checked.dropped == [(fact, "says of Jon what its source says of the one spoken to")]
        assert kept("Jon's store is growing.", "Looks like your store is growing!", "Jon") is None
        # Said of the one spoken to, by name, it stays.
        assert kept("Gina found the perfect spot for her store.", turn, "Jon")
        # The speaker's own: the sentence it comes from speaks of "I", "my" or "we".
        assert kept(
            "Jon found a spot for his store.", "You know what, I found a spot for my store!", "Jon"
        )
        assert kept("Jon found a spot for his store.", "We found a spot for our store.", "Jon")
        # What the turn shows is the speaker's, whatever the sentence before it says to whom.
        shows = "Good luck, you got this! [shares a photo: a red dress on a mannequin]"
        assert kept("Ann shared a photo of a red dress on a mannequin.", shows)

    def test_a_fact_that_turns_a_dislike_into_a_liking_is_dropped(self) -> None:
        # The shipped extractor's reply to this turn in the behaviour suite.
        checked = check("Mona is a coffee lover.", ["I hate coffee."], "Mona", AT)
        assert checked.text is None
        assert checked.dropped == [
            (
                "Mona is a coffee lover.",
                "speaks of liking where its source speaks only of disliking",
            )
        ]
        assert kept("Mona loves coffee.", "I don't really like coffee.", "Mona") is None
        assert kept("Mona hates coffee.", "I love coffee.", "Mona") is None
        # Said the same way round, or as the turn says it, it stays.
        assert kept("Mona hates coffee.", "I hate coffee.", "Mona")
        assert kept("Mona does not like coffee.", "I hate coffee.", "Mona")
        assert kept("Mona dislikes coffee.", "I don't like coffee.", "Mona")
        assert kept("Mona loves coffee.", "I never liked tea, but I love coffee.", "Mona")
        # Nor is it kept by cutting the clause that said it the turn's way.
        checked = check(
            "Mona is a coffee lover and has a dislike for coffee.", ["I hate coffee."], "Mona", AT
        )
        assert checked.text is None
        assert checked.dropped[-1] == (
            "Mona is a coffee lover.",
            "speaks of liking where its source speaks only of disliking",
        )
        # A Manager text that changes a memory draws on both: the fact and the memory.
        sources = ["Mona loves coffee.", "Mona hates coffee."]
        assert check("Mona loves coffee now.", sources, "Mona", AT).text

    def test_the_speaker_and_another_source_count(self) -> None:
        fact = "On 3 December 2026, Ann adopted another dog, Scout."
        memory = "Ann adopted a dog named Buddy."
        update = "Ann adopted two dogs, Buddy and Scout."
        assert check(update, [fact, memory], "Ann", AT).text == update
        assert check(update, [fact], "Ann", AT).text is None


class TestResolveDates:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Ann ran a marathon yesterday.", "Ann ran a marathon on 2 December 2026."),
            ("Yesterday Ann ran.", "On 2 December 2026 Ann ran."),
            ("Ann flies tomorrow.", "Ann flies on 4 December 2026."),
            ("Ann moved last week.", "Ann moved the week before 3 December 2026."),
            ("Ann moves next weekend.", "Ann moves the weekend after 3 December 2026."),
            ("Ann moved last month.", "Ann moved in November 2026."),
            ("Ann moves next month.", "Ann moves in January 2027."),
            ("Ann married last year.", "Ann married in 2025."),
            ("Ann moved two weeks ago.", "Ann moved two weeks before 3 December 2026."),
            ("Ann moved 3 days ago.", "Ann moved 3 days before 3 December 2026."),
            ("Ann swam last Thursday.", "Ann swam on 26 November 2026."),
            ("Ann swims next Monday.", "Ann swims on 7 December 2026."),
            ("Ann likes tea.", "Ann likes tea."),
        ],
    )
    def test_against_the_turns_date(self, text: str, expected: str) -> None:
        assert resolve_dates(text, AT) == expected

    def test_without_a_date_nothing_changes(self) -> None:
        assert resolve_dates("Ann moved last week.", None) == "Ann moved last week."


def test_extracted_facts_are_checked_resolved_and_anchored() -> None:
    turn = "Yesterday I adopted another dog, Scout."
    texts = [
        "Ann adopted a dog named Scout yesterday.",
        "Ann adopted a dog named Scout yesterday!",
        "Andrew started a pottery class.",
    ]
    facts, dropped = checked_facts(texts, turn, "Ann", AT)
    assert [f.text for f in facts] == ["Ann adopted a dog named Scout on 2 December 2026."]
    assert [why for _, why in dropped] == [
        "repeats an earlier fact",
        "only 0 of its 4 content words are in its source",
    ]


def test_an_answer_says_each_sentence_once() -> None:
    shown = as_views([(uuid.uuid4(), "Luna died.", "Finn", None)])
    reply = {"selected": ["m1"], "answer": "Luna died. I am sad. I am sad. I am"}
    _, answer, error = parse_answer(reply, shown)
    assert (answer, error) == ("Luna died. I am sad.", None)


def test_an_answer_says_its_words_once() -> None:
    shown = as_views([(uuid.uuid4(), "Mel plans a camping trip in June 2023.", "Mel", None)])
    reply = {"selected": ["m1"], "answer": "in June 2023 in June 2023 in June 2023"}
    assert parse_answer(reply, shown)[1] == "in June 2023"
    for looping, once in [
        ("Mel is a positive and kinda kinda kinda kinda kinda", "Mel is a positive and kinda"),
        ("Mel'seven'ten'ten'ten'ten'ten", "Mel'seven'ten"),
        ("camping.company.company.company", "camping.company"),
    ]:
        assert parse_answer({"selected": [], "answer": looping}, shown)[1] == once
    # Twice is how people talk.
    assert parse_answer({"selected": [], "answer": "bye bye, Mel"}, shown)[1] == "bye bye, Mel"


def test_of_two_facts_saying_the_same_the_one_saying_more_is_kept() -> None:
    turn = "I also started learning the piano, with a teacher."
    texts = [
        "Hana started learning the piano.",
        "On 3 December 2026, Hana said she started learning the piano.",
        "Hana started learning the piano with a teacher.",
    ]
    facts, dropped = checked_facts(texts, turn, "Hana", AT)
    assert [f.text for f in facts] == [
        "On 3 December 2026, Hana started learning the piano with a teacher."
    ]
    assert [why for _, why in dropped] == [
        "repeats an earlier fact",
        "repeated by a later fact that says more",
    ]


class TestTurnTime:
    def test_the_one_fact_of_a_turn_gets_the_time_the_model_left_out(self) -> None:
        # ... in place of the date of mention: asked when, the model answers the first date.
        turn = "Yesterday I ran my first marathon!"
        facts, _ = checked_facts(
            ["On 3 December 2026, Jack ran his first marathon."], turn, "Jack", AT
        )
        assert [f.text for f in facts] == ["Jack ran his first marathon on 2 December 2026."]

    def test_a_sentence_that_says_when_loses_its_opening_date(self) -> None:
        # A Manager's UPDATE text, checked against the fact it merges in.
        fact = "Ann adopted a dog named Scout on 2 December 2026."
        text = "On 3 December 2026, Ann adopted a dog named Scout on 2 December 2026."
        assert check(text, [fact], "Ann", AT).text == (
            "Ann adopted a dog named Scout on 2 December 2026."
        )

    def test_a_fact_with_a_wrong_time_gets_the_turns(self) -> None:
        turn = "Yesterday I ran my first marathon!"
        facts, dropped = checked_facts(["Jack ran his first marathon last year."], turn, "Jack", AT)
        assert [f.text for f in facts] == ["Jack ran his first marathon on 2 December 2026."]
        assert dropped == [("last year", "a time its source does not give")]

    def test_a_fact_that_says_the_time_resolved_gets_it_once(self) -> None:
        turn = "Yeah, I painted that lake sunrise last year! It's special to me."
        facts, _ = checked_facts(
            ["On 3 December 2026, Mel said she painted the lake sunrise last year."],
            turn,
            "Mel",
            AT,
        )
        assert [f.text for f in facts] == [
            "On 3 December 2026, Mel said she painted the lake sunrise in 2025."
        ]

    def test_every_fact_of_a_one_sentence_turn_gets_its_time(self) -> None:
        turn = "Yesterday I ran my first marathon!"
        texts = ["Jack said he ran his first marathon.", "Jack started his first marathon."]
        facts, _ = checked_facts(texts, turn, "Jack", AT)
        assert [f.text for f in facts] == [
            "Jack said he ran his first marathon on 2 December 2026.",
            "Jack started his first marathon on 2 December 2026.",
        ]

    @pytest.mark.parametrize(
        ("turn", "other"),
        [
            ("Yesterday I ran a marathon. I love running.", "Jack loves running."),
            ("I love pizza. Yesterday I ran a marathon.", "Jack loves pizza."),
        ],
    )
    def test_of_several_facts_the_one_about_the_timed_sentence_gets_the_time(
        self, turn: str, other: str
    ) -> None:
        facts, _ = checked_facts(["Jack ran a marathon.", other], turn, "Jack", AT)
        assert [f.text for f in facts] == [
            "Jack ran a marathon on 2 December 2026.",
            f"On 3 December 2026, {other}",
        ]

    def test_with_several_times_nothing_is_guessed(self) -> None:
        turn = "I ran a marathon yesterday. Tomorrow I run again."
        facts, _ = checked_facts(["Jack ran a marathon.", "Jack runs again."], turn, "Jack", AT)
        assert [f.text for f in facts] == [
            "On 3 December 2026, Jack ran a marathon.",
            "On 3 December 2026, Jack runs again.",
        ]
        assert turn_time("I ran yesterday and I fly tomorrow.", AT) is None
        assert turn_time("I ran yesterday. Yesterday was fun.", AT) == "on 2 December 2026"
        assert turn_time("I love tea.", AT) is None
