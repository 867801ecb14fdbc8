"""The embedded engine, old and new side by side: transformers ``generate`` in float32 (the
engine serving used before llama.cpp, kept here only as the reference) and llama.cpp
(``InProcessBackend``) on each weight type the bundled GGUF can be requantised to.

Figures, single stream unless said: prefill tok/s on the agents' real prompts (a Manager prompt,
about 500 tokens, and an Answer prompt over 60 short memories, about 1.3k), decode tok/s, the
grammar's cost per token (the Manager prompt decoded with and without its schema, xgrammar and
llama.cpp's own GBNF), whole Manager and Answer calls (a Manager call also right after eight
extractions, as ingestion makes it), prompt-start reuse (a Manager prompt after another one),
eight extractions at once against one after another, and LoRA load and switch times, with
flash attention as serving runs it (``MEMR1_LLM__FLASH_ATTENTION``); the first weight type again
the other way. Target: llama.cpp decodes at
least 5x faster than the reference, and prefills no slower (judged on the first weight type
listed; the prefill by the median of seven ratios, each measured right after its reference
pass). Writes ``bench/out/engine.json`` and ``engine.png``; exits 1 when a target fails.

    python -m bench.engine [--weights auto,q8_0,bf16,q4_1] [--threads N]
"""

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import torch
from matplotlib.figure import Figure
from peft import LoraConfig, get_peft_model

from app.core.config import Settings, Weights
from app.llm.bundled import (
    BUNDLED_MODEL_NAME,
    ensure_bundled_gguf,
    ensure_bundled_model,
    served_weights,
)
from app.llm.inprocess import InProcessBackend
from app.memory.prompts import (
    ANSWER_MAX_TOKENS,
    ANSWER_SCHEMA,
    MANAGER_MAX_TOKENS,
    MANAGER_SCHEMA,
    answer_messages,
    extract_max_tokens,
    extract_schema,
    extraction_messages,
    manager_messages,
)
from app.memory.schemas import Fact, as_views
from bench.common import OUT_DIR, Target, print_targets, write_json
from training.model import load_base_model

Messages = list[dict[str, str]]
REPEATS = 3
PAIRED_ROUNDS = 7
DECODE_TOKENS = 64


def unique(messages: Messages, at: int = 0) -> Messages:
    """``messages`` with a fresh first line in message ``at``: nothing from there on can be
    reused from an earlier request's cache (from the first message: the whole prompt)."""
    at %= len(messages)
    fresh = {**messages[at], "content": f"[{uuid.uuid4().hex[:8]}]\n{messages[at]['content']}"}
    return [*messages[:at], fresh, *messages[at + 1 :]]


def manager_prompt(text: str = "Jon opened a dance studio downtown last week.") -> Messages:
    candidates = as_views(
        [(uuid.uuid4(), f"Jon {what}.", "Jon", None) for what in ("lives in Boston", "is a dancer")]
    )
    return manager_messages(Fact(text, "Jon", None), candidates)


def answer_prompt() -> Messages:
    memories = as_views(
        [
            (
                uuid.uuid4(),
                f"Jon visited city number {i} and wrote a note about its parks.",
                "Jon",
                None,
            )
            for i in range(60)
        ]
    )
    return answer_messages("Which city did Jon visit first?", memories)


def extraction_prompts(n: int) -> list[Messages]:
    return [
        extraction_messages(
            "Jon", f"I went to the {i}th street market with my sister.", datetime(2023, 5, i + 1), 3
        )
        for i in range(n)
    ]


DECODE_PROMPT = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]


async def best_of(run: Callable[[], Awaitable[float]]) -> float:
    return min([await run() for _ in range(REPEATS)])


