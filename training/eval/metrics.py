"""Answer metrics as LoCoMo's official evaluation code defines them, plus BLEU-1.

F1 and exact match follow snap-research/LoCoMo ``task_eval/evaluation.py``: the same answer
normalisation, Porter-stemmed token F1, the multi-hop rule (category 1), the first of several
gold answers for open-domain items (category 3) and the "not mentioned" rule for adversarial
items (category 5). BLEU-1 follows the evaluation Mem0 published and the Memory-R1 paper
compares against: NLTK ``sentence_bleu`` with unigram weights and smoothing on lower-cased word
and punctuation tokens. These functions are also the training rewards, so they stay pure.
"""

import re
import string
from collections import Counter
from dataclasses import dataclass

from nltk.stem import PorterStemmer
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

_stemmer = PorterStemmer()
_smoothing = SmoothingFunction().method1
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
# NLTK's word_tokenize needs a downloaded sentence model; this splits words and punctuation
# the same way for answer-length text.
_BLEU_TOKENS = re.compile(r"\w+|[^\w\s]")
_ABSTENTIONS = ("no information available", "not mentioned")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles or "and", single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _stems(text: str) -> list[str]:
    return [_stemmer.stem(token) for token in normalize_answer(text).split()]


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of precision and recall over stemmed, normalised tokens."""
    predicted, expected = _stems(prediction), _stems(gold)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(expected)
    return 2 * precision * recall / (precision + recall)


def multi_hop_f1(prediction: str, gold: str) -> float:
    """Category 1: the gold answer lists sub-answers separated by commas; each sub-answer is
    credited with its best-matching comma-separated part of the prediction, and the credits
    are averaged over the sub-answers (so listing only some of them costs recall)."""
    parts = [p.strip() for p in prediction.split(",")]
    sub_answers = [g.strip() for g in gold.split(",")]
    return sum(max(token_f1(p, g) for p in parts) for g in sub_answers) / len(sub_answers)


def reference_answer(gold: str, category: int) -> str:
    """The gold answer the metrics compare with: open-domain items may list alternatives after
    a semicolon, and only the first is the reference."""
    return gold.split(";")[0].strip() if category == 3 else gold


def abstains(prediction: str) -> bool:
    """Whether an answer says the conversation does not contain it (category 5 is right then)."""
    lowered = prediction.lower()
    return any(phrase in lowered for phrase in _ABSTENTIONS)


def locomo_f1(prediction: str, gold: str, category: int) -> float:
    """The official per-question F1 for a LoCoMo category."""
    if category == 5:
        return 1.0 if abstains(prediction) else 0.0
    reference = reference_answer(gold, category)
    return multi_hop_f1(prediction, reference) if category == 1 else token_f1(prediction, reference)


def exact_match(prediction: str, gold: str) -> bool:
    """The official exact match: the same set of normalised tokens (order and repeats aside)."""
    return set(normalize_answer(prediction).split()) == set(normalize_answer(gold).split())


def bleu1(prediction: str, gold: str) -> float:
    """Smoothed sentence BLEU with unigram weights only; 0 when either side has no tokens."""
    hypothesis = _BLEU_TOKENS.findall(prediction.lower())
    reference = _BLEU_TOKENS.findall(gold.lower())
    if not hypothesis or not reference:
        return 0.0
    score = sentence_bleu(
        [reference], hypothesis, weights=(1, 0, 0, 0), smoothing_function=_smoothing
    )
    return float(score)


@dataclass(frozen=True)
class AnswerScores:
    f1: float
    bleu1: float
    em: float  # 1.0 or 0.0, a float so it averages like the others


def score_answer(prediction: str, gold: str, category: int) -> AnswerScores:
    """All automatic metrics of one answer."""
    reference = reference_answer(gold, category)
    if category == 5:
        em = 1.0 if abstains(prediction) else 0.0
    else:
        em = 1.0 if exact_match(prediction, reference) else 0.0
    return AnswerScores(
        f1=locomo_f1(prediction, gold, category),
        bleu1=bleu1(prediction, reference),
        em=em,
    )
