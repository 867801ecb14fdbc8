"""Generated Memory Manager examples for a supervised warm start.

The outcome reward alone has not taught the bundled Manager to UPDATE or DELETE: on LoCoMo's
rows an ADD nearly always answers the question as well as any other decision, so GRPO's groups
rarely differ, and the base model ADDs everything. These rows show each decision on small
generated banks:

- a fact that changes a stored one (a move, a new job, a cancellation, a death, a correction,
  a change of taste) replaces it: UPDATE with the fact's text;
- a fact that adds to one ("another dog") merges the two: UPDATE with the memory's text and
  the fact's;
- a fact that ends one ("stopped", "no longer") deletes it and adds the fact: DELETE and ADD;
- a restatement changes nothing: NOOP;
- anything else, including the same kind of fact about someone else, is new: ADD; so is
  (``near_share``) something else the person said about a stored memory's subject, a vet visit
  beside the dog, which adds to what the bank knows and changes none of it.

Names, places and wording are this module's own, none from LoCoMo or from the behaviour suite
(``bench/behaviour.json``), which measures the result. Each row is also a Manager row as
``training.datasets.manager_row`` makes them (question and gold answer included), so the
outcome validation scores it too, and carries the expected reply as ``completion``.
"""

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.memory.prompts import format_date
from app.memory.schemas import Fact, MemoryView, rekey
from training.datasets import MANAGER_CANDIDATES, manager_row

Row = dict[str, Any]

_NAMESPACE = uuid.UUID("1c7d3c9e-0b1f-4a55-9a57-2a64f0a3f6c1")

# Two disjoint sets of everything a template fills in: training rows draw from one, held-out
# rows from the other, so validation sees people, places and things training never did.
_POOLS: dict[str, tuple[list[str], list[str]]] = {
    "name": (
        [
            "Olga",
            "Pavel",
            "Rosa",
            "Samir",
            "Tara",
            "Umar",
            "Vera",
            "Wes",
            "Yara",
            "Zoe",
            "Nadia",
            "Omar",
            "Priya",
            "Quentin",
            "Rafael",
            "Selma",
            "Tomas",
            "Ines",
        ],
        [
            "Abel",
            "Bianca",
            "Cyril",
            "Dora",
            "Elias",
            "Farah",
            "Gustav",
            "Helga",
            "Igor",
            "Jonah",
            "Kira",
            "Lorenzo",
        ],
    ),
    "city": (
        [
            "Lyon",
            "Denver",
            "Osaka",
            "Krakow",
            "Austin",
            "Leeds",
            "Munich",
            "Perth",
            "Quito",
            "Valencia",
            "Dublin",
            "Tampa",
        ],
        ["Nantes", "Calgary", "Seville", "Bergen", "Toledo", "Graz", "Hobart", "Cusco"],
    ),
    "job": (
        [
            "a plumber",
            "an accountant",
            "a chef",
            "a librarian",
            "a pilot",
            "a dentist",
            "an architect",
            "a journalist",
            "an electrician",
            "a pharmacist",
        ],
        ["a baker", "a lawyer", "a firefighter", "a translator", "a carpenter", "an engineer"],
    ),
    "company": (
        ["Acme Foods", "Blue Harbor Bank", "Nimbus Labs", "Redwood Press", "Solaris Energy"],
        ["Kestrel Motors", "Orchid Studios", "Granite Insurance"],
    ),
    "pet": (["dog", "cat", "parrot", "rabbit"], ["hamster", "turtle", "dog", "cat"]),
    "pet_name": (
        ["Pepper", "Milo", "Coco", "Rocky", "Daisy", "Ziggy", "Biscuit", "Nala", "Oreo"],
        ["Pumpkin", "Toby", "Maple", "Bruno", "Kiwi", "Sunny"],
    ),
    "person": (
        ["Marco", "Luis", "Victor", "Anton", "Hugo", "Kofi", "Arjun", "Nikolai"],
        ["Felix", "Mateo", "Oscar", "Ravi", "Bruno Silva"],
    ),
    "food": (
        ["olives", "spicy food", "mushrooms", "jazz", "horror films", "cold showers"],
        ["oysters", "country music", "winter", "cilantro"],
    ),
    "dish": (["ramen", "paella", "lasagna", "tacos", "curry"], ["pho", "risotto", "dumplings"]),
    "sport": (
        ["tennis", "basketball", "volleyball", "squash", "badminton"],
        ["hockey", "baseball", "rugby"],
    ),
    "language": (
        ["Spanish", "Japanese", "German", "Italian", "Korean"],
        ["French", "Dutch", "Greek", "Arabic"],
    ),
    "car": (
        ["a red Honda", "an old Volvo", "a blue Ford", "a white Kia"],
        ["a grey Mazda", "a green Fiat", "a black Audi"],
    ),
    "month": (["March", "June", "August", "October"], ["April", "July", "December"]),
    "hobby": (
        ["knitting", "rock climbing", "baking bread", "chess", "birdwatching", "painting"],
        ["pottery", "fishing", "sailing", "photography"],
    ),
}