async def llama_figures(backend: InProcessBackend, lora: Path) -> dict[str, Any]:
    async def prefill(messages: Messages) -> tuple[float, int]:
        started = time.perf_counter()
        done = await backend.complete(unique(messages), max_tokens=1)
        return time.perf_counter() - started, done.prompt_tokens

    async def rate(messages: Messages) -> float:
        seconds, tokens = min([await prefill(messages) for _ in range(REPEATS)])
        return tokens / seconds

    async def decode(schema: dict[str, Any] | None, messages: Messages, max_tokens: int) -> float:
        """Seconds per generated token past the first (the first includes the prompt)."""
        one = await best_of(lambda: _latency(backend.complete(messages, max_tokens=1)))
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            done = await backend.complete(messages, json_schema=schema, max_tokens=max_tokens)
            times.append((time.perf_counter() - started - one) / max(done.completion_tokens - 1, 1))
        return min(times)

    figures: dict[str, Any] = {
        "prefill_manager_tok_s": await rate(manager_prompt()),
        "prefill_answer60_tok_s": await rate(answer_prompt()),
        "decode_tok_s": 1 / await decode(None, DECODE_PROMPT, DECODE_TOKENS),
    }
    # The grammar's cost: the same Manager prompt decoded with and without its schema.
    free = await decode(None, manager_prompt(), MANAGER_MAX_TOKENS)
    constrained = await decode(MANAGER_SCHEMA, manager_prompt(), MANAGER_MAX_TOKENS)
    figures["decode_manager_tok_s"] = 1 / free
    figures["decode_manager_grammar_tok_s"] = 1 / constrained
    figures["grammar_ms_per_token"] = (constrained - free) * 1000

    # Whole agent calls as the pipeline makes them: a Manager decision after another one (its
    # instructions reused), and an answer over 60 memories (nothing to reuse).
    await backend.complete(manager_prompt("Jon likes tea."), max_tokens=1)
    facts = ["Jon lost his job.", "Jon moved to Denver.", "Jon adopted a cat named Tom."]
    started = time.perf_counter()
    for fact in facts:
        await backend.complete(
            manager_prompt(fact), json_schema=MANAGER_SCHEMA, max_tokens=MANAGER_MAX_TOKENS
        )
    figures["manager_call_s"] = (time.perf_counter() - started) / len(facts)
    started = time.perf_counter()
    await backend.complete(
        unique(answer_prompt()), json_schema=ANSWER_SCHEMA, max_tokens=ANSWER_MAX_TOKENS
    )
    figures["answer60_call_s"] = time.perf_counter() - started

    # Reuse: a Manager prompt right after another one computes only the part after the shared
    # instructions and examples.
    await backend.complete(manager_prompt("Jon likes tea."), max_tokens=1)
    started = time.perf_counter()
    reused = await backend.complete(manager_prompt("Jon lost his job."), max_tokens=1)
    figures["reuse_manager_ms"] = (time.perf_counter() - started) * 1000
    figures["reuse_manager_cached_tokens"] = reused.cached_tokens
    figures["reuse_manager_prompt_tokens"] = reused.prompt_tokens

    schema, max_tokens = extract_schema(3), extract_max_tokens(3)
    prompts = extraction_prompts(8)
    started = time.perf_counter()
    for p in prompts:
        await backend.complete(p, json_schema=schema, max_tokens=max_tokens)
    figures["extract8_sequential_s"] = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.gather(
        *(backend.complete(p, json_schema=schema, max_tokens=max_tokens) for p in prompts)
    )
    figures["extract8_together_s"] = time.perf_counter() - started
    # As ingestion runs them: Manager decisions while the cache holds a window's extractions.
    started = time.perf_counter()
    for fact in facts:
        await backend.complete(
            manager_prompt(fact), json_schema=MANAGER_SCHEMA, max_tokens=MANAGER_MAX_TOKENS
        )
    figures["manager_call_after_extract8_s"] = (time.perf_counter() - started) / len(facts)

    (lora / "adapter.gguf").unlink(missing_ok=True)
    started = time.perf_counter()
    await backend.load_adapter("a", str(lora))
    figures["lora_convert_and_load_ms"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    await backend.load_adapter("b", str(lora))
    figures["lora_load_ms"] = (time.perf_counter() - started) * 1000
    short = [{"role": "user", "content": "Say hi."}]
    same = await best_of(lambda: _latency(backend.complete(short, adapter="a", max_tokens=1)))
    switches = []
    for _ in range(REPEATS * 2):
        for name in ("a", "b"):
            switches.append(await _latency(backend.complete(short, adapter=name, max_tokens=1)))
    figures["lora_switch_ms"] = (min(switches) - same) * 1000
    figures["lora_request_ms"] = same * 1000
    for name in ("a", "b"):
        await backend.unload_adapter(name)
    return figures


async def _latency(call: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await call
    return time.perf_counter() - started


class Reference:
    """transformers ``generate`` in float32, no grammar: the old engine's speed."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        torch.set_num_threads(threads)
        loaded, self.tokenizer = load_base_model(model_dir)
        self.model: Any = loaded  # transformers only types generate() on concrete classes

    def ids(self, messages: Messages) -> Any:
        return self.tokenizer.apply_chat_template(
            unique(messages), add_generation_prompt=True, return_tensors="pt"
        )

    def prefill_once(self, messages: Messages) -> float:
        """tok/s of one forward pass over the whole prompt."""
        inputs = self.ids(messages)
        started = time.perf_counter()
        with torch.inference_mode():
            self.model(**inputs)
        return int(inputs["input_ids"].shape[1]) / (time.perf_counter() - started)

    def figures(self) -> dict[str, Any]:
        inputs = self.ids(DECODE_PROMPT)
        times = {}
        for n in (1, DECODE_TOKENS):
            started = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(
                    **inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False
                )
            times[n] = (time.perf_counter() - started, out.shape[1] - inputs["input_ids"].shape[1])
        decode_s = (times[DECODE_TOKENS][0] - times[1][0]) / (times[DECODE_TOKENS][1] - 1)
        return {
            "prefill_manager_tok_s": max(
                self.prefill_once(manager_prompt()) for _ in range(REPEATS)
            ),
            "prefill_answer60_tok_s": max(
                self.prefill_once(answer_prompt()) for _ in range(REPEATS)
            ),
            "decode_tok_s": 1 / decode_s,
        }


async def paired_prefill_ratios(backend: InProcessBackend, reference: Reference) -> list[float]:
    """llama.cpp's prefill of a 60-memory answer prompt over transformers', measured in turns
    so that both sides of each ratio see the machine in the same state (a machine shared with
    others drifts by a quarter between runs of the same code). Each round's memories are new
    and its instructions those of the round before, as in consecutive /ask calls: llama.cpp
    computes the memories with the earlier requests' heads in its cache, transformers the
    whole prompt; each side's rate counts the tokens it computed."""
    ratios = []
    for _ in range(PAIRED_ROUNDS):
        prompt = unique(answer_prompt(), at=-1)
        reference_rate = reference.prefill_once(prompt)
        started = time.perf_counter()
        done = await backend.complete(prompt, max_tokens=1)
        computed = done.prompt_tokens - done.cached_tokens
        ratios.append(computed / (time.perf_counter() - started) / reference_rate)
    return ratios


def llama_grammar_figures(gguf: Path, tokenizer_dir: Path, threads: int) -> dict[str, Any]:
    """llama.cpp's own grammar (GBNF from the schema, llama-cpp-python's sampler) on the same
    Manager prompt: the alternative to xgrammar, per token."""
    from llama_cpp import Llama, LlamaGrammar
    from transformers import AutoTokenizer, BatchEncoding

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    llm = Llama(str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    grammar = LlamaGrammar.from_json_schema(json.dumps(MANAGER_SCHEMA), verbose=False)

    def per_token(prompt: Messages, constrained: bool, max_tokens: int) -> float:
        encoded = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_dict=True
        )
        ids: list[int] = cast(BatchEncoding, encoded)["input_ids"]
        best = float("inf")
        for _ in range(REPEATS):
            llm.reset()
            tokens = llm.generate(ids, temp=0, grammar=grammar if constrained else None)
            next(tokens)  # the first token comes with the prompt pass
            started, n = time.perf_counter(), 0
            for token in tokens:
                n += 1
                if token == llm.token_eos() or n == max_tokens:
                    break
            best = min(best, (time.perf_counter() - started) / n)
        return best

    free = per_token(manager_prompt(), False, MANAGER_MAX_TOKENS)
    constrained = per_token(manager_prompt(), True, MANAGER_MAX_TOKENS)
    return {
        "decode_manager_tok_s": 1 / free,
        "decode_manager_grammar_tok_s": 1 / constrained,
        "grammar_ms_per_token": (constrained - free) * 1000,
    }


def random_lora(model_dir: Path, out: Path) -> Path:
    model, _ = load_base_model(model_dir)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for figures in rows.values() for k in figures))
    width = max(len(k) for k in keys)
    print(f"\n{'figure':<{width}}  " + "  ".join(f"{name:>12}" for name in rows))
    for key in keys:
        cells = [rows[name].get(key) for name in rows]
        print(
            f"{key:<{width}}  "
            + "  ".join(f"{c:>12.1f}" if c is not None else f"{'-':>12}" for c in cells)
        )


