"""The embedded LLM backend: transformers + peft on CPU, in this process.

One worker thread owns the model. ``complete`` queues a request and awaits its future, so the
event loop never runs a forward pass. The thread takes the oldest request and batches the
queued requests that share its adapter, schema, temperature and max_tokens (up to
``max_batch_size``, left-padded). Adapter loads and unloads travel through the same queue and
act as barriers: requests queued before an unload still run with that adapter, requests queued
after a load see it. ``set_adapter`` therefore only ever happens between batches.

Requests usually share a long start: an agent's instructions and worked examples (everything
before the last message). Its key/value cache is computed once per adapter and kept (a few
prefixes, least recently used out); a batch whose rows share it runs only the rest of each
prompt, padded between the shared start and each row's own part. On a CPU, where the prompt
pass dominates, this roughly halves the Manager's and the extractor's calls. The cache of the
last long prompt run alone is kept as well: a request that repeats most of it (another question
about the same long document) reuses the part they have in common.

JSON output is enforced token by token with an xgrammar matcher per row, so a finished
completion always parses. The one way to get unparseable output is running out of
``max_tokens`` inside the JSON; that raises ``BadUpstreamResponse`` naming the limit rather
than returning a truncated document (bound strings and arrays in the schema with
``maxLength`` or a bounded ``pattern``, and ``maxItems``, to make the limit unreachable).
"""

import asyncio
import copy
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import xgrammar as xgr
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BatchEncoding,
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.core.errors import BadUpstreamResponse, Unprocessable, Upstream
from app.llm.backend import Completion, validate_adapter_dir

logger = logging.getLogger(__name__)

# Shorter shared starts are not worth a cache entry.
_MIN_SHARED_TOKENS = 32
# A prompt whose own part is at least this long is kept whole after it runs alone.
_LONG_PROMPT_TOKENS = 1024