@dataclass(frozen=True)
class _Topic:
    """One thing a person can say about themselves, how it can change, and a question on it.

    Templates take ``{p}`` (the person) and the pool names; ``new`` holds what may follow
    ``old``, as (op, templates, question, gold)."""

    old: tuple[str, ...]
    again: tuple[str, ...]  # a restatement of ``old``
    related: tuple[str, ...]  # something else about the same thing, which changes nothing
    question: str
    gold: str
    change: tuple[str, tuple[str, ...], str, str]


# op: "replace" (UPDATE with the fact), "merge" (UPDATE with memory + fact), "end" (DELETE+ADD)
_TOPICS: list[_Topic] = [
    _Topic(
        old=("{p} lives in {city}.", "{p} has lived in {city} for years."),
        again=("{p} still lives in {city}.", "{p} lives in {city}."),
        related=(
            "{p} visited the old town of {city} with friends.",
            "{p} found a quiet coffee shop near home in {city}.",
            "{p}'s parents came to {city} for a visit.",
        ),
        question="Where does {p} live?",
        gold="{city}",
        change=(
            "replace",
            (
                "{p} moved to {city2}.",
                "{p} just moved from {city} to {city2} for work.",
                "{p} relocated to {city2} last month.",
            ),
            "Where does {p} live now?",
            "{city2}",
        ),
    ),
    _Topic(
        old=("{p} works as {job}.", "{p} is {job}."),
        again=("{p} has worked as {job} for years.", "{p} is still {job}."),
        related=(
            "{p} had a long week at work as {job}.",
            "{p} is taking an evening course to get better as {job}.",
            "{p} got a pay rise at work.",
        ),
        question="What is {p}'s job?",
        gold="{job}",
        change=(
            "replace",
            (
                "{p} quit working as {job} and now works as {job2}.",
                "{p} became {job2}.",
                "{p} is {job2} now, not {job}.",
            ),
            "What is {p}'s job now?",
            "{job2}",
        ),
    ),
    _Topic(
        old=("{p} works at {company}.",),
        again=("{p} still works at {company}.",),
        related=(
            "{p}'s team at {company} won an award.",
            "{p} had lunch with colleagues from {company}.",
            "{p}'s friend applied for a job at {company} too.",
        ),
        question="Where does {p} work?",
        gold="{company}",
        change=(
            "replace",
            ("{p} left {company} and joined {company2}.", "{p} started a new job at {company2}."),
            "Where does {p} work now?",
            "{company2}",
        ),
    ),
    _Topic(
        old=(
            "{p} is planning a trip to {city} in {month}.",
            "{p} plans to visit {city} in {month}.",
        ),
        again=("{p} is looking forward to the trip to {city} in {month}.",),
        related=(
            "{p} bought a guidebook about {city} for the trip.",
            "{p} asked friends what to see in {city}.",
        ),
        question="Where is {p} travelling in {month}?",
        gold="{city}",
        change=(
            "replace",
            (
                "{p} cancelled the trip to {city}.",
                "{p} called off the {city} trip because of money problems.",
            ),
            "What happened to {p}'s trip to {city}?",
            "cancelled",
        ),
    ),
    _Topic(
        old=("{p} has a {pet} named {pet_name}.", "{p} adopted a {pet} called {pet_name}."),
        again=("{p} has a {pet} named {pet_name}.", "{p} talked about {pet_name}, a {pet}."),
        related=(
            "{p} took {pet_name} to the vet for a checkup.",
            "{p} bought a new bed for {pet_name}.",
            "{p} taught {pet_name} a new trick.",
        ),
        question="What is the name of {p}'s {pet}?",
        gold="{pet_name}",
        change=(
            "replace",
            (
                "{p}'s {pet} {pet_name} died.",
                "{pet_name}, {p}'s {pet}, passed away last week.",
                "{p}'s {pet} {pet_name} died of old age.",
            ),
            "What happened to {p}'s {pet} {pet_name}?",
            "died",
        ),
    ),
    _Topic(
        old=("{p} has a {pet} named {pet_name}.",),
        again=("{p} still has {pet_name} the {pet}.",),
        related=(
            "{p} took {pet_name} to the vet for a checkup.",
            "{p} bought a new bed for {pet_name}.",
            "{p} plays with {pet_name} every morning.",
        ),
        question="What is the name of {p}'s {pet}?",
        gold="{pet_name}",
        change=(
            "merge",
            (
                "{p} adopted another {pet}, {pet_name2}.",
                "{p} got a second {pet} named {pet_name2}.",
            ),
            "What are the names of {p}'s pets?",
            "{pet_name} and {pet_name2}",
        ),
    ),
    _Topic(
        old=("{p} hates {food}.", "{p} does not like {food}."),
        again=("{p} still hates {food}.",),
        related=("{p} avoided {food} at a party last weekend.", "{p}'s sister loves {food}."),
        question="Does {p} like {food}?",
        gold="no",
        change=(
            "replace",
            ("{p} loves {food} now.", "{p} really enjoys {food} these days."),
            "Does {p} like {food}?",
            "yes",
        ),
    ),
    _Topic(
        old=("{p}'s brother is named {person}.", "{p} has a brother, {person}."),
        again=("{p} mentioned a brother named {person}.",),
        related=(
            "{p} went hiking with {person} last weekend.",
            "{p}'s brother {person} turns forty in {month}.",
        ),
        question="What is the name of {p}'s brother?",
        gold="{person}",
        change=(
            "replace",
            (
                "{p} corrected it: the brother is called {person2}, not {person}.",
                "{p} said the brother's name is {person2}, not {person}.",
            ),
            "What is the name of {p}'s brother?",
            "{person2}",
        ),
    ),
    _Topic(
        old=("{p} is dating {person}.",),
        again=("{p} is still dating {person}.",),
        related=("{p} and {person} went to a concert together.", "{p} cooked dinner for {person}."),
        question="Who is {p} dating?",
        gold="{person}",
        change=(
            "replace",
            ("{p} got engaged to {person}.", "{p} and {person} got married in {month}."),
            "What is {p}'s relationship with {person}?",
            "engaged",
        ),
    ),
    _Topic(
        old=("{p} drives {car}.",),
        again=("{p} still drives {car}.",),
        related=("{p} took the car in for a service.", "{p} drove to the coast for the weekend."),
        question="What car does {p} drive?",
        gold="{car}",
        change=(
            "replace",
            (
                "{p} sold the car and now drives {car2}.",
                "{p} bought {car2} to replace the old car.",
            ),
            "What car does {p} drive now?",
            "{car2}",
        ),
    ),
    _Topic(
        old=("{p}'s favourite dish is {dish}.", "{p} loves {dish} more than any other dish."),
        again=("{p} said {dish} is the best dish.",),
        related=(
            "{p} learned to cook {dish} at home.",
            "{p} had {dish} at a new restaurant downtown.",
        ),
        question="What is {p}'s favourite dish?",
        gold="{dish}",
        change=(
            "replace",
            ("{p}'s favourite dish is now {dish2}.", "{p} prefers {dish2} to {dish} these days."),
            "What is {p}'s favourite dish now?",
            "{dish2}",
        ),
    ),
    _Topic(
        old=("{p} speaks {language}.", "{p} is learning {language}."),
        again=("{p} practises {language} every day.",),
        related=(
            "{p} watched a film in {language} without subtitles.",
            "{p} found a {language} tutor online.",
        ),
        question="Which language is {p} learning?",
        gold="{language}",
        change=(
            "merge",
            ("{p} also started learning {language2}.", "{p} is learning {language2} too."),
            "Which languages does {p} speak or learn?",
            "{language} and {language2}",
        ),
    ),
    _Topic(
        old=("{p} plays {sport} every weekend.", "{p} plays {sport} with friends."),
        again=("{p} still plays {sport} every weekend.",),
        related=("{p} watched a {sport} match on TV.", "{p} bought new shoes for {sport}."),
        question="Which sport does {p} play?",
        gold="{sport}",
        change=(
            "end",
            ("{p} stopped playing {sport} after a knee injury.", "{p} no longer plays {sport}."),
            "Does {p} still play {sport}?",
            "no",
        ),
    ),
    _Topic(
        old=("{p} took up {hobby}.", "{p} enjoys {hobby} in the evenings."),
        again=("{p} still enjoys {hobby}.",),
        related=("{p} joined a {hobby} club.", "{p} spent the whole Sunday on {hobby}."),
        question="What hobby did {p} take up?",
        gold="{hobby}",
        change=(
            "end",
            ("{p} gave up {hobby}.", "{p} no longer does {hobby}; there is no time for it."),
            "Does {p} still do {hobby}?",
            "no",
        ),
    ),
]

