"""Scores per configuration and category, written as ``summary.json``, ``results.md`` and
``chart.png``.

Scores are kept as fractions in JSON and shown as percentages (as the paper's tables do). The J
column shows a number only for answers an LLM judge actually labelled.
"""

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training.eval.loaders import CATEGORY_NAMES

OVERALL = "overall"
NOT_CONFIGURED = "not configured"
SUMMARY_FILE = "summary.json"
MARKDOWN_FILE = "results.md"
CHART_FILE = "chart.png"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _scores(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    judged = [r["scores"]["judge"] for r in rows if r["scores"].get("judge") is not None]
    return {
        "count": len(rows),
        "f1": _mean([r["scores"]["f1"] for r in rows]),
        "bleu1": _mean([r["scores"]["bleu1"] for r in rows]),
        "em": _mean([r["scores"]["em"] for r in rows]),
        "judge": _mean(judged) if judged else None,
        "judged": len(judged),
    }


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean scores per category (by name, in LoCoMo's numbering order) and overall."""
    by_category: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    everything: list[Mapping[str, Any]] = []
    for row in rows:
        by_category[int(row["category"])].append(row)
        everything.append(row)
    result = {CATEGORY_NAMES[c]: _scores(by_category[c]) for c in sorted(by_category)}
    if everything:
        result[OVERALL] = _scores(everything)
    return result


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _judge_cell(scores: Mapping[str, Any], judge_configured: bool) -> str:
    if not judge_configured:
        return NOT_CONFIGURED
    if scores["judged"] == 0:
        return "none judged"
    cell = _pct(scores["judge"])
    if scores["judged"] < scores["count"]:
        cell += f" ({scores['judged']}/{scores['count']} judged)"
    return cell


def _seconds(value: float) -> str:
    return f"{value:,.1f}"


def render_markdown(summary: Mapping[str, Any]) -> str:
    judge = summary.get("judge")
    configs: Mapping[str, Mapping[str, Any]] = summary["configs"]
    lines = [
        "# LoCoMo evaluation",
        "",
        f"- data: {', '.join(summary.get('data', [])) or '-'}",
        f"- conversations: {', '.join(summary.get('conversations', [])) or '-'}",
        f"- categories: {', '.join(CATEGORY_NAMES[c] for c in summary.get('categories', []))}",
        f"- questions per conversation: {summary.get('limit_questions') or 'all'}"
        f" (seed {summary.get('seed')})",
        "- judge: "
        + (f"{judge['model']} ({judge['prompt_version']})" if judge else NOT_CONFIGURED),
        f"- run id: {summary.get('run_id')}",
        "",
        "Scores are percentages: F1 and exact match (EM) as LoCoMo's official evaluation "
        "computes them, BLEU-1 (smoothed, unigram), J = share of answers an LLM judge "
        "labelled CORRECT.",
        "",
        "## Overall",
        "",
        "| Configuration | F1 | BLEU-1 | J | EM | Count | Ingest (s) | Answer (s) | Wall (s) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, config in configs.items():
        overall = config["scores"].get(OVERALL)
        if overall is None:
            lines.append(f"| {name} | - | - | - | - | 0 | - | - | - |")
            continue
        lines.append(
            f"| {name} | {_pct(overall['f1'])} | {_pct(overall['bleu1'])} "
            f"| {_judge_cell(overall, judge is not None)} | {_pct(overall['em'])} "
            f"| {overall['count']} | {_seconds(config['ingest_seconds'])} "
            f"| {_seconds(config['answer_seconds'])} | {_seconds(config['wall_seconds'])} |"
        )
    lines += [
        "",
        "## By category",
        "",
        "| Configuration | Category | F1 | BLEU-1 | J | Count |",
        "|---|---|---:|---:|---|---:|",
    ]
    for name, config in configs.items():
        for category, scores in config["scores"].items():
            lines.append(
                f"| {name} | {category} | {_pct(scores['f1'])} | {_pct(scores['bleu1'])} "
                f"| {_judge_cell(scores, judge is not None)} | {scores['count']} |"
            )
    lines += ["", "## Configurations", ""]
    for name, config in configs.items():
        settings = ", ".join(f"{k}={v}" for k, v in config["target"].items())
        models = ", ".join(config.get("models", [])) or "-"
        lines.append(f"- **{name}**: {settings}; model {models}")
    notes = [f"{name}: {note}" for name, c in configs.items() for note in c.get("notes", [])]
    notes += summary.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _percent_or_nan(value: float | None) -> float:
    return math.nan if value is None else 100 * value


def render_chart(summary: Mapping[str, Any], path: Path) -> None:
    """Grouped bars: one group per category (and overall), one bar per configuration; one
    panel per metric, J only when some answers were judged."""
    configs: Mapping[str, Mapping[str, Any]] = summary["configs"]
    groups: list[str] = [CATEGORY_NAMES[c] for c in summary.get("categories", [])] + [OVERALL]
    metrics = [("f1", "F1"), ("bleu1", "BLEU-1")]
    if any(s.get("judged") for c in configs.values() for s in c["scores"].values()):
        metrics.append(("judge", "J"))
    figure = Figure(figsize=(max(6.0, 1.6 * len(groups)), 3.2 * len(metrics)), dpi=100)
    FigureCanvasAgg(figure)
    width = 0.8 / max(1, len(configs))
    for row, (key, label) in enumerate(metrics):
        axes = figure.add_subplot(len(metrics), 1, row + 1)
        for i, (name, config) in enumerate(configs.items()):
            # NaN draws no bar: a category without answers, or without judged answers, has
            # no score rather than a score of zero.
            values = [_percent_or_nan(config["scores"].get(g, {}).get(key)) for g in groups]
            positions = [x + (i - (len(configs) - 1) / 2) * width for x in range(len(groups))]
            axes.bar(positions, values, width=width, label=name)
        axes.set_xticks(range(len(groups)), groups)
        axes.set_ylabel(f"{label} (%)")
        axes.set_ylim(0, 100)
        axes.grid(axis="y", alpha=0.3)
        if row == 0:
            axes.legend(fontsize="small", ncols=min(5, max(1, len(configs))))
    figure.tight_layout()
    figure.savefig(path, format="png")


def write_report(out_dir: Path, summary: Mapping[str, Any]) -> None:
    """``summary.json``, ``results.md`` and ``chart.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / MARKDOWN_FILE).write_text(render_markdown(summary), encoding="utf-8")
    render_chart(summary, out_dir / CHART_FILE)