def load_base_model(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local Hugging Face causal LM in float32 on CPU, the way serving loads it.

    Training uses this too, so adapters are trained on exactly the weights they will run on."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        # Batched generation and training pad; rows are masked, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tokenizer


@dataclass(eq=False, kw_only=True)
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    submitted: float = field(default_factory=time.perf_counter)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


@dataclass(eq=False, kw_only=True)
class _Generate(_Job):
    messages: list[dict[str, str]]
    schema_key: str | None  # the schema as JSON text, in its own property order
    adapter: str | None
    temperature: float
    max_tokens: int
    prompt: list[int] = field(default_factory=list)  # token ids, filled in the model thread
    shared: int = 0  # how many leading prompt tokens are the messages before the last one

    @property
    def batch_key(self) -> tuple[str | None, str | None, float, int]:
        return (self.adapter, self.schema_key, self.temperature, self.max_tokens)


@dataclass(eq=False, kw_only=True)
class _Call(_Job):
    """Work that mutates the model (adapter load/unload); runs alone, in queue order."""

    fn: Callable[[], Any]


class _Stop:
    """Queued by ``close``: everything queued before it still runs."""


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the caller gave up; nobody is waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class JsonGrammar:
    """Compiles JSON schemas into xgrammar grammars for one model's vocabulary, the way serving
    constrains output. Compiled grammars are cached by schema text, so each is built once."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_ids: list[int]
    ) -> None:
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids
        )
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info)

    def mask(self, schema: str, batch_size: int, prefix: str = "") -> "GrammarMask":
        """A fresh logits processor for one ``generate()`` call of ``batch_size`` rows, each
        having already written ``prefix`` (text the prompt ends with, part of the JSON)."""
        # Compact JSON only: with free whitespace a small model can spend its whole token
        # budget on newlines without ever breaking the grammar.
        grammar = self._compiler.compile_json_schema(schema, any_whitespace=False)
        return GrammarMask(grammar, batch_size, self.vocab_size, prefix)


class GrammarMask(LogitsProcessor):
    """Masks every token the JSON grammar does not allow next, one matcher per batch row."""

    def __init__(
        self, grammar: xgr.CompiledGrammar, batch_size: int, vocab_size: int, prefix: str = ""
    ) -> None:
        self.matchers = [xgr.GrammarMatcher(grammar) for _ in range(batch_size)]
        if prefix and not all(matcher.accept_string(prefix) for matcher in self.matchers):
            raise ValueError(f"{prefix!r} is not a valid start of the schema's JSON")
        self.bitmask = xgr.allocate_token_bitmask(batch_size, vocab_size)
        self.prefilled = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # The first call sees only the prompt; afterwards the last column is the token just
        # chosen. Finished rows are padded by generate() and must not feed their matcher.
        for row, matcher in enumerate(self.matchers):
            if self.prefilled and not matcher.is_terminated():
                matcher.accept_token(int(input_ids[row, -1]))
            if not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self.bitmask, row)
        self.prefilled = True
        xgr.apply_token_bitmask_inplace(scores, self.bitmask)
        return scores


@dataclass(frozen=True)
class _RowOutput:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool  # a stop token ended it, rather than max_tokens


class _PrefixCache:
    """Key/value caches of prompt starts, by adapter name and tokens.

    Two kinds: shared starts (a few, least recently used out), and the whole of the last long
    prompt run alone, of which a later prompt may repeat any leading part. Cleared when an
    adapter is unloaded or replaced: its name no longer means the weights that computed them."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._caches: OrderedDict[tuple[str | None, tuple[int, ...]], DynamicCache] = OrderedDict()
        self._long: tuple[str | None, tuple[int, ...], DynamicCache] | None = None

    def longest(self, adapter: str | None, prompt: list[int]) -> int:
        """How many leading tokens of ``prompt`` are cached for ``adapter``: a whole shared
        start, or any leading part of the long prompt."""
        held = [
            len(tokens)
            for name, tokens in self._caches
            if name == adapter and tuple(prompt[: len(tokens)]) == tokens
        ]
        if self._long is not None and self._long[0] == adapter:
            held.append(len(os.path.commonprefix([list(self._long[1]), prompt])))
        return max(held, default=0)

    def get(self, adapter: str | None, prefix: tuple[int, ...], model: Any) -> DynamicCache:
        """A private copy of the cache of ``prefix``: a shared start's, a leading part of the
        long prompt's, or else computed with ``model`` and kept as a shared start."""
        key = (adapter, prefix)
        cache = self._caches.get(key)
        if cache is not None:
            self._caches.move_to_end(key)
            return copy.deepcopy(cache)  # generate() appends to the cache it is given
        if self._long is not None:
            name, tokens, long = self._long
            if name == adapter and tokens[: len(prefix)] == prefix:
                cache = copy.deepcopy(long)
                _truncate(cache, len(prefix))
                return cache
        cache = model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
        self._caches[key] = cache
        while len(self._caches) > self._entries:
            self._caches.popitem(last=False)
        return copy.deepcopy(cache)

    def keep_long(self, adapter: str | None, prompt: list[int], cache: DynamicCache) -> None:
        """Keep ``cache`` (a generation's, prompt first) as the cache of ``prompt``."""
        _truncate(cache, len(prompt))
        self._long = (adapter, tuple(prompt), cache)

    def clear(self) -> None:
        self._caches.clear()
        self._long = None


def _truncate(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions of ``cache`` (crop() takes how many to drop)."""
    cache.crop(length - cache.get_seq_length())


class InProcessBackend:
    """Implements ``app.llm.backend.LLMBackend`` with a local model and peft LoRA adapters.

    Adapter names must be usable as peft module keys (no dots). ``latency_ms`` runs from the
    call to the result, time spent queued included, as a client of a remote server sees it."""

    def __init__(
        self,
        model_dir: Path,
        base_model: str,
        max_batch_size: int,
        max_lora_rank: int,
        prefix_cache_entries: int = 4,
    ) -> None:
        self.base_model = base_model
        self._max_batch_size = max_batch_size
        self._max_lora_rank = max_lora_rank
        self._base, self._tokenizer = load_base_model(model_dir)
        self._peft: PeftModel | None = None  # wrapped on the first adapter load
        # Replaced, never mutated, so loaded_adapters() can read it from the event loop.
        self._adapter_paths: dict[str, Path] = {}
        self._stop_ids = stop_token_ids(self._base, self._tokenizer)
        self._grammar = JsonGrammar(
            self._tokenizer, int(self._base.config.vocab_size), self._stop_ids
        )
        self._max_positions = int(self._base.config.max_position_embeddings)
        self._prefixes = _PrefixCache(prefix_cache_entries) if prefix_cache_entries else None
        self._queue: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="llm-inprocess", daemon=True)
        self._thread.start()

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None = None,
        adapter: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 256,
    ) -> Completion:
        loop = asyncio.get_running_loop()
        job = _Generate(
            loop=loop,
            future=loop.create_future(),
            messages=messages,
            schema_key=None if json_schema is None else json.dumps(json_schema),
            adapter=adapter,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        result: Completion = await self._submit(job)
        return result

    async def load_adapter(self, name: str, path: str) -> None:
        if not name or "." in name:
            raise Unprocessable(f"adapter name {name!r} must be non-empty and contain no dots")
        adapter_dir = Path(path).resolve()
        validate_adapter_dir(
            adapter_dir, base_model=self.base_model, max_lora_rank=self._max_lora_rank
        )
        await self._run_in_model_thread(lambda: self._load(name, adapter_dir))

    async def unload_adapter(self, name: str) -> None:
        await self._run_in_model_thread(lambda: self._unload(name))

    async def loaded_adapters(self) -> set[str]:
        return set(self._adapter_paths)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_Stop())
        await asyncio.to_thread(self._thread.join)

    # -- event-loop side ---------------------------------------------------------------------

    async def _run_in_model_thread(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await self._submit(_Call(loop=loop, future=loop.create_future(), fn=fn))

    async def _submit(self, job: _Job) -> Any:
        if self._closed:
            raise Upstream("the in-process model has been shut down")
        self._queue.put(job)
        return await job.future

    # -- model thread ------------------------------------------------------------------------

    def _serve(self) -> None:
        pending: deque[_Job | _Stop] = deque()
        while True:
            if not pending:
                pending.append(self._queue.get())
            while not self._queue.empty():
                pending.append(self._queue.get_nowait())
            job = pending.popleft()
            if isinstance(job, _Stop):
                return
            if isinstance(job, _Call):
                self._run_call(job)
            elif isinstance(job, _Generate):
                self._run_batch([job, *_take_batchable(pending, job, self._max_batch_size - 1)])

    def _run_call(self, job: _Call) -> None:
        try:
            job.resolve(job.fn())
        except Exception as exc:  # handed to the awaiting caller, who re-raises it
            job.resolve(error=exc)

    def _run_batch(self, batch: list[_Generate]) -> None:
        ready: list[_Generate] = []
        for job in batch:
            # Reading another thread's future state is a benign race: at worst a request
            # whose caller just gave up is generated anyway.
            if job.future.cancelled():
                continue
            try:
                job.prompt = self._tokenize(job)
            except BadUpstreamResponse as exc:  # fails this request, not its batch
                job.resolve(error=exc)
                continue
            ready.append(job)
        if not ready:
            return
        try:
            rows = self._generate(ready)
        except Exception as exc:  # handed to every caller in the batch
            for job in ready:
                job.resolve(error=exc)
            return
        logger.debug("generated a batch of %d (adapter=%s)", len(ready), ready[0].adapter)
        for job, row in zip(ready, rows, strict=True):
            try:
                job.resolve(self._to_completion(job, row))
            except BadUpstreamResponse as exc:
                job.resolve(error=exc)

    def _tokenize(self, job: _Generate) -> list[int]:
        encoded = cast(
            BatchEncoding,
            self._tokenizer.apply_chat_template(
                job.messages, add_generation_prompt=True, return_dict=True
            ),
        )
        ids: list[int] = encoded["input_ids"]
        if len(ids) + job.max_tokens > self._max_positions:
            raise BadUpstreamResponse(
                f"prompt of {len(ids)} tokens plus max_tokens={job.max_tokens} exceeds the "
                f"model's context of {self._max_positions} tokens"
            )
        if self._prefixes is not None and len(job.messages) > 1:
            before_last = cast(
                BatchEncoding,
                self._tokenizer.apply_chat_template(job.messages[:-1], return_dict=True),
            )["input_ids"]
            if ids[: len(before_last)] == before_last:
                job.shared = len(before_last)
        return ids

    def _shared_prefix(self, batch: list[_Generate]) -> tuple[int, ...] | None:
        """The longest prompt start every row of the batch shares that is cached or worth
        caching: what a cache entry already holds, else the messages before the last one."""
        first = batch[0]
        if self._prefixes is None:
            return None
        # Each row keeps at least its last token to run, which yields the first new token.
        cached = min(self._prefixes.longest(first.adapter, job.prompt[:-1]) for job in batch)
        shared = first.shared if all(job.shared == first.shared for job in batch) else 0
        length = max(cached, shared)
        prefix = first.prompt[:length]
        if length < _MIN_SHARED_TOKENS or any(job.prompt[:length] != prefix for job in batch):
            return None
        return tuple(prefix)

    def _generate(self, batch: list[_Generate]) -> list[_RowOutput]:
        first = batch[0]
        prefix = self._shared_prefix(batch)
        inputs = self._inputs(batch, prefix)
        processors = LogitsProcessorList()
        if first.schema_key is not None:
            processors.append(self._grammar.mask(first.schema_key, len(batch)))
        # With adapters, the peft wrapper's generate() runs the wrapped model with LoRA layers.
        # Any: transformers only types generate() on concrete model classes.
        model: Any = self._peft if self._peft is not None else self._base
        with self._adapter_scope(first.adapter), torch.inference_mode():
            if prefix is not None and self._prefixes is not None:
                cache = self._prefixes.get(first.adapter, prefix, model)
                cache.batch_repeat_interleave(len(batch))
                inputs["past_key_values"] = cache
            output = model.generate(
                **inputs,
                generation_config=self._generation_config(first),
                logits_processor=processors,
            )
        own = len(first.prompt) - (0 if prefix is None else len(prefix))
        if self._prefixes is not None and len(batch) == 1 and own >= _LONG_PROMPT_TOKENS:
            self._prefixes.keep_long(first.adapter, first.prompt, output.past_key_values)
        new_tokens = output.sequences[:, inputs["input_ids"].shape[1] :].tolist()
        return [
            self._decode(job.prompt, tokens) for job, tokens in zip(batch, new_tokens, strict=True)
        ]

    def _inputs(self, batch: list[_Generate], prefix: tuple[int, ...] | None) -> dict[str, Any]:
        """Input ids and attention mask. Rows are padded on the left, or, when they share a
        cached ``prefix``, between it and their own part, so the cache lines up with every
        row (positions follow the mask, so the padding changes nothing)."""
        if prefix is None:
            return dict(
                self._tokenizer.pad(
                    {"input_ids": [job.prompt for job in batch]},
                    padding_side="left",
                    return_tensors="pt",
                )
            )
        width = max(len(job.prompt) for job in batch)
        pad = int(self._tokenizer.pad_token_id)
        ids, mask = [], []
        for job in batch:
            gap, own = width - len(job.prompt), job.prompt[len(prefix) :]
            ids.append([*prefix, *[pad] * gap, *own])
            mask.append([1] * len(prefix) + [0] * gap + [1] * len(own))
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    def _generation_config(self, job: _Generate) -> GenerationConfig:
        # Unset sampling knobs (top_p, top_k, ...) fall back to the model's own
        # generation_config, which is also what vLLM applies by default.
        sampling = job.temperature > 0
        return GenerationConfig(
            max_new_tokens=job.max_tokens,
            do_sample=sampling,
            temperature=job.temperature if sampling else None,
            eos_token_id=self._stop_ids,
            pad_token_id=self._tokenizer.pad_token_id,
            return_dict_in_generate=True,  # with the cache, which a long prompt leaves behind
        )

    def _adapter_scope(self, adapter: str | None) -> AbstractContextManager[Any]:
        if adapter is None:
            return self._peft.disable_adapter() if self._peft is not None else nullcontext()
        if adapter not in self._adapter_paths or self._peft is None:
            raise BadUpstreamResponse(
                f"adapter {adapter!r} is not loaded (loaded: {sorted(self._adapter_paths)})"
            )
        self._peft.set_adapter(adapter)
        return nullcontext()

    def _decode(self, prompt: list[int], tokens: list[int]) -> _RowOutput:
        stop = next((i for i, token in enumerate(tokens) if token in self._stop_ids), None)
        content = tokens if stop is None else tokens[:stop]
        return _RowOutput(
            text=cast(str, self._tokenizer.decode(content, skip_special_tokens=True)),
            prompt_tokens=len(prompt),
            completion_tokens=len(tokens) if stop is None else stop + 1,
            finished=stop is not None,
        )

    def _to_completion(self, job: _Generate, row: _RowOutput) -> Completion:
        parsed = None
        if job.schema_key is not None:
            if not row.finished:
                raise BadUpstreamResponse(
                    f"the model used all max_tokens={job.max_tokens} before finishing the JSON "
                    "output; raise max_tokens or bound the schema (maxLength, maxItems)"
                )
            # The grammar only lets the model stop after a complete document, so this parses.
            parsed = json.loads(row.text)
        return Completion(
            text=row.text,
            parsed=parsed,
            model=self.base_model,
            adapter=job.adapter,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            latency_ms=(time.perf_counter() - job.submitted) * 1000,
        )

    def _load(self, name: str, path: Path) -> None:
        if self._adapter_paths.get(name) == path:
            return
        self._unload(name)  # same name, new weights: replace
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._base, str(path), adapter_name=name)
            else:
                self._peft.load_adapter(str(path), adapter_name=name)
        except (ValueError, RuntimeError) as exc:
            raise Unprocessable(f"adapter at {path} does not fit {self.base_model}: {exc}") from exc
        self._adapter_paths = {**self._adapter_paths, name: path}
        logger.info("loaded LoRA adapter %s from %s", name, path)

    def _unload(self, name: str) -> None:
        if name not in self._adapter_paths or self._peft is None:
            return
        if self._prefixes is not None:
            self._prefixes.clear()
        remaining = {k: v for k, v in self._adapter_paths.items() if k != name}
        if remaining:
            self._peft.delete_adapter(name)
        else:
            # peft cannot run with zero adapters; unwrapping restores the plain base model.
            self._base = self._peft.unload()
            self._peft = None
        self._adapter_paths = remaining
        logger.info("unloaded LoRA adapter %s", name)


def _take_batchable(pending: deque[_Job | _Stop], head: _Generate, limit: int) -> list[_Generate]:
    """Remove and return up to ``limit`` queued requests that can share ``head``'s batch.

    Only requests ahead of the next adapter change or stop are eligible, so every request runs
    with the adapters as they were when it was queued."""
    taken: list[_Generate] = []
    for job in list(pending):
        if len(taken) == limit or not isinstance(job, _Generate):
            break
        if job.batch_key == head.batch_key:
            taken.append(job)
            pending.remove(job)
    return taken


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens that end a reply: the model's generation config, else the tokenizer's EOS."""
    configured = model.generation_config.eos_token_id
    if configured is None:
        return [int(tokenizer.eos_token_id)]
    return [configured] if isinstance(configured, int) else list(configured)
