import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model

import app.llm.bundled as bundled
from app.core.config import LLMSettings, Settings
from app.core.errors import BadUpstreamResponse, Unprocessable
from app.llm.bundled import BUNDLED_MODEL_NAME, ensure_bundled_model
from app.llm.factory import build_backend
from app.llm.inprocess import InProcessBackend, load_base_model
from app.memory.prompts import ANSWER_MAX_TOKENS, ANSWER_SCHEMA, answer_messages, manager_messages
from app.memory.schemas import Fact, as_views

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


@pytest.fixture(scope="module")
async def backend(bundled_model_dir: Path) -> AsyncIterator[InProcessBackend]:
    backend = InProcessBackend(
        bundled_model_dir, BUNDLED_MODEL_NAME, max_batch_size=4, max_lora_rank=16
    )
    yield backend
    await backend.close()


@pytest.fixture(scope="module")
def random_lora_dir(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LoRA with random (not zero) B matrices, so it visibly changes the output."""
    model, _ = load_base_model(bundled_model_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    path = tmp_path_factory.mktemp("lora") / "tiny"
    get_peft_model(model, config).save_pretrained(str(path))
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

    async def test_concurrent_requests_all_succeed_and_share_batches(
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
        batches = (re.match(r"generated a batch of (\d+)", r.getMessage()) for r in caplog.records)
        batch_sizes = [int(m[1]) for m in batches if m]
        assert sum(batch_sizes) == len(completions)
        assert max(batch_sizes) > 1  # requests queued together ran in one forward pass

    async def test_running_out_of_tokens_inside_the_json_is_reported(
        self, backend: InProcessBackend
    ) -> None:
        with pytest.raises(BadUpstreamResponse, match="max_tokens=3 before finishing the JSON"):
            await backend.complete(FACT, json_schema=OPS_SCHEMA, max_tokens=3)

    async def test_unknown_adapter_is_refused(self, backend: InProcessBackend) -> None:
        with pytest.raises(BadUpstreamResponse, match="adapter 'missing' is not loaded"):
            await backend.complete(FACT, adapter="missing", max_tokens=4)


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

        # A request queued before the unload still runs with the adapter it asked for.
        in_flight = asyncio.create_task(backend.complete(FACT, adapter="tiny", max_tokens=12))
        await asyncio.sleep(0)
        await backend.unload_adapter("tiny")

        assert (await in_flight).text == tuned.text
        assert await backend.loaded_adapters() == set()
        assert (await backend.complete(FACT, max_tokens=12)).text == base.text

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

        with pytest.raises(Unprocessable, match="rank 64, above the server limit 16"):
            await backend.load_adapter("too-big", str(too_big))
        with pytest.raises(Unprocessable, match="no dots"):
            await backend.load_adapter("manager.v1", str(random_lora_dir))

        assert await backend.loaded_adapters() == set()


@pytest.mark.model
class TestBuildBackend:
    async def test_default_settings_serve_the_bundled_model_in_process(
        self, bundled_model_dir: Path
    ) -> None:
        data_dir = bundled_model_dir.parent.parent  # already converted there

        backend = build_backend(Settings(data_dir=data_dir, llm=LLMSettings()))
        try:
            assert isinstance(backend, InProcessBackend)
            assert backend.base_model == BUNDLED_MODEL_NAME
        finally:
            await backend.close()


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
    """Real Manager prompts: long shared instructions and examples, then each fact's own part."""
    candidates = as_views([(uuid.uuid4(), "Jon lives in Boston.", "Jon", None)])
    facts = ["Jon lost his job.", "Jon opened a dance studio downtown last week.", "Jon likes tea."]
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


@pytest.mark.model
class TestSharedPrefixCache:
    @pytest.fixture(scope="class")
    async def uncached(self, bundled_model_dir: Path) -> AsyncIterator[InProcessBackend]:
        backend = InProcessBackend(
            bundled_model_dir,
            BUNDLED_MODEL_NAME,
            max_batch_size=4,
            max_lora_rank=16,
            prefix_cache_entries=0,
        )
        yield backend
        await backend.close()

    async def ask(self, backend: InProcessBackend, adapter: str | None = None) -> list[str]:
        replies = await asyncio.gather(
            *(
                backend.complete(p, json_schema=OPS_SCHEMA, adapter=adapter, max_tokens=MAX_TOKENS)
                for p in manager_prompts()
            )
        )
        return [r.text for r in replies]

    async def test_cached_batches_give_the_same_replies(
        self, backend: InProcessBackend, uncached: InProcessBackend, random_lora_dir: Path
    ) -> None:
        expected = await self.ask(uncached)
        assert await self.ask(backend) == expected  # computes the shared start
        assert await self.ask(backend) == expected  # reuses it, batched with padding inside
        for each in (backend, uncached):
            await each.load_adapter("prefix", str(random_lora_dir))
        tuned = await self.ask(uncached, "prefix")
        assert tuned != expected
        assert await self.ask(backend, "prefix") == tuned  # the cache is per adapter
        for each in (backend, uncached):
            await each.unload_adapter("prefix")
        assert await self.ask(backend) == expected

    async def test_a_long_prompt_is_reused_by_the_next_that_repeats_it(
        self, backend: InProcessBackend, uncached: InProcessBackend
    ) -> None:
        first, second = long_document_prompts()

        async def reply(each: InProcessBackend, messages: list[dict[str, str]]) -> str:
            completion = await each.complete(
                messages, json_schema=ANSWER_SCHEMA, max_tokens=ANSWER_MAX_TOKENS
            )
            return completion.text

        expected = [await reply(uncached, first), await reply(uncached, second)]
        assert await reply(backend, first) == expected[0]
        tokens = backend._tokenizer.apply_chat_template(
            second, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert backend._prefixes is not None
        assert backend._prefixes.longest(None, tokens) > 1024  # the memories, from the first
        assert await reply(backend, second) == expected[1]
