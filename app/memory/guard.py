"""Checks on every text an agent writes into the bank, whatever the model does.

A small model repeats itself, copies its worked examples and invents details. Before a fact
is kept or a Manager text is applied, each of its sentences is checked against its sources
(the turn for a fact; the fact and the memory it changes for a Manager text):

- markup its sources do not contain ("</fact>}, {", "</context:", a brace) ends the text: the
  model went on as if closing its prompt's tags or the JSON, and what follows is not a memory;
- a sentence said before in the same text is dropped (so is the cut-off start of one), as is
  one that repeats a run of words of an earlier one, one that repeats a word over and over
  (the shape of a model that lost its way), one that says nothing but a name or a date, and a
  question (copied from the turn: "Anything you're excited about?");
  words said twice in a row ("in June 2023 in June 2023") are said once;
- a time its sources do not give ("last week" for a turn that says "yesterday") is cut from
  the sentence, and the rest is checked without it, more strictly (below); a fact then gets
  the turn's own time;
- a sentence is unsupported when it names someone or something (a capitalised word past the
  sentence start), gives a number or a time word that its sources do not, or when fewer than
  half of its content words (two in three after a cut) are in its sources. A sentence is
  cut before its first unsupported clause ("Ben moved to Seattle for a new job and is looking
  forward to exploring the city." -> "Ben moved to Seattle for a new job."); an unsupported
  sentence's start is kept that way when it says at least two things, two in three of them in
  its sources ("Dan enjoys green tea and finds it calming." -> "Dan enjoys green tea."; a
  purpose clause counts: "Gina plans a trip to Rome to explore its history." -> "Gina plans a
  trip to Rome."), else the sentence is dropped;
- a sentence about the speaker alone is dropped when the sentence of its sources it draws most
  on speaks of "you" and not of "I" or "we": the turn said it of the one spoken to ("Jon's
  store is growing." from Jon's "Looks like your store is growing.");
- a sentence that says someone likes something where its sources only say they dislike
  something, or the other way round, is dropped: it turned the turn over ("Mona is a coffee
  lover." from Mona's "I hate coffee."); "don't like" and "never enjoyed" dislike;
- relative dates are resolved against the turn's date: "yesterday" -> "on 2 December 2026",
  "last week" -> "the week before 3 December 2026", "two days ago" -> "two days before 3
  December 2026".

Words are compared by a crude stem (moved/moving/move), so a fact may reword its turn but not
add to it. What is dropped is returned with the reason, for the episode's log.
"""

import re
from calendar import day_name, month_name
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.memory.prompts import DATE, format_date
from app.memory.schemas import text_key

# Fewer than this share of a sentence's content words in its sources: the sentence is made up.
# At two in five, the extractor's interpretations of small talk passed ("Gina is a supportive
# friend who encourages her to keep going and believe in herself.").
MIN_SUPPORTED = 0.5
# What is left of a sentence after a cut (of a time, or of the clauses from the first
# unsupported one on) must have at least this share of its content words in its sources: the
# cut showed the model inventing, and a short sentence passes half with a name and one common
# word ("Gina is a friend of Jon.", "Gina is going to dance at the party [tonight].").
CUT_SUPPORTED = 2 / 3
# A word this many times in one sentence: the model is looping.
MAX_WORD_REPEATS = 3
# A run of this many words of an earlier sentence, again in a later one: the model is looping
# ("Mel loves pottery, and it's a big part of her life. She loves it so much, and it's a big
# part of her life."). Shorter runs are how two sentences about one person naturally start.
REPEATED_RUN_WORDS = 6

_STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing done down during each few for
    from further had has have having he her here hers herself him himself his how i if in into
    is it its itself just me more most my myself no nor not now of off on once only or other
    our ours out over own same she should so some such than that the their theirs them then
    there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself
    said says say told tells tell mentioned mentions shared shares talked talks explained
    stated noted wrote asked added really new quite something someone thing things lot got get gets
    going went go goes like
    """.split()
)
# Words that place a sentence in time: the sources must say them (before they are resolved).
_TIME_WORDS = frozenset(
    "yesterday tomorrow today tonight ago last next week weekend month year".split()
)
_MONTHS = frozenset(m.casefold() for m in month_name if m)
_WEEKDAYS = [d.casefold() for d in day_name]
_COUNT = r"(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|a few|a couple of)"
# A time as a phrase, with the preposition that brings it: what is cut when the sources do not
# give it.
_TIME_PHRASE = re.compile(
    r"\b(?:(?:in|on|during|over|from|since)\s+)?(?:the\s+)?"
    r"(?:(?:day (?:before|after) )?(?:yesterday|tomorrow)|today|tonight|"
    rf"(?:last|next|this|past) (?:week|weekend|month|year|{'|'.join(_WEEKDAYS)})|"
    rf"{_COUNT} (?:day|week|month|year)s? ago)\b",
    re.IGNORECASE,
)
# Where a clause starts: a semicolon, a conjunction that adds to what went before, or a "for"
# that gives a reason or a purpose ("Dan enjoys green tea for its calming effects.", as the
# extractor trained on LoCoMo's observations writes). A comma alone may start a list of what
# the sentence is about: "two dogs, Buddy and Scout".
_CLAUSE = re.compile(r"\s*;\s+|,?\s+(?:and|but|because|which|where|who|while|so|for)\s+")
# In a sentence that is unsupported as a whole, a "to" before a verb (a lower-case word that
# does not start a noun phrase: "to a pottery workshop" is where) may also start one: the
# purpose the model made up ("Gina is planning a trip to Rome in July to explore the
# city's history."). In a supported one it is left alone: cut there, what it wants or plans
# goes with it ("Jon wants.").
_RESCUE_CLAUSE = re.compile(
    rf"{_CLAUSE.pattern}|\s+to\s+(?!(?:a|an|the|my|your|his|her|its|our|their|this|that)\b)"
    r"(?=[a-z])"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_WORD = re.compile(r"[A-Za-z]+|\d+")
_OPENING_DATE = re.compile(rf"^On ({DATE.pattern}),?\s*")
_LABEL = re.compile(rf"^[A-Z][\w' -]{{0,40}}?(?: on {DATE.pattern})?:\s*")
_SUFFIXES = ("ings", "ing", "edly", "ed", "es", "s", "e", "ly")
# What a turn shows ("[shares a photo: ...]") is a statement of its own.
_CAPTION = re.compile(r"(\[[^\]]*\])")
# One word three or more times in a row, whatever the separators ("ten'ten'ten").
_LOOP = re.compile(r"\b(\w+)(?:[\W_]{1,2}\1\b){2,}", re.IGNORECASE)
# Words that say someone likes, or dislikes, what they name; a negator in the two words before
# a liking word turns it over ("don't like": the "t" of "don't").
_LIKING = frozenset(
    """love loves loved loving lover lovers like likes liked enjoy enjoys enjoyed enjoying
    adore adores adored fan fans favorite favourite""".split()
)
_DISLIKING = frozenset(
    """hate hates hated hating dislike dislikes disliked detest detests detested loathe loathes
    loathed""".split()
)
_NEGATORS = frozenset("not never t".split())
_SECOND_PERSON = frozenset("you your yours yourself yourselves".split())
_FIRST_PERSON = frozenset("i me my mine myself we us our ours ourselves".split())
# Two to eight words, then the same words again ("in June 2023 in June 2023").
_STUTTER = re.compile(r"\b([\w']+(?:[ ,]+[\w']+){1,7})[ ,]+\1\b", re.IGNORECASE)
# A tag's start ("<fact>", "</context:") or a brace: the prompt's markup or the JSON's.
_MARKUP = re.compile(r"</?[A-Za-z_][\w-]*(?=[>:\s]|$)>?|[{}]")


@dataclass(frozen=True)
class _Allowed:
    """What a sentence may give without its sources' words: their numbers and dates, the
    turn's day, year and date, and the speaker's name."""

    numbers: set[str]
    dates: set[str]
    names: set[str]


@dataclass(frozen=True)
class Checked:
    text: str | None  # what is kept; None when no sentence survived
    dropped: list[tuple[str, str]]  # (sentence, reason)


def _stem(word: str) -> str:
    word = word.casefold()
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _matches(stem: str, known: set[str]) -> bool:
    if stem in known:
        return True
    return len(stem) >= 4 and any(
        len(k) >= 4 and (k.startswith(stem) or stem.startswith(k)) for k in known
    )


def has_date(text: str) -> bool:
    """Whether ``text`` gives a full date (``8 May 2023``)."""
    return DATE.search(text) is not None


def event_dates(text: str) -> list[str]:
    """The full dates ``text`` gives for what happened: not the date of mention each of its
    sentences may open with ("On 8 May 2023," or "Ann on 8 May 2023:")."""
    return [date for sentence in sentences(text) for date in DATE.findall(_unlabelled(sentence))]


def undated(sentence: str) -> str:
    """``sentence`` without an opening "On <date>," (the date of mention)."""
    rest = _OPENING_DATE.sub("", sentence)
    return rest[:1].upper() + rest[1:]


def content_stems(text: str, speaker: str | None = None) -> frozenset[str]:
    """What ``text`` says, as a set: the stems of its content words (not the speaker's name)
    and its dates. Two facts of which one's set holds the other's say the same thing, one of
    them with less."""
    name = {w.casefold() for w in _WORD.findall(speaker or "")}
    words = _WORD.findall(DATE.sub(" ", text))
    stems = {
        _stem(w)
        for w in words
        if not w.isdigit() and len(w) > 1 and w.casefold() not in _STOPWORDS | name
    }
    return frozenset(stems | set(DATE.findall(text)))


def names(text: str) -> frozenset[str]:
    """The capitalised words of ``text`` that name someone or something ("Jon", "Luna",
    "Door", "Dash"), folded: not stopwords ("On", "She"), months, weekdays or "I"."""
    return frozenset(
        folded
        for word in _WORD.findall(text)
        if word[0].isupper()
        and (folded := word.casefold()) not in _STOPWORDS
        and folded not in _MONTHS
        and folded not in _WEEKDAYS
        and word != "I"
    )


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def _unsupported(
    sentence: str,
    known: set[str],
    allowed: _Allowed,
    *,
    opening: bool = True,
    min_supported: float = MIN_SUPPORTED,
) -> str | None:
    """Why ``sentence`` is not supported by the sources whose stems are ``known``, or None.
    ``opening``: it starts a sentence, so its first word may be capitalised without naming."""
    for date in DATE.findall(sentence):
        if date not in allowed.dates:
            return f"gives the date {date}, which its source does not"
    words = _WORD.findall(DATE.sub(" ", sentence))
    counts: dict[str, int] = {}
    for word in words:
        counts[word.casefold()] = counts.get(word.casefold(), 0) + 1
    looping = [w for w, n in counts.items() if n > MAX_WORD_REPEATS and w not in _STOPWORDS]
    if looping:
        return f"repeats {looping[0]!r} {counts[looping[0]]} times"
    content = 0
    supported = 0
    for position, word in enumerate(words):
        folded = word.casefold()
        if word.isdigit():
            if word not in allowed.numbers:
                return f"gives the number {word}, which its source does not"
            continue
        if folded in allowed.names:
            continue
        if folded in _TIME_WORDS:
            if folded not in known:
                return f"says {word!r}, which its source does not"
            continue
        if len(folded) < 2 or folded in _STOPWORDS or folded in _MONTHS:
            continue
        found = _matches(_stem(word), known)
        if word[0].isupper() and (position > 0 or not opening) and not found and word != "I":
            return f"names {word!r}, which its source does not"
        content += 1
        supported += found
    if content and supported / content < min_supported:
        return f"only {supported} of its {content} content words are in its source"
    return None


def _of_listener(sentence: str, sources: list[str], speaker: str | None) -> str | None:
    """Why ``sentence`` says of ``speaker`` what its sources say of the one spoken to, or
    None. It does when it is about the speaker alone (the speaker's name comes first and no
    other name follows) and the source sentence sharing the most content words with it
    speaks of "you" and not of "I" or "we": the extractor wrote "Jon finds a perfect spot
    for his store." for Jon's "Wow, Gina! You found the perfect spot for your store."."""
    own = {w.casefold() for w in _WORD.findall(speaker or "")}
    words = _WORD.findall(undated(_LABEL.sub("", sentence)))
    if not own or not words or words[0].casefold() not in own or not names(sentence) <= own:
        return None
    said = content_stems(sentence, speaker)
    shared, source = max(
        (
            (len(said & content_stems(s)), s)
            for part in _CAPTION.split(" ".join(sources))
            for s in sentences(part)
        ),
        key=lambda pair: pair[0],
        default=(0, ""),
    )
    person = {w.casefold() for w in _WORD.findall(source)}
    if shared and person & _SECOND_PERSON and not person & _FIRST_PERSON:
        return f"says of {speaker} what its source says of the one spoken to"
    return None


def _leanings(text: str) -> set[str]:
    """Whether ``text`` speaks of someone liking something, of disliking it, of both or of
    neither."""
    words = [w.casefold() for w in _WORD.findall(text)]
    found: set[str] = set()
    for i, word in enumerate(words):
        if word in _LIKING or word in _DISLIKING:
            negated = any(w in _NEGATORS for w in words[max(0, i - 2) : i])
            found.add("liking" if (word in _LIKING) != negated else "disliking")
    return found


def _turned_over(sentence: str, given: set[str]) -> str | None:
    """Why ``sentence`` says the opposite of its sources about liking (their ``_leanings``
    are ``given``), or None: it likes where they only dislike, or dislikes where they only
    like."""
    said = _leanings(sentence)
    if said and given and not said & given:
        return f"speaks of {min(said)} where its source speaks only of {min(given)}"
    return None


def _cut_times(sentence: str, known: set[str]) -> tuple[str, list[str]]:
    """``sentence`` without the times (``_TIME_PHRASE``) whose time words its sources do not
    say, and those times."""
    cut: list[str] = []

    def unless_given(match: re.Match[str]) -> str:
        said = [w for w in _WORD.findall(match[0]) if w.casefold() in _TIME_WORDS]
        if all(_stem(w) in known for w in said):
            return match[0]
        cut.append(match[0])
        return ""

    rest = _TIME_PHRASE.sub(unless_given, sentence)
    if not cut:
        return sentence, []
    rest = re.sub(r"\s+([,.!?])", r"\1", " ".join(rest.split())).strip(" ,")
    return rest[:1].upper() + rest[1:], cut


def _supported_start(
    sentence: str, known: set[str], allowed: _Allowed, speaker: str | None, *, rescue: bool
) -> tuple[str, str] | None:
    """``sentence`` up to its first unsupported clause, or the first that says again what
    the clauses before it said ("Cara works as a nurse at the city hospital and is a nurse
    at the hospital."; a clause without content words, "for it", is not one), as a
    sentence, and why that clause goes; None when no clause after the first goes, or what
    is left is not enough: saying nothing, or (``rescue``: the whole sentence is
    unsupported) saying fewer than two things or fewer than ``CUT_SUPPORTED`` of them in
    the sources."""
    ends = [clause.start() for clause in (_RESCUE_CLAUSE if rescue else _CLAUSE).finditer(sentence)]
    if not ends:  # one clause: the sentence's own check has judged it
        return None
    end, why = 0, None
    for cut in [*ends, len(sentence)]:
        clause = sentence[end:cut]
        why = _unsupported(clause, known, allowed, opening=end == 0)
        said = content_stems(clause)
        if why is None and end and said and said <= content_stems(sentence[:end]):
            why = "says again what the sentence said before it"
        if why is not None:
            break
        end = cut
    start = sentence[:end]
    if why is None or end == 0 or _empty(start, allowed) is not None:
        return None
    if rescue and (
        len(content_stems(start, speaker) - set(DATE.findall(start))) < 2
        or _unsupported(start, known, allowed, min_supported=CUT_SUPPORTED) is not None
    ):
        return None
    return f"{start}.", why


def sentence_key(sentence: str) -> str:
    """The comparison form of a sentence: ``text_key`` without a leading ``Name:`` or ``Name on
    <date>:`` or ``On <date>,``, so "Ann: Luna died." repeats "Luna died."."""
    return text_key(_unlabelled(sentence))


def _unlabelled(sentence: str) -> str:
    """``sentence`` without a leading ``Name:``, ``Name on <date>:`` or ``On <date>,``."""
    return _OPENING_DATE.sub("", _LABEL.sub("", sentence))


def _runs(key: str) -> set[tuple[str, ...]]:
    words = key.split()
    n = REPEATED_RUN_WORDS
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _repeats(key: str, seen: set[str]) -> str | None:
    """Why the sentence of ``key`` repeats one of the ``seen`` before it, or None."""
    if key in seen:
        return "repeats an earlier sentence"
    if any(earlier.startswith(key) for earlier in seen):
        return "repeats the start of an earlier sentence"
    runs = _runs(key)
    if any(runs & _runs(earlier) for earlier in seen):
        return f"repeats {REPEATED_RUN_WORDS} or more words of an earlier sentence"
    return None


def say_once(sentence: str) -> str:
    """``sentence`` with words said twice in a row said once. One word over and over ("tea
    tea tea tea") is left for the looping check, which drops the sentence."""
    previous = None
    while previous != sentence:
        previous, sentence = sentence, _STUTTER.sub(_once, sentence)
    return sentence


def _once(match: re.Match[str]) -> str:
    words = {w.casefold() for w in _WORD.findall(match[1])}
    return match[1] if len(words) > 1 else match[0]


def drop_repeats(text: str) -> str:
    """``text`` without the sentences that say (or start, or partly say) again one before
    them, each saying what it says once, and a word said three or more times in a row once
    ("Gina is a positive and kinda kinda kinda kinda" -> "... and kinda")."""
    kept: list[str] = []
    seen: set[str] = set()
    for sentence in map(say_once, sentences(_LOOP.sub(r"\1", text))):
        key = sentence_key(sentence)
        if _repeats(key, seen) is None:
            seen.add(key)
            kept.append(sentence)
    return " ".join(kept)


def _empty(sentence: str, allowed: _Allowed) -> str | None:
    """Why ``sentence`` says nothing (a name, a date, a word alone), or None."""
    words = [
        w
        for w in _WORD.findall(DATE.sub(" ", sentence))
        if w.casefold() not in allowed.names and w.casefold() not in {"on", "in"}
    ]
    # One lower-case word can be a whole predicate ("Caroline paints."); a capitalised one
    # alone is a name or a noun the model stopped at ("Boston", "Coffee").
    if len(words) >= 2 or (words and words[0].islower()):
        return None
    return "says nothing beyond a name or a date"


def check(text: str, sources: list[str], speaker: str | None, at: datetime | None) -> Checked:
    """``text`` with its repeated and unsupported sentences dropped (see the module doc).
    ``speaker`` and the date ``at`` count as given by the sources."""
    source_text = " ".join(sources)
    known = {_stem(w) for w in _WORD.findall(source_text)}
    leanings = _leanings(source_text)
    allowed = _Allowed(
        numbers={w for w in _WORD.findall(source_text) if w.isdigit()},
        dates=set(DATE.findall(source_text)),
        names={w.casefold() for w in _WORD.findall(speaker or "")},
    )
    if at is not None:
        allowed.numbers.update({str(at.day), str(at.year)})
        allowed.dates.add(format_date(at))
    kept: list[str] = []
    dropped: list[tuple[str, str]] = []
    markup = next((m for m in _MARKUP.finditer(text) if m[0] not in source_text), None)
    if markup is not None:
        dropped.append((text[markup.start() :], "markup from the prompt or the JSON"))
        text = text[: markup.start()].rstrip(" ,;:-")
    seen: set[str] = set()
    for sentence in sentences(text):
        # "On <a date from nowhere>, ..." is the prompt's own form with a wrong date (often its
        # example's): the date goes, and the turn's date is written in its place later.
        # Nor does an opening date stay where the sentence says when ("On 20 November 2026,
        # Jack ran his first marathon on 19 November 2026."): asked when, a small model
        # answers with the first date it reads.
        opening = _OPENING_DATE.match(sentence)
        cut = opening[0].strip() if opening and opening[1] not in allowed.dates else None
        if opening and (cut or has_date(sentence[opening.end() :])):
            sentence = undated(sentence)
        sentence, times = _cut_times(sentence, known)
        dropped += [(time, "a time its source does not give") for time in times]
        once = say_once(sentence)
        if once != sentence:
            dropped.append((sentence, "says the same words twice in a row"))
            sentence = once
        key = sentence_key(sentence)
        repeated = _repeats(key, seen)
        if repeated is not None:
            dropped.append((sentence, repeated))
            continue
        seen.add(key)
        if sentence.endswith("?"):
            reason: str | None = "a question, which states nothing"
        elif (listener := _of_listener(sentence, sources, speaker)) is not None:
            reason = listener
        elif (turned := _turned_over(sentence, leanings)) is not None:
            reason = turned
        else:
            strictness = CUT_SUPPORTED if times else MIN_SUPPORTED
            reason = _unsupported(sentence, known, allowed, min_supported=strictness)
            trimmed = _supported_start(sentence, known, allowed, speaker, rescue=reason is not None)
            if trimmed is not None:
                start, why = trimmed
                dropped.append((sentence[len(start) - 1 :].strip(" ,;."), why))
                # What it kept may say the opposite of the turn: the clause cut was the
                # turn's own ("Mona is a coffee lover [and has a dislike for coffee].").
                sentence, reason = start, _turned_over(start, leanings)
        reason = reason or _empty(sentence, allowed)
        if reason is not None:
            dropped.append((sentence, reason))
            continue
        if cut is not None:
            dropped.append((cut, "a date its source does not give; the turn's date is used"))
        kept.append(sentence)
    return Checked(" ".join(kept) or None, dropped)


# --- relative dates ---------------------------------------------------------------------------

_Replacement = str | Callable[[re.Match[str]], str]


def _shift_month(at: datetime, months: int) -> str:
    index = at.year * 12 + at.month - 1 + months
    return f"{month_name[index % 12 + 1]} {index // 12}"


def _weekday(at: datetime, name: str, forward: bool) -> datetime:
    target = _WEEKDAYS.index(name.casefold())
    step = 1 if forward else -1
    day = at + timedelta(days=step)
    while day.weekday() != target:
        day += timedelta(days=step)
    return day


def resolve_dates(text: str, at: datetime | None) -> str:
    """``text`` with its relative dates written against ``at`` (unchanged when ``at`` is None)."""
    if at is None:
        return text
    for pattern, replacement in _date_rules(at):
        text = re.sub(pattern, _keep_case(replacement), text, flags=re.IGNORECASE)
    return text


def turn_time(turn: str, at: datetime | None) -> str | None:
    """The one time a turn gives, resolved ("on 19 November 2026" for "Yesterday I ran ..."),
    or None when it gives none or several."""
    if at is None:
        return None
    found: set[str] = set()
    for pattern, replacement in _date_rules(at):
        for match in re.finditer(pattern, turn, flags=re.IGNORECASE):
            found.add(replacement if isinstance(replacement, str) else replacement(match))
        turn = re.sub(pattern, " ", turn, flags=re.IGNORECASE)
    return found.pop() if len(found) == 1 else None


def gives_time(text: str, at: datetime | None) -> bool:
    """Whether ``text`` says when, other than by the date of mention ``at``."""
    mention = format_date(at) if at is not None else None
    if any(date != mention for date in DATE.findall(text)):
        return True
    return any(w.casefold() in _TIME_WORDS for w in _WORD.findall(text))


def _date_rules(at: datetime) -> list[tuple[str, _Replacement]]:
    d = format_date(at)
    return [
        (r"\bthe day before yesterday\b", f"on {format_date(at - timedelta(days=2))}"),
        (r"\bthe day after tomorrow\b", f"on {format_date(at + timedelta(days=2))}"),
        (r"\byesterday\b", f"on {format_date(at - timedelta(days=1))}"),
        (r"\btomorrow\b", f"on {format_date(at + timedelta(days=1))}"),
        (r"\blast (week|weekend)\b", lambda m: f"the {m[1].casefold()} before {d}"),
        (r"\bnext (week|weekend)\b", lambda m: f"the {m[1].casefold()} after {d}"),
        (r"\blast month\b", f"in {_shift_month(at, -1)}"),
        (r"\bnext month\b", f"in {_shift_month(at, 1)}"),
        (r"\blast year\b", f"in {at.year - 1}"),
        (r"\bnext year\b", f"in {at.year + 1}"),
        (rf"\b({_COUNT} (?:day|week|month|year)s?) ago\b", lambda m: f"{m[1]} before {d}"),
        (
            rf"\b(last|next) ({'|'.join(_WEEKDAYS)})\b",
            lambda m: f"on {format_date(_weekday(at, m[2], m[1].casefold() == 'next'))}",
        ),
    ]


def _keep_case(replacement: _Replacement) -> Callable[[re.Match[str]], str]:
    """A re.sub replacement that starts with a capital where the matched text did."""

    def apply(match: re.Match[str]) -> str:
        value = replacement if isinstance(replacement, str) else replacement(match)
        return value[0].upper() + value[1:] if match[0][0].isupper() else value

    return apply
