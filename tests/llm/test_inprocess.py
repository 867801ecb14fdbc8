import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import llama_cpp
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GenerationConfig

import app.llm.bundled as bundled
from app.core.config import LLMSettings, Settings, Weights
from app.core.errors import BadUpstreamResponse, Unprocessable, UnusableOutput
from app.llm.bundled import (
    BUNDLED_MODEL_NAME,
    ensure_bundled_gguf,
    ensure_bundled_model,
    served_weights,
)
from app.llm.factory import build_backend
from app.llm.gguf_lora import GGUF_NAME
from app.llm.inprocess import InProcessBackend
from app.memory.prompts import (
    ANSWER_MAX_TOKENS,
    ANSWER_SCHEMA,
    answer_messages,
    extraction_messages,
    manager_messages,
)
from app.memory.schemas import Fact, as_views
from training.model import load_base_model

# A Manager-style schema: an enum and an array of objects. Strings, integers and the array are
# bounded, so the longest valid document fits in MAX_TOKENS and generation always finishes.
OPS_SCHEMA = {
    "type": "object",
    "properties": {
        "op": {"enum": ["ADD", "UPDATE", "DELETE", "NOOP"]},
        "facts": {
            "type": "array",
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "maxLength": 24},
                    "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                },
                "required": ["text", "year"],
            },
        },
    },
    "required": ["op", "facts"],
}
MAX_TOKENS = 110
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"enum": ["yes", "no"]}},
    "required": ["verdict"],
}
FACT = [{"role": "user", "content": "Alice moved to Paris in 2021. Reply with the memory op."}]


def open_backend(
    model_dir: Path, max_batch_size: int = 4, *, flash_attention: bool = True
) -> InProcessBackend:
    return InProcessBackend(
        model_dir,
        BUNDLED_MODEL_NAME,
        max_batch_size=max_batch_size,
        max_lora_rank=16,
        flash_attention=flash_attention,
    )


@pytest.fixture(scope="module")
async def backend(serving_model_dir: Path) -> AsyncIterator[InProcessBackend]:
    backend = open_backend(serving_model_dir)
    yield backend
    await backend.close()