# Shares of each decision in generated rows (ADD takes the rest): new facts are most of what a
# Manager sees. Training may show more changes than that (``change_share``).
NOOP_SHARE = 0.15
CHANGE_SHARE = 0.40


def _pick(rng: random.Random, pool: str, split: int, avoid: str | None = None) -> str:
    choices = [v for v in _POOLS[pool][split] if v != avoid]
    return rng.choice(choices)


def _filler(rng: random.Random, split: int, person: str) -> dict[str, str]:
    """Values for every template field, the ``...2`` ones different from their first."""
    values = {"p": person}
    for pool in _POOLS:
        if pool == "name":
            continue
        values[pool] = _pick(rng, pool, split)
        values[f"{pool}2"] = _pick(rng, pool, split, avoid=values[pool])
    return values


def _date(rng: random.Random) -> datetime:
    start = datetime(2021, 1, 1, 12, tzinfo=UTC)
    return start + timedelta(days=rng.randrange(0, 5 * 365))


def _memory(text: str, speaker: str, at: datetime, seed: str) -> MemoryView:
    return MemoryView(
        key="",
        id=uuid.uuid5(_NAMESPACE, seed),
        text=f"On {format_date(at)}, {text}",
        speaker=speaker,
        occurred_at=at,
    )


def _reply(*operations: tuple[str, str, str]) -> str:
    ops = [{"op": op, "id": key, "text": text} for op, key, text in operations]
    return json.dumps({"operations": ops})


