"""Which answer rows count as lists for ``bench.train_answer --list-repeat``."""

from bench.train_answer import is_list_answer, repeat_lists


def test_short_items_make_a_list_and_clauses_do_not():
    assert is_list_answer("Oliver, Luna, Bailey")
    assert is_list_answer("clarinet and violin")
    assert is_list_answer("explored nature, roasted marshmallows, and went on a hike")
    assert not is_list_answer("Sweden")
    assert not is_list_answer("Yes, since she collects classic children's books")
    assert not is_list_answer("Mel and her husband have been married for 5 years.")


def test_list_rows_repeat_and_dates_do_not():
    rows = [
        {"gold": "Oliver, Luna, Bailey", "category": 1},
        {"gold": "19 January, 2023", "category": 2},
        {"gold": "Sweden", "category": 4},
    ]
    repeated = repeat_lists(rows, 3)
    assert [r["gold"] for r in repeated] == ["Oliver, Luna, Bailey"] * 3 + [
        "19 January, 2023",
        "Sweden",
    ]
    assert repeat_lists(rows, 1) == rows