def plot(rows: dict[str, dict[str, Any]], paired: list[float]) -> Path:
    """Grouped bars: prefill and decode tok/s of each engine (whole prompts, nothing reused);
    beside them the prefill ratios measured in turns, against the target's line."""
    figures = ["prefill_manager_tok_s", "prefill_answer60_tok_s", "decode_tok_s"]
    names = [name for name in rows if "prefill_manager_tok_s" in rows[name]]
    figure = Figure(figsize=(11, 4))
    axes, turns = figure.subplots(1, 2, width_ratios=[3, 1.3])
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [rows[name][f] for f in figures]
        axes.bar([x + i * width for x in range(len(figures))], values, width, label=name)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(figures))])
    axes.set_xticklabels(["prefill, Manager prompt", "prefill, 60 memories", "decode"])
    axes.set_ylabel("tokens / s (single stream)")
    axes.set_title("Embedded engine: transformers fp32 vs llama.cpp")
    axes.legend()
    turns.plot(range(1, len(paired) + 1), paired, "o-")
    turns.axhline(1, color="grey", linestyle="--", label="target")
    turns.set_ylim(0, max([1.5, *paired]))
    turns.set_xlabel("round")
    turns.set_ylabel("llama.cpp / transformers")
    turns.set_title("Prefill, 60 memories, in turns")
    turns.legend()
    figure.tight_layout()
    path = OUT_DIR / "engine.png"
    figure.savefig(path, dpi=120)
    return path