def _row(
    rng: random.Random, split: int, index: int, change_share: float, near_share: float
) -> tuple[Fact, list[MemoryView], str, str, str, str]:
    """One generated decision: the fact, the memories shown, the decision's kind, the expected
    reply, and a question with its gold answer."""
    person, other = rng.sample(_POOLS["name"][split], 2)
    values = _filler(rng, split, person)
    first, second = sorted((_date(rng), _date(rng)))
    if first == second:
        second = first + timedelta(days=3)
    topic = rng.choice(_TOPICS)
    # Other things the person said, none stated as the topic's first one is (two topics
    # start from "has a pet").
    others = [t for t in _TOPICS if t.old[0] != topic.old[0]]
    distractors = rng.sample(others, k=rng.randrange(MANAGER_CANDIDATES))
    fill: Callable[[str], str] = lambda template: template.format(**values)  # noqa: E731
    shown: list[MemoryView] = [
        _memory(fill(rng.choice(t.old)), person, _date(rng), f"{split}/{index}/{i}")
        for i, t in enumerate(distractors)
    ]
    shares = [1 - NOOP_SHARE - change_share, NOOP_SHARE, change_share]
    kind = rng.choices(["ADD", "NOOP", "CHANGE"], weights=shares)[0]
    old = _memory(fill(rng.choice(topic.old)), person, first, f"{split}/{index}/old")
    speaker = person
    if kind == "ADD":
        # New to the bank: a topic nobody has spoken of yet, the same kind of fact about
        # someone else, or (``near_share``) something else the person said about the same
        # thing, which sits beside its memory. The bank keeps both; the question needs the
        # memory, so replacing it loses the answer.
        if rng.random() < 0.3:
            kind = "other"
            speaker = values["p"] = other
            shown.append(old)
        elif near_share and rng.random() < near_share:
            kind = "related"
            shown.append(old)
        body = rng.choice(topic.related if kind == "related" else topic.old)
        question, gold = topic.question, topic.gold
    elif kind == "NOOP":
        shown.append(old)
        body, question, gold = rng.choice(topic.again), topic.question, topic.gold
    else:
        shown.append(old)
        kind, templates, question, gold = topic.change
        body = rng.choice(templates)
    rng.shuffle(shown)
    shown = rekey(shown)
    fact = Fact(f"On {format_date(second)}, {fill(body)}", speaker, second)
    key = next((m.key for m in shown if m.id == old.id), "")
    add = _reply(("ADD", "", ""))
    replies = {
        "ADD": add,
        "other": add,
        "related": add,
        "NOOP": _reply(("NOOP", "", "")),
        "replace": _reply(("UPDATE", key, fact.text)),
        "merge": _reply(("UPDATE", key, f"{old.text} {fact.text}")),
        "end": _reply(("DELETE", key, ""), ("ADD", "", "")),
    }
    return fact, shown, kind, replies[kind], fill(question), fill(gold)


