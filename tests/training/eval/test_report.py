"""The report from synthetic results: aggregation, markdown, JSON and the chart."""

import json
from pathlib import Path
from typing import Any

import pytest

from training.eval.report import aggregate, render_markdown, write_report


def _row(category: int, f1: float, judge: float | None = None) -> dict[str, Any]:
    return {"category": category, "scores": {"f1": f1, "bleu1": f1 / 2, "em": f1, "judge": judge}}


def _summary(rows_by_config: dict[str, list[dict[str, Any]]], judge: bool) -> dict[str, Any]:
    return {
        "run_id": "abcd",
        "data": ["locomo_val_conv30.json"],
        "conversations": ["conv-30"],
        "categories": [1, 2, 4],
        "limit_questions": None,
        "seed": 0,
        "judge": {"model": "judge-m", "prompt_version": "judge-v1", "url": "u"} if judge else None,
        "configs": {
            name: {
                "target": {"kind": "service", "answer_adapter": "base"},
                "models": ["m"],
                "ingest_seconds": 12.0,
                "answer_seconds": 3.5,
                "wall_seconds": 15.5,
                "scores": aggregate(rows),
                "notes": [],
            }
            for name, rows in rows_by_config.items()
        },
        "notes": ["a run note"],
    }


def test_aggregate_per_category_and_overall() -> None:
    scores = aggregate([_row(4, 1.0, 1.0), _row(4, 0.0, 0.0), _row(1, 0.5, None)])
    assert list(scores) == ["multi-hop", "single-hop", "overall"]
    assert scores["single-hop"]["f1"] == 0.5 and scores["single-hop"]["count"] == 2
    assert scores["single-hop"]["judge"] == 0.5 and scores["single-hop"]["judged"] == 2
    assert scores["multi-hop"]["judge"] is None and scores["multi-hop"]["judged"] == 0
    assert scores["overall"]["f1"] == pytest.approx(0.5) and scores["overall"]["count"] == 3
    assert scores["overall"]["bleu1"] == pytest.approx(0.25)
    assert aggregate([]) == {}


def test_markdown_without_a_judge_says_not_configured() -> None:
    summary = _summary({"base": [_row(4, 1.0), _row(2, 0.5)]}, judge=False)
    text = render_markdown(summary)
    assert "| base | 75.00 | 37.50 | not configured | 75.00 | 2 | 12.0 | 3.5 | 15.5 |" in text
    assert "| base | temporal | 50.00 | 25.00 | not configured | 1 |" in text
    assert "- judge: not configured" in text
    assert "- a run note" in text


def test_markdown_with_a_judge_shows_partial_judging() -> None:
    rows = [_row(4, 1.0, 1.0), _row(4, 0.0, None)]
    text = render_markdown(_summary({"trained-both": rows}, judge=True))
    assert "| 100.00 (1/2 judged) |" in text
    assert "- judge: judge-m (judge-v1)" in text


def test_write_report_writes_json_markdown_and_png(tmp_path: Path) -> None:
    summary = _summary(
        {
            "full-context": [_row(1, 0.2), _row(2, 0.4), _row(4, 0.6)],
            "base": [_row(1, 0.3, 1.0), _row(2, 0.5, 0.0), _row(4, 0.7, 1.0)],
        },
        judge=True,
    )
    out = tmp_path / "results"
    write_report(out, summary)
    assert json.loads((out / "summary.json").read_text()) == summary
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# LoCoMo evaluation")
    assert "| full-context | multi-hop | 20.00 |" in markdown
    png = (out / "chart.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