def _ratios(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _label(weights: Weights, flash: bool) -> str:
    return weights.value + ("+flash" if flash else "-flash")


async def main(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else Settings().data_dir
    model_dir = ensure_bundled_model(data_dir)
    lora = random_lora(model_dir, OUT_DIR / "engine-lora")
    print("transformers fp32 (reference) ...", flush=True)
    reference = Reference(model_dir, args.threads)
    rows: dict[str, dict[str, Any]] = {"transformers": reference.figures()}
    # Flash attention as serving runs it, then the other way for the served weight type.
    served_flash = Settings().llm.flash_attention
    served = _label(args.weights[0], served_flash)
    paired: list[float] = []
    engines = [(w, served_flash) for w in args.weights] + [(args.weights[0], not served_flash)]
    for weights, flash in engines:
        name = _label(weights, flash)
        print(f"llama.cpp, {name} ...", flush=True)
        backend = InProcessBackend(
            ensure_bundled_gguf(data_dir, weights),
            BUNDLED_MODEL_NAME,
            max_batch_size=8,
            max_lora_rank=64,
            threads=args.threads,
            flash_attention=flash,
        )
        try:
            rows[name] = await llama_figures(backend, lora)
            if name == served:
                print("prefill, in turns with transformers ...", flush=True)
                paired = await paired_prefill_ratios(backend, reference)
        finally:
            await backend.close()
    served_dir = ensure_bundled_gguf(data_dir, args.weights[0])
    print(f"llama.cpp's own grammar, {args.weights[0].value} ...", flush=True)
    rows[f"{args.weights[0].value}+gbnf"] = llama_grammar_figures(
        next(served_dir.glob("*.gguf")), served_dir, args.threads
    )
    print_table(rows)
    print(f"\nprefill over 60 memories, llama.cpp / transformers in turns: {_ratios(paired)}")
    targets = [
        Target(
            "decode speed-up over transformers",
            rows[served]["decode_tok_s"] / rows["transformers"]["decode_tok_s"],
            5,
            "x",
            True,
        ),
        Target(
            "prefill (answer, 60 memories) vs transformers, median in turns",
            statistics.median(paired),
            1,
            "x",
            True,
        ),
    ]
    print_targets(targets)
    path = write_json(
        "engine",
        {
            "threads": args.threads,
            "rows": rows,
            "paired_prefill_answer60_ratios": paired,
            "targets": [t.as_dict() for t in targets],
        },
    )
    print(f"\nwritten to {path} and {plot(rows, paired)}")
    return 0 if all(t.passed for t in targets) else 1


def weight_list(text: str) -> list[Weights]:
    """The weight types named in ``text`` (comma-separated), ``auto`` as the type it names on
    this machine, each once, in order."""
    return list(dict.fromkeys(served_weights(Weights(w)) for w in text.split(",")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights",
        type=weight_list,
        default="auto,q8_0,bf16,q4_1",
        help="weight types, the one serving runs first (auto: the type it names here)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    raise SystemExit(asyncio.run(main(parser.parse_args())))
