"""The LoCoMo metrics on answers checked by hand against the official definitions."""

import pytest

from training.eval.metrics import (
    abstains,
    bleu1,
    exact_match,
    locomo_f1,
    multi_hop_f1,
    normalize_answer,
    reference_answer,
    score_answer,
    token_f1,
)


class TestNormalisation:
    def test_lower_cases_and_drops_punctuation(self) -> None:
        assert normalize_answer("Paris, France!") == "paris france"

    def test_drops_articles_and_the_word_and(self) -> None:
        assert normalize_answer("The cat and a hat, an owl") == "cat hat owl"

    def test_keeps_article_letters_inside_words(self) -> None:
        assert normalize_answer("Andrew ate a banana") == "andrew ate banana"

    def test_collapses_whitespace(self) -> None:
        assert normalize_answer("  7   May\t2023 ") == "7 may 2023"


class TestTokenF1:
    def test_identical_answers_score_one(self) -> None:
        assert token_f1("7 May 2023", "7 May 2023") == 1.0

    def test_articles_and_punctuation_do_not_count(self) -> None:
        assert token_f1("The beach.", "beach") == 1.0

    def test_porter_stemming_matches_inflections(self) -> None:
        assert token_f1("running dogs", "dog runs") == 1.0

    def test_partial_overlap(self) -> None:
        # prediction "went to paris" vs gold "paris": precision 1/3, recall 1 -> F1 0.5
        assert token_f1("went to Paris", "Paris") == pytest.approx(0.5)

    def test_disjoint_and_empty_answers_score_zero(self) -> None:
        assert token_f1("London", "Paris") == 0.0
        assert token_f1("", "Paris") == 0.0
        assert token_f1("the", "Paris") == 0.0


class TestMultiHop:
    def test_each_gold_part_takes_its_best_prediction_part(self) -> None:
        # gold parts: london (1.0 from "London"), paris (1.0 from "Paris"), rome (0) -> 2/3
        assert multi_hop_f1("Paris, London", "London, Paris, Rome") == pytest.approx(2 / 3)

    def test_one_prediction_part_can_serve_several_gold_parts(self) -> None:
        # "pottery painting" vs each of "pottery" and "painting": P 1/2, R 1 -> 2/3 each
        assert multi_hop_f1("pottery painting", "pottery, painting") == pytest.approx(2 / 3)

    def test_category_one_uses_the_multi_hop_rule(self) -> None:
        assert locomo_f1("Paris, London", "London, Paris", 1) == 1.0
        # the same answer as one string is scored on all its tokens for other categories
        assert locomo_f1("Paris, London", "London, Paris", 4) == 1.0
        assert locomo_f1("Paris", "London, Paris", 1) == pytest.approx(0.5)
        assert locomo_f1("Paris", "London, Paris", 4) == pytest.approx(2 / 3)


class TestCategoryRules:
    def test_open_domain_takes_the_first_gold_alternative(self) -> None:
        assert reference_answer("Psychology; counseling", 3) == "Psychology"
        assert locomo_f1("psychology", "Psychology; counseling", 3) == 1.0

    def test_other_categories_keep_the_semicolon(self) -> None:
        assert reference_answer("a; b", 4) == "a; b"

    def test_adversarial_answers_are_right_when_they_abstain(self) -> None:
        assert abstains("That is not mentioned in the conversation.")
        assert locomo_f1("No information available", "Not mentioned", 5) == 1.0
        assert locomo_f1("Yes", "Not mentioned", 5) == 0.0


class TestBleu1:
    def test_identical(self) -> None:
        assert bleu1("the red car", "the red car") == pytest.approx(1.0)

    def test_disjoint(self) -> None:
        assert bleu1("blue bike", "red car") == pytest.approx(0.0, abs=1e-9)

    def test_partial_longer_prediction_loses_precision(self) -> None:
        # 2 of 3 unigrams match, no brevity penalty
        assert bleu1("the cat sat", "the cat") == pytest.approx(2 / 3)

    def test_partial_shorter_prediction_gets_a_brevity_penalty(self) -> None:
        # precision 1, brevity penalty exp(1 - 3/2)
        assert bleu1("the cat", "the cat sat") == pytest.approx(0.6065, abs=1e-4)

    def test_case_is_ignored_and_empty_scores_zero(self) -> None:
        assert bleu1("Paris", "paris") == pytest.approx(1.0)
        assert bleu1("", "paris") == 0.0


class TestExactMatch:
    def test_after_normalisation(self) -> None:
        assert exact_match("The Beach!", "beach")
        assert not exact_match("the beach house", "beach")

    def test_score_answer_combines_the_metrics(self) -> None:
        scores = score_answer("7 May 2023", "7 May 2023", 2)
        assert (scores.f1, scores.bleu1, scores.em) == (1.0, pytest.approx(1.0), 1.0)
        wrong = score_answer("8 June", "7 May 2023", 2)
        assert (wrong.f1, wrong.em) == (0.0, 0.0)

    def test_score_answer_for_adversarial_items(self) -> None:
        assert score_answer("Not mentioned", "Not mentioned in the conversation", 5).em == 1.0
        assert score_answer("Yes", "Not mentioned in the conversation", 5).em == 0.0