@pytest.fixture(scope="module")
def random_lora_dir(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LoRA with random (not zero) B matrices on every projection, so it visibly
    changes the output and exercises each tensor the GGUF conversion maps (Q and K are
    permuted into llama.cpp's rotary layout)."""
    torch.manual_seed(0)
    model, _ = load_base_model(bundled_model_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    path = tmp_path_factory.mktemp("lora") / "tiny"
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # big enough to change greedy replies, small enough to keep them text
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.mul_(0.3)
    peft_model.save_pretrained(str(path))
    return path


@pytest.mark.model
class TestComplete:
    async def test_schema_constrained_output_parses_and_obeys_the_schema(
        self, backend: InProcessBackend
    ) -> None:
        completion = await backend.complete(FACT, json_schema=OPS_SCHEMA, max_tokens=MAX_TOKENS)

        parsed = completion.parsed
        assert parsed == json.loads(completion.text)
        assert set(parsed) == {"op", "facts"}
        assert parsed["op"] in {"ADD", "UPDATE", "DELETE", "NOOP"}
        assert len(parsed["facts"]) <= 2
        for fact in parsed["facts"]:
            assert set(fact) == {"text", "year"}
            assert isinstance(fact["text"], str) and len(fact["text"]) <= 24
            assert isinstance(fact["year"], int) and 1900 <= fact["year"] <= 2100
        assert (completion.model, completion.adapter) == (BUNDLED_MODEL_NAME, None)
        assert completion.prompt_tokens > 10
        assert 0 < completion.completion_tokens <= MAX_TOKENS
        assert completion.latency_ms > 0

    async def test_text_the_grammar_forces_is_fed_in_one_decode(
        self, backend: InProcessBackend, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="app.llm.inprocess")
        completion = await backend.complete(FACT, json_schema=OPS_SCHEMA, max_tokens=MAX_TOKENS)

        fed = [
            int(m.group(1))
            for r in caplog.records
            if (m := re.match(r"decoded (\d+) tokens for [01] sequences", r.getMessage()))
        ]
        uncached = completion.prompt_tokens - completion.cached_tokens
        assert sum(fed) == uncached + completion.completion_tokens - 1
        reply_steps = fed[1:]  # the first decode reads the prompt (what is not cached)
        assert any(n > 1 for n in reply_steps)  # '", "year": ' after a fact's text, say
        assert len(reply_steps) < completion.completion_tokens - 5

    async def test_concurrent_requests_all_succeed_and_decode_together(
        self, backend: InProcessBackend, caplog: pytest.LogCaptureFixture
    ) -> None:
        questions = [f"Is {n} an even number? Answer yes or no." for n in (2, 3, 8, 11, 13)]
        caplog.set_level(logging.DEBUG, logger="app.llm.inprocess")

        completions = await asyncio.gather(
            *(
                backend.complete(
                    [{"role": "user", "content": q}], json_schema=VERDICT_SCHEMA, max_tokens=12
                )
                for q in questions
            ),
            backend.complete([{"role": "user", "content": "Say hi."}], max_tokens=4),
        )

        verdicts = ({"verdict": "yes"}, {"verdict": "no"})
        assert all(c.parsed in verdicts for c in completions[:-1])
        assert completions[-1].parsed is None and completions[-1].completion_tokens <= 4
        steps = (
            re.match(r"decoded \d+ tokens for (\d+) sequences", r.getMessage())
            for r in caplog.records
        )
        rows_per_step = [int(m[1]) for m in steps if m]
        assert max(rows_per_step) > 1  # requests queued together ran in one llama_decode

    async def test_a_long_prompt_does_not_hold_up_a_short_one(
        self, backend: InProcessBackend
    ) -> None:
        long, _ = long_document_prompts()
        short = [{"role": "user", "content": "Say hi."}]
        finished: list[str] = []

        async def run(name: str, messages: list[dict[str, str]], max_tokens: int) -> None:
            await backend.complete(messages, max_tokens=max_tokens)
            finished.append(name)

        long_task = asyncio.create_task(run("long", long, 8))
        await asyncio.sleep(0.05)  # the long prompt is being read
        await asyncio.gather(long_task, run("short", short, 4))

        assert finished == ["short", "long"]

    async def test_running_out_of_tokens_inside_the_json_is_reported(
        self, backend: InProcessBackend
    ) -> None:
        with pytest.raises(UnusableOutput, match="max_tokens=3 before finishing the JSON"):
            await backend.complete(FACT, json_schema=OPS_SCHEMA, max_tokens=3)

    async def test_a_prompt_beyond_the_context_is_refused(self, backend: InProcessBackend) -> None:
        huge = [{"role": "user", "content": "word " * 9000}]
        with pytest.raises(BadUpstreamResponse, match="exceeds the model's context"):
            await backend.complete(huge, max_tokens=4)

    async def test_unknown_adapter_is_refused(self, backend: InProcessBackend) -> None:
        with pytest.raises(BadUpstreamResponse, match="adapter 'missing' is not loaded"):
            await backend.complete(FACT, adapter="missing", max_tokens=4)


def peft_greedy(model: torch.nn.Module, tokenizer, messages, max_tokens: int) -> str:  # noqa: ANN001
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **ids,
            generation_config=GenerationConfig(
                max_new_tokens=max_tokens, do_sample=False, eos_token_id=2, pad_token_id=2
            ),
        )
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.model
class TestAdapters:
    async def test_adapter_round_trip_and_switching_back_to_base(
        self, backend: InProcessBackend, random_lora_dir: Path
    ) -> None:
        base = await backend.complete(FACT, max_tokens=12)

        await backend.load_adapter("tiny", str(random_lora_dir))
        tuned = await backend.complete(FACT, adapter="tiny", max_tokens=12)
        base_while_loaded = await backend.complete(FACT, max_tokens=12)

        assert await backend.loaded_adapters() == {"tiny"}
        assert tuned.adapter == "tiny"
        assert tuned.text != base.text
        assert base_while_loaded.text == base.text
        assert (random_lora_dir / GGUF_NAME).is_file()  # converted once, kept beside it

        # A request queued before the unload still runs with the adapter it asked for.
        in_flight = asyncio.create_task(backend.complete(FACT, adapter="tiny", max_tokens=12))
        await asyncio.sleep(0)
        await backend.unload_adapter("tiny")

        # It ran under the adapter. (Not always token for token what `tuned` said: it starts
        # from `tuned`'s cached prompt, and the random adapter's near ties can flip; see the
        # module docstring.)
        finished = await in_flight
        assert finished.adapter == "tiny" and finished.text != base.text
        assert await backend.loaded_adapters() == set()
        assert (await backend.complete(FACT, max_tokens=12)).text == base.text

    async def test_base_and_adapter_requests_interleave(
        self, backend: InProcessBackend, random_lora_dir: Path
    ) -> None:
        base = (await backend.complete(FACT, max_tokens=12)).text
        await backend.load_adapter("mixed", str(random_lora_dir))
        try:
            replies = await asyncio.gather(
                *(backend.complete(FACT, adapter=a, max_tokens=12) for a in [None, "mixed"] * 3)
            )
        finally:
            await backend.unload_adapter("mixed")

        assert [r.adapter for r in replies] == [None, "mixed"] * 3
        assert all(r.text == base for r in replies[::2])
        # The random adapter's reply is a near tie the batch's arithmetic can flip (see
        # TestPromptReuse), so it is only checked to be the adapter's, not the base's.
        assert all(r.text != base for r in replies[1::2])

    async def test_converted_adapter_reproduces_peft_greedy_output(
        self, settings: Settings, bundled_model_dir: Path, random_lora_dir: Path
    ) -> None:
        # float32 weights: the values transformers de-quantised, so both engines compute the
        # same function and greedy replies agree token for token.
        exact = open_backend(ensure_bundled_gguf(settings.data_dir, Weights.f32))
        model, tokenizer = load_base_model(bundled_model_dir)
        peft_model = PeftModel.from_pretrained(model, str(random_lora_dir))
        prompts = [
            FACT,
            [{"role": "user", "content": "Name three colours of the rainbow."}],
            [{"role": "user", "content": "Where does the Eiffel tower stand?"}],
        ]
        try:
            await exact.load_adapter("peft", str(random_lora_dir))
            for messages in prompts:
                served = await exact.complete(messages, adapter="peft", max_tokens=24)
                assert served.text == peft_greedy(peft_model, tokenizer, messages, 24)
                with peft_model.disable_adapter():
                    base = peft_greedy(peft_model, tokenizer, messages, 24)
                assert (await exact.complete(messages, max_tokens=24)).text == base
        finally:
            await exact.close()

    async def test_an_idle_adapter_is_freed_and_its_next_request_loads_it_again(
        self, serving_model_dir: Path, random_lora_dir: Path
    ) -> None:
        async def two_replies(
            backend: InProcessBackend, pause_s: float
        ) -> tuple[list[str], set[str]]:
            await backend.load_adapter("idle", str(random_lora_dir))
            first = await backend.complete(FACT, adapter="idle", max_tokens=12)
            await asyncio.sleep(pause_s)
            resident = backend.resident_adapters()
            again = await backend.complete(FACT, adapter="idle", max_tokens=12)
            assert again.adapter == "idle" and backend.resident_adapters() == {"idle"}
            return [first.text, again.text], resident

        freeing = InProcessBackend(serving_model_dir, BUNDLED_MODEL_NAME, 2, 16, adapter_idle_s=0.2)
        keeping = InProcessBackend(serving_model_dir, BUNDLED_MODEL_NAME, 2, 16)
        try:
            freed, resident_after_pause = await two_replies(freeing, 1.0)
            kept, _ = await two_replies(keeping, 0.0)
            assert await freeing.loaded_adapters() == {"idle"}
        finally:
            await freeing.close()
            await keeping.close()
        # Freed while idle, still listed as loaded, and loaded again by the next request with
        # the same weights: the same calls on a backend that never freed it give the same
        # replies.
        assert resident_after_pause == set()
        assert freed == kept

    async def test_loading_twice_is_idempotent(
        self, backend: InProcessBackend, random_lora_dir: Path
    ) -> None:
        await backend.load_adapter("twice", str(random_lora_dir))
        await backend.load_adapter("twice", str(random_lora_dir))

        assert await backend.loaded_adapters() == {"twice"}
        await backend.unload_adapter("twice")
        assert await backend.loaded_adapters() == set()

    async def test_bad_adapter_config_is_rejected(
        self, backend: InProcessBackend, random_lora_dir: Path, tmp_path: Path
    ) -> None:
        config = json.loads((random_lora_dir / "adapter_config.json").read_text())
        too_big = tmp_path / "too-big"
        too_big.mkdir()
        (too_big / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
        (too_big / "adapter_model.safetensors").write_bytes(b"")
        dora = tmp_path / "dora"
        dora.mkdir()
        (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
        (dora / "adapter_model.safetensors").write_bytes(
            (random_lora_dir / "adapter_model.safetensors").read_bytes()
        )

        with pytest.raises(Unprocessable, match="rank 64, above the server limit 16"):
            await backend.load_adapter("too-big", str(too_big))
        with pytest.raises(Unprocessable, match="uses DoRA"):
            await backend.load_adapter("dora", str(dora))

        assert await backend.loaded_adapters() == set()


@pytest.mark.model
class TestBuildBackend:
    async def test_default_settings_serve_the_bundled_model_in_process(
        self, serving_model_dir: Path
    ) -> None:
        data_dir = serving_model_dir.parent.parent  # already prepared there

        backend = build_backend(Settings(data_dir=data_dir, llm=LLMSettings()))
        try:
            assert isinstance(backend, InProcessBackend)
            assert backend.base_model == BUNDLED_MODEL_NAME
            assert (await backend.complete(FACT, max_tokens=4)).completion_tokens > 0
        finally:
            await backend.close()

    def test_llama_cpp_runs_on_its_own_thread_pool(self) -> None:
        """Built with OpenMP, llama.cpp shares the process's libgomp with torch, whose own copy
        is loaded first wherever torch is imported first (the embedder, training), and then
        decodes several times slower. ``make setup`` builds it without."""
        assert b"OPENMP = 1" not in llama_cpp.llama_print_system_info()

    @pytest.mark.parametrize(
        ("system_info", "served"),
        [
            (b"CPU : AVX2 = 1 | AVX512 = 1 | AVX512_BF16 = 1 | ", Weights.bf16),
            (b"CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | ", Weights.q8_0),
            (b"CPU : NEON = 1 | ARM_FMA = 1 | ", Weights.q8_0),
        ],
    )
    def test_auto_weights_are_bf16_where_llama_cpp_has_native_bf16(
        self, monkeypatch: pytest.MonkeyPatch, system_info: bytes, served: Weights
    ) -> None:
        monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: system_info)

        assert served_weights(Weights.auto) is served
        assert served_weights(Weights.q4_1) is Weights.q4_1  # a named type is served as named

    def test_a_model_directory_without_one_gguf_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(Unprocessable, match="exactly one .gguf file"):
            InProcessBackend(tmp_path, "mine", max_batch_size=1, max_lora_rank=8)


class TestEnsureBundledModel:
    """The conversion itself is exercised by ``bundled_model_dir``; these pin down its
    run-once, crash-safe and race-safe behaviour with a stand-in converter."""

    def test_converts_once_and_then_returns_the_existing_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls: list[Path] = []
        monkeypatch.setattr(bundled, "_convert_gguf", lambda out: calls.append(out))

        first = ensure_bundled_model(tmp_path)
        second = ensure_bundled_model(tmp_path)

        assert first == second == tmp_path / "models" / BUNDLED_MODEL_NAME
        assert first.is_dir()
        assert len(calls) == 1

    def test_a_failed_conversion_leaves_nothing_behind(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def crash(out: Path) -> None:
            (out / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("disk full")

        monkeypatch.setattr(bundled, "_convert_gguf", crash)

        with pytest.raises(RuntimeError, match="disk full"):
            ensure_bundled_model(tmp_path)

        assert [p.name for p in (tmp_path / "models").iterdir()] == [f".{BUNDLED_MODEL_NAME}.lock"]

    def test_leftovers_of_a_crashed_process_are_cleaned_up(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        leftover = tmp_path / "models" / f".{BUNDLED_MODEL_NAME}.staging-dead"
        leftover.mkdir(parents=True)
        monkeypatch.setattr(bundled, "_convert_gguf", lambda out: None)

        ensure_bundled_model(tmp_path)

        assert not leftover.exists()

    def test_concurrent_first_calls_convert_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls: list[Path] = []

        def slow_convert(out: Path) -> None:
            calls.append(out)
            time.sleep(0.2)
            (out / "config.json").write_text("{}")

        monkeypatch.setattr(bundled, "_convert_gguf", slow_convert)
        results: list[Path] = []
        threads = [
            threading.Thread(target=lambda: results.append(ensure_bundled_model(tmp_path)))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert len(calls) == 1
        assert len(set(results)) == 1 and (results[0] / "config.json").is_file()


def manager_prompts() -> list[list[dict[str, str]]]:
    """Real Manager prompts: long shared instructions and examples, then each fact's own part.
    Each fact's operation leads the next best by at least 0.2 of a logit: "Jon lost his job."
    was a three-way tie (DELETE, ADD and NOOP within 0.04), which the cache's layout flips."""
    candidates = as_views([(uuid.uuid4(), "Jon lives in Boston.", "Jon", None)])
    facts = [
        "Jon adopted a cat named Tom.",
        "Jon opened a dance studio downtown last week.",
        "Jon likes tea.",
    ]
    return [manager_messages(Fact(text, "Jon", None), candidates) for text in facts]


def long_document_prompts() -> list[list[dict[str, str]]]:
    """Answer prompts over the same 120 memories (well over 1,024 tokens), different questions."""
    memories = as_views(
        [
            (
                uuid.uuid4(),
                f"Jon visited city number {i} and wrote a note about its parks.",
                "Jon",
                None,
            )
            for i in range(120)
        ]
    )
    questions = ["Which city did Jon visit first?", "What did Jon write about?"]
    return [answer_messages(question, memories) for question in questions]


def op_of(reply: str) -> str:
    return json.loads(reply)["op"]


@pytest.mark.model
class TestPromptReuse:
    """Reusing another request's cached prompt start changes no decision of the bundled model:
    each reply is compared with the reply of a fresh backend that computes the whole prompt,
    for what it reuses and for its operation, not for every token: a batch's shape and the
    cache's size (attention sums over every cell of the unified cache, other sequences' masked
    ones included) change the last bits of the sums, which flips the small model's near ties
    (a year of 2017 or 2018). So are the random adapter's replies."""

    async def fresh_replies(
        self,
        model_dir: Path,
        prompts: list[list[dict[str, str]]],
        schema: dict,
        max_tokens: int,
        lora: Path | None = None,
        flash_attention: bool = True,
    ) -> list[str]:
        replies = []
        for messages in prompts:
            fresh = open_backend(model_dir, max_batch_size=1, flash_attention=flash_attention)
            try:
                if lora is not None:
                    await fresh.load_adapter("reuse", str(lora))
                reply = await fresh.complete(
                    messages,
                    json_schema=schema,
                    adapter=None if lora is None else "reuse",
                    max_tokens=max_tokens,
                )
                replies.append(reply.text)
            finally:
                await fresh.close()
        return replies

    async def test_shared_starts_are_reused_and_change_no_reply(
        self, serving_model_dir: Path, random_lora_dir: Path
    ) -> None:
        prompts = manager_prompts()
        expected = await self.fresh_replies(serving_model_dir, prompts, OPS_SCHEMA, MAX_TOKENS)
        tuned = await self.fresh_replies(
            serving_model_dir, prompts[:1], OPS_SCHEMA, MAX_TOKENS, random_lora_dir
        )
        backend = open_backend(serving_model_dir)
        try:

            async def ask(adapter: str | None = None, together: bool = True) -> list:
                calls = [
                    backend.complete(
                        p, json_schema=OPS_SCHEMA, adapter=adapter, max_tokens=MAX_TOKENS
                    )
                    for p in prompts
                ]
                if together:
                    return list(await asyncio.gather(*calls))
                return [await call for call in calls]

            first = await ask(together=False)
            assert [op_of(c.text) for c in first] == [op_of(e) for e in expected]
            assert first[0].cached_tokens == 0
            assert all(c.cached_tokens > 200 for c in first[1:])  # the instructions, shared
            together = await ask()
            assert all(c.cached_tokens > 200 for c in together)
            assert [op_of(c.text) for c in together] == [op_of(e) for e in expected]
            await backend.load_adapter("reuse", str(random_lora_dir))
            first_tuned = await ask("reuse", together=False)
            assert op_of(first_tuned[0].text) == op_of(tuned[0])  # nothing to reuse: the base's
            assert first_tuned[0].cached_tokens == 0  # starts aren't the adapter's
            assert all(c.cached_tokens > 200 for c in first_tuned[1:])
            assert {c.text for c in first_tuned}.isdisjoint(expected)
            await backend.unload_adapter("reuse")
            again = await ask(together=False)
            assert [op_of(c.text) for c in again] == [op_of(e) for e in expected]
        finally:
            await backend.close()

    @pytest.mark.parametrize("flash_attention", [False, True])
    async def test_a_long_prompt_is_reused_by_the_next_that_repeats_it(
        self, serving_model_dir: Path, flash_attention: bool
    ) -> None:
        """Without flash attention the reused start gives the fresh computation's reply to the
        token. With it, the cells computed in other batches differ in their last bits, and
        these 120 memories that differ only in a number are near ties throughout: the second
        reply may select others, so it is only checked to parse."""
        prompts = long_document_prompts()
        expected = await self.fresh_replies(
            serving_model_dir,
            prompts,
            ANSWER_SCHEMA,
            ANSWER_MAX_TOKENS,
            flash_attention=flash_attention,
        )
        backend = open_backend(serving_model_dir, flash_attention=flash_attention)
        try:
            replies = [
                await backend.complete(p, json_schema=ANSWER_SCHEMA, max_tokens=ANSWER_MAX_TOKENS)
                for p in prompts
            ]
        finally:
            await backend.close()

        assert replies[0].text == expected[0]  # nothing to reuse yet
        assert replies[1].cached_tokens > 1024  # the memories, from the first question
        if flash_attention:
            assert replies[1].parsed is not None
        else:
            assert replies[1].text == expected[1]

    async def test_an_idle_prompt_is_cut_back_to_its_head_by_a_request_it_does_not_start(
        self, serving_model_dir: Path
    ) -> None:
        """Every cached cell slows each later prompt, so a request that does not continue an
        idle prompt cuts that prompt back to its head (the messages before its last one):
        the memories of an answer go, its instructions stay."""
        memories = as_views(
            [(uuid.uuid4(), f"Jon walked to Lisbon on day {i}.", "Jon", None) for i in range(30)]
        )
        first, again = (answer_messages(q, memories) for q in ("Where?", "When did Jon walk?"))
        backend = open_backend(serving_model_dir)
        try:
            asked = await backend.complete(first, max_tokens=1)
            await backend.complete(manager_prompts()[0], max_tokens=1)
            after = await backend.complete(again, max_tokens=1)
            repeated = await backend.complete(again, max_tokens=1)
        finally:
            await backend.close()

        assert asked.prompt_tokens > 400  # 30 memories
        assert 50 < after.cached_tokens < 200  # the instructions, not the memories
        assert repeated.cached_tokens == repeated.prompt_tokens - 1  # continued: kept whole

    async def test_idle_sequences_hold_a_bounded_number_of_cells(
        self, serving_model_dir: Path
    ) -> None:
        """Heads too are cleared, least recently used first, beyond the idle budget."""

        def prompt(n: int) -> list[dict[str, str]]:
            system = f"Rule {n}: " + " ".join(f"word{n}x{i}" for i in range(200))
            return [{"role": "system", "content": system}, {"role": "user", "content": "Hi."}]

        backend = open_backend(serving_model_dir, max_batch_size=8)
        try:
            heads = [await backend.complete(prompt(n), max_tokens=1) for n in range(6)]
            newest = await backend.complete(prompt(5), max_tokens=1)
            oldest = await backend.complete(prompt(0), max_tokens=1)
        finally:
            await backend.close()

        assert sum(h.prompt_tokens for h in heads) > 2 * 2048  # more than the budget
        assert newest.cached_tokens > heads[5].prompt_tokens - 20  # the newest head is kept
        assert oldest.cached_tokens < 10  # the oldest was cleared

    async def test_a_full_batch_of_other_prompts_leaves_a_cached_start(
        self, serving_model_dir: Path
    ) -> None:
        """Ingestion's pattern: Manager calls, a window of extractions as large as the batch,
        Manager calls again. The extractions share only the chat template's opening with the
        Manager's prompt; the Manager's instructions stay cached through the window."""
        managers = manager_prompts()
        extractions = [
            extraction_messages("Jon", text, None, 3)
            for text in ["I lost my job.", "We moved to Denver!"]
        ]
        backend = open_backend(serving_model_dir, max_batch_size=2)
        try:
            await backend.complete(managers[0], max_tokens=1)
            window = await asyncio.gather(*(backend.complete(p, max_tokens=1) for p in extractions))
            after = await backend.complete(managers[1], max_tokens=1)
        finally:
            await backend.close()

        assert all(w.prompt_tokens > 200 for w in window)  # each filled a sequence
        assert after.cached_tokens > 200  # the Manager's instructions and examples
