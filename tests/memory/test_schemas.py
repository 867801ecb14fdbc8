import uuid
from datetime import datetime

from app.memory.schemas import MemoryView, as_views, rekey, text_key


def test_as_views_keys_rows_in_order() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    at = datetime(2023, 5, 8)
    views = as_views(
        [(ids[0], "a", "Caroline", at), (ids[1], "b", None, None), (ids[2], "c", "Mel", at)]
    )

    assert [v.key for v in views] == ["m1", "m2", "m3"]
    assert [v.id for v in views] == ids
    assert views[0] == MemoryView("m1", ids[0], "a", "Caroline", at)
    assert views[1].speaker is None and views[1].occurred_at is None


def test_rekey_renumbers_without_touching_anything_else() -> None:
    views = as_views([(uuid.uuid4(), t, None, None) for t in "abc"])
    renumbered = rekey([views[2], views[0]])

    assert [(v.key, v.text) for v in renumbered] == [("m1", "c"), ("m2", "a")]
    assert renumbered[0].id == views[2].id
    assert views[2].key == "m3"


def test_text_key_ignores_case_spacing_and_final_punctuation() -> None:
    assert text_key("Andrew likes tea.") == text_key("  andrew   LIKES tea ")
    assert text_key("Andrew likes tea") != text_key("Andrew likes coffee")
