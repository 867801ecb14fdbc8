"""GRPO for the Memory Manager, rewarded by outcome as in the paper, on this CPU.

Rows come from conv-26 (training) and conv-30 (validation): for each question whose evidence
produced an observation, the bank before that observation is the state and the observation is
the new fact. The Manager's operations are applied to the bank, the frozen base Answer Agent
answers the question from it, and the answer's F1 (or EM) against the gold answer is the
reward. Validation scores that answer (F1, BLEU-1, EM) for the base Manager and the adapter.
Writes ``bench/out/train_manager.json`` and ``.png``.

Each Manager sample costs a frozen-answerer generation as well, so the defaults are smaller
than the Answer Agent's benchmark:

    python -m bench.train_manager                     # ~20 min of training, 40 validation rows
    python -m bench.train_manager --minutes 60 --val-limit 0   # all validation rows
"""

import torch

from bench.train_answer import (
    TRAIN_FILE,
    VAL_FILE,
    arguments,
    bench_settings,
    job_config,
    run_bench,
)
from training.datasets import Retriever, load_encoder, manager_rows_from_locomo


def main() -> int:
    parser = arguments(__doc__.splitlines()[0], minutes=20.0, completion=64, max_steps=200, lr=5e-4)
    parser.add_argument("--candidates", type=int, default=5, help="memories shown per fact")
    parser.add_argument(
        "--per-speaker", type=int, default=3, help="memories per speaker the answerer sees"
    )
    parser.set_defaults(prompts_per_step=1, val_limit=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retriever = Retriever(load_encoder(), answer_per_speaker=args.per_speaker)
    train_rows = manager_rows_from_locomo(TRAIN_FILE, retriever, candidates=args.candidates)
    val_rows = manager_rows_from_locomo(VAL_FILE, retriever, candidates=args.candidates)
    val_rows = val_rows[: args.val_limit] if args.val_limit else val_rows
    config = job_config(args, "manager", args.out / "adapters" / "manager")
    payload = run_bench(
        "train_manager",
        config,
        train_rows,
        val_rows,
        minutes=args.minutes,
        retriever=retriever,
        settings=bench_settings(args),
        out_dir=args.out,
    )
    return 0 if all(t["passed"] for t in payload["targets"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
