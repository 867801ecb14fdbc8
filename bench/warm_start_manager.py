"""A supervised warm start for the Memory Manager, on generated decisions, on this CPU.

Trains a LoRA adapter with SFT (training/sft.py) on rows from ``training.warm_start``: small
generated banks and a new fact that calls for ADD, UPDATE (a change, or an addition merged in),
DELETE and ADD (something that ended) or NOOP (a restatement). Then scores the base model and
the adapter through the serving backend (greedy, schema-constrained) on

- held-out generated rows (people, places and things training never saw): the share of
  decisions right, in all and by kind (half the ADD rows about the speaker state something new
  beside a memory the bank shows, an ADD that looks like a change), and the outcome F1 (the
  frozen base Answer Agent answering from the bank);
- conv-30's Manager rows (as ``bench.train_manager`` builds them): the outcome F1, so an
  adapter that decides more does not lose what the base model's bank answered.

With ``--compare-shipped`` the shipped Manager default is scored on the same rows too.

``--grpo-steps N`` goes on from the warm start with N steps of GRPO (training/grpo.py) on
other generated rows (the next seed), rewarded by the paper's outcome and, with
``--decision-weight``, by deciding what the row calls for; ``--start-from DIR`` takes a warm
start already made (the shipped one) instead of training it again:

    python -m bench.warm_start_manager --start-from app/adapters/defaults/manager \
        --grpo-steps 25 --decision-weight 0.5        # ~60 min: 97 s a step, 3 evaluations

Writes ``bench/out/warm_start_manager.json`` and ``.png``.

    python -m bench.warm_start_manager                 # ~55 min: 120 steps of 4 rows, 2 evaluations
    python -m bench.warm_start_manager --max-steps 5 --val-limit 8 --held-out 16   # smoke run

Targets: the adapter decides >= 80 % of held-out rows right and more than the base model, and
its conv-30 outcome F1 is not below the base model's (with ``--grpo-steps``: nor below the warm
start's, on both). With ``--ship`` an adapter that meets these (all targets but the first)
becomes the shipped Manager default (app/adapters/defaults/manager/), whether or not it reaches
80 %: serving it is then better than serving what it was trained from by every measure taken here.
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from app.adapters.service import DEFAULTS_DIR
from bench.common import Target, print_targets, write_json
from bench.train_answer import (
    SFT_CARD_SETTINGS,
    VAL_FILE,
    arguments,
    job_config,
    plot_sft,
    sft_job_config,
    sft_payload,
    ship,
    train_grpo,
    train_sft,
)
from training.datasets import Retriever, load_encoder, manager_rows_from_locomo
from training.grpo import TrainResult
from training.validate import evaluate_adapter
from training.warm_start import CHANGE_SHARE, manager_warm_start_rows

NAME = "warm_start_manager"
TARGET_RIGHT = 0.8
HELD_OUT_NEAR_SHARE = 0.5


def main() -> int:
    parser = arguments(__doc__.splitlines()[0], minutes=90.0, max_steps=120, lr=5e-4)
    parser.add_argument("--rows", type=int, default=480, help="generated training rows")
    parser.add_argument("--held-out", type=int, default=60, help="generated validation rows")
    parser.add_argument("--batch", type=int, default=4, help="rows per optimizer step")
    # With the share of changes a conversation has (40 %), the adapter stayed ADD-biased
    # (58 % of held-out decisions right); with 55 % it decided 68 % right.
    parser.add_argument(
        "--change-share",
        type=float,
        default=0.55,
        help="share of training rows that change a stored memory (held-out rows keep "
        f"{CHANGE_SHARE})",
    )
    # At 0.6 (of 240 rows) an adapter kept more new facts beside a memory but lost restatements
    # and endings; 0.3 of 480 rows was the first warm start past 80 % of held-out rows.
    parser.add_argument(
        "--near-share",
        type=float,
        default=0.3,
        help="share of training ADD rows about the speaker that state something new beside a "
        f"memory the bank shows (held-out rows keep {HELD_OUT_NEAR_SHARE})",
    )
    parser.add_argument(
        "--compare-shipped",
        action="store_true",
        help="score the shipped Manager default on the same rows",
    )
    parser.add_argument(
        "--start-from",
        type=Path,
        help="a warm start already made (e.g. app/adapters/defaults/manager): no SFT stage",
    )
    parser.add_argument(
        "--grpo-steps", type=int, default=0, help="GRPO steps after the warm start (0: none)"
    )
    parser.add_argument("--grpo-rows", type=int, default=240, help="generated GRPO rows")
    parser.add_argument("--grpo-lr", type=float, default=1e-4, help="GRPO learning rate")
    parser.add_argument(
        "--grpo-near-share",
        type=float,
        default=HELD_OUT_NEAR_SHARE,
        help="--near-share of the GRPO rows",
    )
    parser.add_argument(
        "--decision-weight",
        type=float,
        default=0.5,
        help="share of the GRPO outcome given to deciding what the row calls for",
    )
    # Two threads: a step is 4 prompts of ~600 tokens, long enough to keep both cores busy.
    # GRPO samples replies of up to 96 tokens: a merge UPDATE writes the memory and the fact.
    # Every one of conv-30's 64 Manager rows: with the first 40, the outcome of one adapter
    # moved by 0.02-0.03 between runs, as much as the gains it was to judge.
    parser.set_defaults(val_limit=0, threads=2, max_completion_length=96)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retriever = Retriever(load_encoder())
    train_rows = manager_warm_start_rows(
        args.rows, seed=args.seed, change_share=args.change_share, near_share=args.near_share
    )
    held_out = manager_warm_start_rows(
        args.held_out, held_out=True, seed=args.seed, near_share=HELD_OUT_NEAR_SHARE
    )
    conv30 = manager_rows_from_locomo(VAL_FILE, retriever)
    conv30 = conv30[: args.val_limit] if args.val_limit else conv30
    config = sft_job_config(args, "manager", NAME)

    def evaluate(adapter: Path | None) -> dict[str, Any]:
        return {
            name: evaluate_adapter(
                "manager", adapter, rows, base_model_dir=config.base_model_dir, retriever=retriever
            )
            for name, rows in (("held_out", held_out), ("conv30", conv30))
        }

    print(f"[{NAME}] base model on {len(held_out)} held-out and {len(conv30)} conv-30 rows")
    before = evaluate(None)
    _report("base", before)
    shipped_dir = DEFAULTS_DIR / "manager"
    if args.compare_shipped and shipped_dir.is_dir():
        _report("shipped", evaluate(shipped_dir))
    elif args.compare_shipped:
        print(f"[{NAME}] no shipped Manager in {shipped_dir} to compare", flush=True)
    warm: TrainResult | None = None
    if args.start_from is not None:
        warm_dir = args.start_from
    else:
        warm = train_sft(NAME, config, train_rows, args.minutes)
        warm_dir = warm.adapter_dir
    grpo: TrainResult | None = None
    warm_report: dict[str, Any] = {}
    if args.grpo_steps:
        warm_report = evaluate(warm_dir)
        _report("warm start", warm_report)
        grpo_rows = manager_warm_start_rows(
            args.grpo_rows,
            seed=args.seed + 1,
            change_share=args.change_share,
            near_share=args.grpo_near_share,
        )
        grpo = _grpo(args, grpo_rows, warm_dir, retriever)
    result = grpo or warm
    adapter_dir = result.adapter_dir if result is not None else warm_dir
    after = evaluate(adapter_dir)
    _report("adapter", after)
    right = after["held_out"]["decisions_right"]
    targets = [Target("held-out decisions right", right, TARGET_RIGHT, "", True)]
    targets += _gains(before, after, "base")
    if grpo is not None:
        targets += _gains(warm_report, after, "warm start")
    print_targets(targets)
    if result is None:
        print(f"[{NAME}] no training asked for: scored {warm_dir}", flush=True)
        return 0 if all(t.passed for t in targets) else 1
    payload = sft_payload(
        args, train_rows, conv30, before, after, result, targets, held_out_rows=len(held_out)
    )
    if grpo is not None:
        payload["warm_start"] = warm_report
    print(f"[{NAME}] wrote {write_json(NAME, payload, args.out)} and {_plot(payload, args.out)}")
    passed = all(t.passed for t in targets)
    if args.ship and all(t.passed for t in targets[1:]):
        sft_steps, sft_seconds = (
            (warm.metrics["steps"], warm.metrics["train_seconds"])
            if warm is not None
            else _previous_run(warm_dir)
        )
        grpo_flags = (
            f" --grpo-steps {grpo.metrics['steps']} --grpo-rows {args.grpo_rows} --grpo-lr "
            f"{args.grpo_lr} --grpo-near-share {args.grpo_near_share} --decision-weight "
            f"{args.decision_weight}"
            if grpo is not None
            else ""
        )
        card = {
            "method": "SFT + LoRA (training/sft.py) on generated decisions "
            "(training/warm_start.py)"
            + (
                ", then GRPO (training/grpo.py) on more of them, rewarded by outcome and decision"
                if grpo is not None
                else ""
            ),
            "command": f"python -m bench.{NAME} --rows {args.rows} --change-share "
            f"{args.change_share} --near-share {args.near_share} --max-steps {sft_steps}"
            f"{grpo_flags} --minutes 100000 --ship",
            "steps": sft_steps,
            "train_seconds": sft_seconds,
            "targets": [t.as_dict() for t in targets],
            "data": {
                "train": f"training.warm_start: {len(train_rows)} generated rows, seed "
                f"{args.seed}, {args.change_share:.0%} of them changes, "
                f"{args.near_share:.0%} of the speaker's new facts beside a memory",
                **(
                    {
                        "grpo": f"training.warm_start: {args.grpo_rows} more generated rows, "
                        f"seed {args.seed + 1}, {args.change_share:.0%} of them changes, "
                        f"{args.grpo_near_share:.0%} of the speaker's new facts beside a memory"
                    }
                    if grpo is not None
                    else {}
                ),
                "validation": f"{len(held_out)} held-out generated rows; {VAL_FILE.name}",
                "validation_rows": len(conv30),
            },
            "validation": f"bench.{NAME}: decisions right on held-out generated rows; "
            "conv-30 Manager rows' outcome (base Answer Agent's F1)",
            "metrics": _card_metrics(after),
            "base_metrics": _card_metrics(before),
            **(
                {
                    "grpo": {
                        "steps": grpo.metrics["steps"],
                        "train_seconds": grpo.metrics["train_seconds"],
                        "settings": {
                            "learning_rate": args.grpo_lr,
                            "decision_weight": args.decision_weight,
                            "reward": args.reward,
                            "format_weight": args.format_weight,
                            "num_generations": args.num_generations,
                            "prompts_per_step": args.prompts_per_step,
                            "max_completion_length": args.max_completion_length,
                            "beta": args.beta,
                            "temperature": args.temperature,
                        },
                        "warm_start_metrics": _card_metrics(warm_report),
                    }
                }
                if grpo is not None
                else {}
            ),
        }
        # The command makes the warm start again: no earlier adapter is an input.
        payload["settings"]["start_from"] = None
        shipped = ship(NAME, payload, config, result.adapter_dir, card, SFT_CARD_SETTINGS)
        print(f"[{NAME}] shipped as the default manager adapter in {shipped}", flush=True)
    elif args.ship:
        print(f"[{NAME}] not shipped: the adapter does not beat the base model", flush=True)
    return 0 if passed else 1


def _grpo(
    args: argparse.Namespace, rows: list[dict[str, Any]], warm_dir: Path, retriever: Retriever
) -> TrainResult:
    """GRPO from the warm start at ``warm_dir``, ``args.grpo_steps`` steps on ``rows``."""
    config = replace(
        job_config(args, "manager", args.out / "adapters" / f"{NAME}-grpo"),
        learning_rate=args.grpo_lr,
        max_steps=args.grpo_steps,
        decision_weight=args.decision_weight,
    )
    return train_grpo(NAME, config, rows, args.minutes, retriever=retriever, start_from=warm_dir)


def _previous_run(warm_dir: Path) -> tuple[int, float | None]:
    """The SFT steps and seconds of a warm start made before, as its card says."""
    path = warm_dir / "card.json"
    card = json.loads(path.read_text()) if path.is_file() else {}
    return int(card.get("steps", 0)), card.get("train_seconds")


def _gains(before: dict[str, Any], after: dict[str, Any], against: str) -> list[Target]:
    """The adapter is not below ``before`` (scored as ``against``) on either measure."""
    return [
        Target(
            f"held-out decisions right, adapter - {against}",
            after["held_out"]["decisions_right"] - before["held_out"]["decisions_right"],
            0.0,
            "",
            True,
        ),
        Target(
            f"conv-30 outcome F1, adapter - {against}",
            after["conv30"]["f1"] - before["conv30"]["f1"],
            0.0,
            "",
            True,
        ),
    ]


def _card_metrics(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "held_out_decisions_right": report["held_out"]["decisions_right"],
        "held_out_decisions_right_by_kind": report["held_out"]["decisions_right_by_kind"],
        "held_out_operations": report["held_out"]["operations"],
        "conv30_f1": report["conv30"]["f1"],
        "conv30_operations": report["conv30"]["operations"],
    }


def _report(side: str, report: dict[str, Any]) -> None:
    held, conv = report["held_out"], report["conv30"]
    print(
        f"[{NAME}] {side}: held-out decisions right {held['decisions_right']:.3f} "
        f"{held['decisions_right_by_kind']}, F1 {held['f1']:.4f}, ops {held['operations']}; "
        f"conv-30 F1 {conv['f1']:.4f}, "
        f"ops {conv['operations']}",
        flush=True,
    )


def _plot(payload: dict[str, Any], out_dir: Path) -> Path:
    grpo = "warm_start" in payload
    shown = [("before", "base")]
    shown += (
        [("warm_start", "warm start"), ("after", "GRPO adapter")]
        if grpo
        else [("after", "SFT adapter")]
    )
    sides = {
        label: [
            payload[side]["held_out"]["decisions_right"],
            payload[side]["held_out"]["f1"],
            payload[side]["conv30"]["f1"],
        ]
        for side, label in shown
    }
    labels = ["held-out\ndecisions right", "held-out\noutcome F1", "conv-30\noutcome F1"]
    grpo_curves: dict[str, Any] = (
        {"curves": ("reward_mean", "outcome", "decision"), "method": "SFT, then GRPO, + LoRA"}
        if grpo
        else {}
    )
    return plot_sft(NAME, labels, sides, payload["history"], "validation", out_dir, **grpo_curves)


if __name__ == "__main__":
    raise SystemExit(main())