# The decision each generated kind expects, as validation counts operations.
EXPECTED_OPS = {
    "ADD": ["ADD"],
    "other": ["ADD"],  # the same kind of fact about someone else
    "related": ["ADD"],  # something new on a memory the bank shows
    "NOOP": ["NOOP"],
    "replace": ["UPDATE"],
    "merge": ["UPDATE"],
    "end": ["DELETE", "ADD"],
}


def manager_warm_start_rows(
    count: int,
    *,
    held_out: bool = False,
    seed: int = 0,
    change_share: float = CHANGE_SHARE,
    near_share: float = 0.0,
) -> list[Row]:
    """``count`` generated Manager rows (``held_out``: from the other half of the pools), each
    a ``manager_row`` with ``completion`` and ``expected_reply`` (the expected reply, for SFT
    and for GRPO's decision reward) and ``expected_ops``;
    ``change_share`` of them change a stored memory. ``near_share`` of the ADD rows that are
    about the speaker state something new on a memory the bank shows (a vet visit beside the
    dog, a pay rise beside the job): an ADD that looks like a change. With 0 no row does, and
    rows are as they were before these existed."""
    if not 0 <= change_share <= 1 - NOOP_SHARE:
        raise ValueError(f"change_share must be between 0 and {1 - NOOP_SHARE}")
    if not 0 <= near_share <= 1:
        raise ValueError("near_share must be between 0 and 1")
    split = 1 if held_out else 0
    rng = random.Random(f"{seed}/{split}")
    rows: list[Row] = []
    for index in range(count):
        fact, shown, kind, reply, question, gold = _row(rng, split, index, change_share, near_share)
        row = manager_row(fact, shown, shown, question=question, gold=gold, category=4)
        rows.append(
            {
                **row,
                "completion": reply,
                # TRL hands a reward every column but "completion": GRPO's decision reward
                # reads the expected reply from this one.
                "expected_reply": reply,
                "expected_ops": EXPECTED_OPS[kind],
                "decision": kind,
            }
        )
    return rows
