"""The embedded LLM backend: llama.cpp (llama-cpp-python) on CPU, in this process.

One scheduler thread owns a llama.cpp context holding ``max_batch_size`` running sequences (and
one more, so a full batch never takes every cached prompt start) and decodes them together:
every step feeds each running sequence its next token, and the prompts still being read (in
chunks, so a long prompt does not hold up the others), into one ``llama_decode``.
Sequences under different LoRA adapters take turns, one decode per adapter. Adapter loads and
unloads travel through the same queue and act as barriers: requests queued before an unload
still run with that adapter, requests queued after a load see it.

Prompt starts are reused through llama.cpp's key/value cache. A finished sequence's tokens stay
in the cache; a new request starts from whichever sequence, running or idle, shares the longest
start with it (an agent's instructions and worked examples, a long document asked many
questions). The shared cells are not copied: ``llama_memory_seq_cp`` tags them with the new
sequence too (the cache is unified), and only the rest of the prompt is computed. Idle
sequences are evicted, least recently used first, when a new request needs their room.

Prompts are rendered and tokenised with the model's Hugging Face tokenizer, exactly as training
renders them, so an adapter sees the token ids it was trained on. JSON output is enforced token
by token with an xgrammar matcher per sequence (the grammar GRPO samples under), so a finished
completion always parses. Text the grammar forces (the keys and punctuation between an
operation's fields) is fed to the model in one decode rather than sampled token by token. As
with any batched engine (vLLM included), a reply can differ in the last bits of its logits with
what else is decoded alongside it or cached beside it, which may flip a near tie between two
tokens. The one way to get unparseable output is running out of ``max_tokens`` inside the
JSON; that raises ``UnusableOutput`` naming the limit rather than returning a truncated
document (bound the schema's strings and arrays to make it unreachable).
"""

import asyncio
import ctypes
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import llama_cpp
import numpy as np
import torch
import xgrammar as xgr
from llama_cpp import _internals
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from app.core.errors import BadUpstreamResponse, Unprocessable, UnusableOutput, Upstream
from app.llm.backend import Completion, validate_adapter_dir
from app.llm.gguf_lora import ensure_gguf_lora
from app.llm.grammar import JsonGrammar

logger = logging.getLogger(__name__)
_llama_logger = logging.getLogger("llama.cpp")
# ggml's log levels; llama.cpp describes every load at INFO, which is debugging detail here.
_LOG_LEVELS = {3: logging.WARNING, 4: logging.ERROR}


@llama_cpp.llama_log_callback
def _log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    _llama_logger.log(
        _LOG_LEVELS.get(level, logging.DEBUG), "%s", text.decode(errors="replace").rstrip()
    )


llama_cpp.llama_backend_init()
llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))

# Tokens fed to one llama_decode: decoding rows take one each (a few after a forced run of
# the grammar), prompts fill the rest.
_BATCH_TOKENS = 512


def find_gguf(model_dir: Path) -> Path:
    """The one ``.gguf`` file of a serving model directory (next to its tokenizer files)."""
    found = sorted(model_dir.glob("*.gguf"))
    if len(found) != 1:
        raise Unprocessable(
            f"{model_dir} must hold exactly one .gguf file next to its tokenizer (found "
            f"{len(found)}); convert a Hugging Face model with llama.cpp's convert_hf_to_gguf.py"
        )
    return found[0]


@dataclass(eq=False, kw_only=True)
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    submitted: float = field(default_factory=time.perf_counter)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


@dataclass(eq=False, kw_only=True)
class _Generate(_Job):
    prompt: list[int]
    adapter: str | None
    temperature: float
    max_tokens: int
    matcher: xgr.GrammarMatcher | None  # None: free text
    head: int = 0  # prompt tokens before its last message: instructions, examples, earlier turns
    fed: int = 0  # tokens of prompt + output already in the key/value cache
    reused: int = 0  # of those, how many came from an earlier request's cache
    output: list[int] = field(default_factory=list)
    stepped: float = 0.0  # when it last took part in a decode, to take turns fairly


@dataclass(eq=False, kw_only=True)
class _Call(_Job):
    """Work that changes the adapters; runs once no request is decoding, in queue order."""

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


@dataclass(eq=False)
class _Sequence:
    """One llama.cpp sequence: what its cells of the key/value cache hold, and its request."""

    id: int
    adapter: str | None = None
    tokens: list[int] = field(default_factory=list)
    head: int = 0  # the head of the prompt it last served: what it keeps once idle
    job: _Generate | None = None
    used: float = 0.0


@dataclass(eq=False)
class _Lora:
    """A loaded adapter. Its weights are freed after ``adapter_idle_s`` unused and loaded
    again by its next request; only the scheduler thread touches ``handle`` and ``used``."""

    path: Path
    gguf: Path
    handle: Any | None  # llama_adapter_lora_p; None while freed for being idle
    used: float


# A shorter start shared with a cached sequence does not make it the one a request takes.
_MIN_SHARED = 32
# Idle sequences hold at most this many cells: the agents' heads (about 850 tokens for
# the three agents' instructions and examples) and room for more adapters' heads.
_IDLE_CELLS = 2048


def _common_prefix(a: list[int], b: list[int]) -> int:
    return len(os.path.commonprefix([a, b]))


class InProcessBackend:
    """Implements ``app.llm.backend.LLMBackend`` on llama.cpp with GGUF LoRA adapters.

    ``model_dir`` holds one GGUF file and the model's Hugging Face tokenizer. PEFT adapters are
    converted to GGUF on first load (cached next to them). ``latency_ms`` runs from the call to
    the result, time spent queued included, as a client of a remote server sees it."""

    def __init__(
        self,
        model_dir: Path,
        base_model: str,
        max_batch_size: int,
        max_lora_rank: int,
        *,
        context_tokens: int = 16384,
        threads: int | None = None,
        adapter_idle_s: float | None = None,
        flash_attention: bool = True,
    ) -> None:
        if b"OPENMP = 1" in llama_cpp.llama_print_system_info():
            logger.warning(
                "llama.cpp was built with OpenMP: next to torch it decodes several times "
                "slower; `make setup` builds it without (-DGGML_OPENMP=OFF)"
            )
        self.base_model = base_model
        self._adapter_idle_s = adapter_idle_s
        self._max_lora_rank = max_lora_rank
        self._gguf = find_gguf(model_dir)
        self._tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(model_dir)
        # Callers' threads encode while the scheduler decodes; the Rust tokenizer must not be
        # used from two threads at once.
        self._tokenizer_lock = threading.Lock()
        self._model = _internals.LlamaModel(
            path_model=str(self._gguf),
            params=llama_cpp.llama_model_default_params(),
            verbose=False,
        )
        threads = threads or len(os.sched_getaffinity(0))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context_tokens
        params.n_batch = params.n_ubatch = _BATCH_TOKENS
        params.n_seq_max = max_batch_size + 1
        params.kv_unified = True  # sequences share cells, which is what prefix reuse needs
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        # llama.cpp's CPU flash attention skips the cells a sequence may not see (other
        # sequences' cached prompts); without it every decode attends over the whole used
        # cache. Which is faster depends on the CPU (bench/engine.py measures both).
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attention
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._batch = llama_cpp.llama_batch_init(_BATCH_TOKENS, 0, 1)
        vocab = self._model.vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._stop_ids = frozenset(
            t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)
        )
        self._grammar = JsonGrammar(self._tokenizer, self._n_vocab, sorted(self._stop_ids))
        self._forced_tokens: dict[str, list[int]] = {}  # text the grammar forces -> tokens
        self._bitmask = xgr.allocate_token_bitmask(1, self._n_vocab)
        # The longest prompt plus reply one sequence may hold.
        self._max_tokens = min(context_tokens, int(self._model.n_ctx_train()))
        self._context_tokens = context_tokens
        self._max_batch_size = max_batch_size
        self._sequences = [_Sequence(i) for i in range(max_batch_size + 1)]
        # Replaced, never mutated, so loaded_adapters() can read it from the event loop.
        self._loras: dict[str, _Lora] = {}
        self._active_lora: str | None = None
        self._rng = np.random.default_rng()
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
        matcher = None
        if json_schema is not None:  # a new schema takes a fraction of a second to compile
            grammar = await asyncio.to_thread(self._grammar.compile, json.dumps(json_schema))
            matcher = xgr.GrammarMatcher(grammar)
        prompt, head = self._tokenize(messages, max_tokens)
        job = _Generate(
            loop=loop,
            future=loop.create_future(),
            prompt=prompt,
            head=head,
            adapter=adapter,
            temperature=temperature,
            max_tokens=max_tokens,
            matcher=matcher,
        )
        result: Completion = await self._submit(job)
        return result

    async def load_adapter(self, name: str, path: str) -> None:
        if not name:
            raise Unprocessable("adapter name must be non-empty")
        adapter_dir = Path(path).resolve()
        validate_adapter_dir(
            adapter_dir, base_model=self.base_model, max_lora_rank=self._max_lora_rank
        )
        if (known := self._loras.get(name)) is not None and known.path == adapter_dir:
            return
        gguf = await asyncio.to_thread(ensure_gguf_lora, adapter_dir, self._gguf)
        await self._run_in_model_thread(lambda: self._load(name, adapter_dir, gguf))

    async def unload_adapter(self, name: str) -> None:
        await self._run_in_model_thread(lambda: self._unload(name))

    async def loaded_adapters(self) -> set[str]:
        return set(self._loras)

    async def ready(self) -> None:
        """The model is loaded when the backend is built."""

    def resident_adapters(self) -> set[str]:
        """The loaded adapters whose weights are in memory now (not freed for being idle)."""
        return {name for name, lora in self._loras.items() if lora.handle is not None}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_Stop())
        await asyncio.to_thread(self._thread.join)

    # -- event-loop side ---------------------------------------------------------------------

    def _tokenize(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[int], int]:
        """The prompt's tokens, and how many of them come before its last message."""

        def encode(part: list[dict[str, str]], reply: bool) -> list[int]:
            encoded = self._tokenizer.apply_chat_template(
                part, add_generation_prompt=reply, return_dict=True
            )
            return cast(BatchEncoding, encoded)["input_ids"]

        with self._tokenizer_lock:
            ids = encode(messages, True)
            head = _common_prefix(ids, encode(messages[:-1], False)) if len(messages) > 1 else 0
        if len(ids) + max_tokens > self._max_tokens:
            raise BadUpstreamResponse(
                f"prompt of {len(ids)} tokens plus max_tokens={max_tokens} exceeds the "
                f"model's context of {self._max_tokens} tokens"
            )
        return ids, head

    async def _run_in_model_thread(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await self._submit(_Call(loop=loop, future=loop.create_future(), fn=fn))

    async def _submit(self, job: _Job) -> Any:
        if self._closed:
            raise Upstream("the in-process model has been shut down")
        self._queue.put(job)
        return await job.future

    # -- scheduler thread --------------------------------------------------------------------

    def _serve(self) -> None:
        pending: deque[_Job | _Stop] = deque()
        try:
            while True:
                running = [s.job for s in self._sequences if s.job is not None]
                self._free_idle_adapters()
                if not pending and not running:
                    pending.append(self._next_job())
                while not self._queue.empty():
                    pending.append(self._queue.get_nowait())
                self._admit(pending)
                running = [s.job for s in self._sequences if s.job is not None]
                if running:
                    self._step(running)
                elif pending and isinstance(pending[0], _Call):
                    self._run_call(cast(_Call, pending.popleft()))
                elif pending and isinstance(pending[0], _Stop):
                    return
        finally:
            llama_cpp.llama_batch_free(self._batch)
            self._ctx.close()
            self._model.close()

    def _next_job(self) -> _Job | _Stop:
        """Wait for the next queued job, freeing adapters that fall idle meanwhile."""
        while True:
            resident = [lora.used for lora in self._loras.values() if lora.handle is not None]
            if self._adapter_idle_s is None or not resident:
                return self._queue.get()
            due = min(resident) + self._adapter_idle_s - time.perf_counter()
            try:
                return self._queue.get(timeout=max(due, 0.001))
            except queue.Empty:
                self._free_idle_adapters()

    def _free_idle_adapters(self) -> None:
        """Free the weights of adapters unused for ``adapter_idle_s`` that no running request
        needs. Cached prompts computed under them stay valid: the same weights come back."""
        if self._adapter_idle_s is None:
            return
        now = time.perf_counter()
        busy = {s.job.adapter for s in self._sequences if s.job is not None}
        for name, lora in self._loras.items():
            if lora.handle is None or name in busy or now - lora.used < self._adapter_idle_s:
                continue
            if self._active_lora == name:
                self._use_adapter(None)
            llama_cpp.llama_adapter_lora_free(lora.handle)
            lora.handle = None
            logger.info("freed LoRA adapter %s, unused for %.0f s", name, now - lora.used)

    def _resident(self, name: str) -> None:
        """Load the weights of adapter ``name`` again if they were freed for being idle."""
        lora = self._loras[name]
        lora.used = time.perf_counter()
        if lora.handle is not None:
            return
        handle = llama_cpp.llama_adapter_lora_init(self._model.model, str(lora.gguf).encode())
        if not handle:
            raise BadUpstreamResponse(
                f"adapter {name!r} could not be loaded again from {lora.path}"
            )
        lora.handle = handle
        logger.info("loaded LoRA adapter %s again", name)

    def _run_call(self, job: _Call) -> None:
        try:
            job.resolve(job.fn())
        except Exception as exc:  # handed to the awaiting caller, who re-raises it
            job.resolve(error=exc)

    def _admit(self, pending: deque[_Job | _Stop]) -> None:
        """Start queued requests, in order, while a sequence and cache room are free. A queued
        adapter change stops admission until the requests ahead of it have finished."""
        while pending and isinstance(head := pending[0], _Generate):
            if head.future.cancelled():
                pending.popleft()
                continue
            if head.adapter is not None:
                try:
                    if head.adapter not in self._loras:
                        raise BadUpstreamResponse(
                            f"adapter {head.adapter!r} is not loaded "
                            f"(loaded: {sorted(self._loras)})"
                        )
                    self._resident(head.adapter)
                except BadUpstreamResponse as exc:
                    pending.popleft()
                    head.resolve(error=exc)
                    continue
            sequence = self._free_sequence(head)
            if sequence is None:
                return
            pending.popleft()
            self._start(head, sequence)

    def _free_sequence(self, job: _Generate) -> _Sequence | None:
        """An idle sequence for ``job``, preferring one that already holds its start (of at
        least ``_MIN_SHARED`` tokens), else the least recently used, after making room in the
        cache; None when it has to wait for running requests. Taking the sequence that shares
        the start keeps the cache small (without flash attention every decode attends over
        all of its cells); ignoring shorter shares (the chat template's opening) keeps a
        window of extractions off the Manager's sequence, with its cached instructions."""
        idle = [s for s in self._sequences if s.job is None]
        if len(self._sequences) - len(idle) >= self._max_batch_size:
            return None

        def shared(s: _Sequence) -> int:
            n = _common_prefix(s.tokens, job.prompt) if s.adapter == job.adapter else 0
            return n if n >= _MIN_SHARED else 0

        target = max(idle, key=lambda s: (shared(s), -s.used))
        # Counting every sequence's tokens as its own overestimates a cache whose cells are
        # shared, so a request that fits this count always finds room in llama.cpp.
        need = len(job.prompt) + job.max_tokens
        held = sum(
            len(s.tokens) if s.job is None else len(s.job.prompt) + s.job.max_tokens
            for s in self._sequences
            if s is not target
        )
        for other in sorted(idle, key=lambda s: s.used):
            if held + need <= self._context_tokens:
                break
            if other is not target and other.tokens:
                held -= len(other.tokens)
                self._clear(other)
        return target if held + need <= self._context_tokens else None

    def _start(self, job: _Generate, target: _Sequence) -> None:
        """Point ``target`` at the longest cached start of ``job``'s prompt, its own or
        another sequence's (at least the last prompt token is left to run: it yields the
        first new token), and cut back the idle sequences it does not continue."""
        wanted = job.prompt[:-1]
        source, reused = target, 0
        for sequence in self._sequences:
            if sequence.adapter == job.adapter:
                shared = _common_prefix(sequence.tokens, wanted)
                if shared > reused or (shared == reused and sequence is target):
                    source, reused = sequence, shared
        memory = self._ctx.memory
        if source is target:
            self._cut(target, reused)
            reused = len(target.tokens)
        else:
            llama_cpp.llama_memory_seq_rm(memory, target.id, -1, -1)
            if reused:
                llama_cpp.llama_memory_seq_cp(memory, source.id, target.id, 0, reused)
            target.tokens = job.prompt[:reused]
        target.adapter, target.job, target.head = job.adapter, job, job.head
        job.fed = job.reused = reused
        self._trim_idle(keep=source if reused >= _MIN_SHARED else None)
        if job.matcher is not None:  # the reply's forced start is fed right after the prompt
            self._jump_forward(job)

    def _clear(self, sequence: _Sequence) -> None:
        llama_cpp.llama_memory_seq_rm(self._ctx.memory, sequence.id, -1, -1)
        sequence.tokens = []

    def _cut(self, sequence: _Sequence, keep: int) -> None:
        if llama_cpp.llama_memory_seq_rm(self._ctx.memory, sequence.id, keep, -1):
            del sequence.tokens[keep:]
        else:
            self._clear(sequence)

    def _step(self, running: list[_Generate]) -> None:
        """One ``llama_decode`` for the running requests of one adapter (the one that waited
        longest): each decoding row feeds the tokens it has not fed yet (its last sampled one
        and any the grammar forced after it), prompts fill the rest of the batch."""
        for job in running:
            if job.future.cancelled():  # the caller gave up: free its sequence
                self._finish(job)
        running = [job for job in running if not job.future.cancelled()]
        if not running:
            return
        adapter = min(running, key=lambda job: job.stepped).adapter
        if adapter is not None:
            self._loras[adapter].used = time.perf_counter()
        group = [job for job in running if job.adapter == adapter]
        # Decoding rows first: each needs a single slot, and they are what callers wait on.
        group.sort(key=lambda job: job.fed < len(job.prompt))
        batch, rows, room = self._batch, [], _BATCH_TOKENS
        batch.n_tokens = 0
        for job in group:
            if room == 0:
                break
            sequence = self._sequence_of(job)
            if job.fed < len(job.prompt):
                # A forced start of the reply waits for the next decode, so its values do not
                # depend on how much of the prompt was cached (as if decoded one by one).
                tokens = job.prompt[job.fed : job.fed + room]
            else:
                tokens = job.output[job.fed - len(job.prompt) :][:room]
            last = job.fed + len(tokens) == len(job.prompt) + len(job.output)
            for offset, token in enumerate(tokens):
                _add(batch, token, len(sequence.tokens) + offset, sequence.id, False)
            if last:
                batch.logits[batch.n_tokens - 1] = True
                rows.append((job, batch.n_tokens - 1))
            sequence.tokens.extend(tokens)
            job.fed += len(tokens)
            job.stepped = time.perf_counter()
            room -= len(tokens)
        self._use_adapter(adapter)
        code = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if code != 0:
            for job in group:
                sequence = self._sequence_of(job)
                self._finish(job, error=BadUpstreamResponse(f"llama_decode returned {code}"))
                self._clear(sequence)
            return
        logger.debug(
            "decoded %d tokens for %d sequences (adapter=%s)", batch.n_tokens, len(rows), adapter
        )
        for job, row in rows:
            self._sample(job, row)

    def _sample(self, job: _Generate, row: int) -> None:
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self._ctx.ctx, row), shape=(self._n_vocab,)
        )
        if job.matcher is not None:
            job.matcher.fill_next_token_bitmask(self._bitmask, 0)
            xgr.apply_token_bitmask_inplace(torch.from_numpy(logits)[None], self._bitmask)
        if job.temperature > 0:
            scaled = logits.astype(np.float64) / job.temperature
            probs = np.exp(scaled - scaled.max())
            token = int(self._rng.choice(self._n_vocab, p=probs / probs.sum()))
        else:
            token = int(np.argmax(logits))
        job.output.append(token)
        if token in self._stop_ids:
            self._finish(job, finished=True)
            return
        if job.matcher is not None:
            job.matcher.accept_token(token)
            self._jump_forward(job)
        if len(job.output) >= job.max_tokens:
            self._finish(job, finished=False)

    def _jump_forward(self, job: _Generate) -> None:
        """Append the text the grammar forces next (``", "text": "`` after an operation's
        id, say) without sampling it token by token: it is fed in the next decode at once.
        The text is tokenised as a whole, as the prompts' worked examples are, except its
        last token, which could merge with what the model writes next and is left to it."""
        assert job.matcher is not None
        forced = job.matcher.find_jump_forward_string()
        if not forced:
            return
        tokens = self._forced_tokens.get(forced)
        if tokens is None:
            with self._tokenizer_lock:
                tokens = self._tokenizer.encode(forced, add_special_tokens=False)[:-1]
            self._forced_tokens[forced] = tokens
        room = max(job.max_tokens - len(job.output) - 1, 0)  # one is left to sample
        for token in tokens[:room]:
            if not job.matcher.accept_token(token):
                return
            job.output.append(token)

    def _finish(
        self, job: _Generate, *, finished: bool = False, error: BaseException | None = None
    ) -> None:
        sequence = self._sequence_of(job)
        sequence.job, sequence.used = None, time.perf_counter()
        if job.future.cancelled():  # nobody is waiting for the reply
            return
        if error is None:
            try:
                job.resolve(self._to_completion(job, finished))
                return
            except BadUpstreamResponse as exc:
                error = exc
        job.resolve(error=error)

    def _trim_idle(self, keep: _Sequence | None) -> None:
        """Cut the idle sequences other than ``keep`` (the one a starting request continues)
        back to their prompt's head, then clear the least recently used of them until idle
        sequences hold at most ``_IDLE_CELLS`` cells or only ``keep`` is left. Every cached
        cell costs each later prompt, whichever sequence holds it: llama.cpp's CPU attention
        reads the mask of every cell for each token it computes (a 1.3k-token prompt
        prefilled at 541 tok/s into an empty cache, 250 with eight others cached). Heads are
        what later requests share: an agent's instructions and examples."""
        idle = sorted(
            (s for s in self._sequences if s.job is None and s is not keep), key=lambda s: s.used
        )
        for sequence in idle:
            if len(sequence.tokens) > sequence.head:
                self._cut(sequence, sequence.head)
        for sequence in idle:
            if self._idle_cells() <= _IDLE_CELLS:
                return
            self._clear(sequence)

    def _idle_cells(self) -> int:
        """Cells the idle sequences hold, a start shared by several counted once."""
        total, previous = 0, list[int]()
        for tokens in sorted(s.tokens for s in self._sequences if s.job is None):
            total += len(tokens) - _common_prefix(previous, tokens)
            previous = tokens
        return total

    def _sequence_of(self, job: _Generate) -> _Sequence:
        return next(s for s in self._sequences if s.job is job)

    def _to_completion(self, job: _Generate, finished: bool) -> Completion:
        content = job.output[:-1] if finished else job.output
        with self._tokenizer_lock:
            text = cast(str, self._tokenizer.decode(content, skip_special_tokens=True))
        parsed = None
        if job.matcher is not None:
            if not finished:
                raise UnusableOutput(
                    f"the model used all max_tokens={job.max_tokens} before finishing the JSON "
                    "output; raise max_tokens or bound the schema (maxLength, maxItems)"
                )
            # The grammar only lets the model stop after a complete document, so this parses.
            parsed = json.loads(text)
        return Completion(
            text=text,
            parsed=parsed,
            model=self.base_model,
            adapter=job.adapter,
            prompt_tokens=len(job.prompt),
            completion_tokens=len(job.output),
            latency_ms=(time.perf_counter() - job.submitted) * 1000,
            cached_tokens=job.reused,
        )

    def _use_adapter(self, name: str | None) -> None:
        if name == self._active_lora:
            return
        if name is None:
            code = llama_cpp.llama_set_adapters_lora(self._ctx.ctx, None, 0, None)
        else:
            handle = self._loras[name].handle
            assert handle is not None  # an admitted request's adapter is resident
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            scales = (ctypes.c_float * 1)(1.0)
            code = llama_cpp.llama_set_adapters_lora(self._ctx.ctx, handles, 1, scales)
        if code != 0:
            raise RuntimeError(f"llama_set_adapters_lora returned {code} for {name!r}")
        self._active_lora = name

    def _load(self, name: str, path: Path, gguf: Path) -> None:
        if (known := self._loras.get(name)) is not None and known.path == path:
            return
        handle = llama_cpp.llama_adapter_lora_init(self._model.model, str(gguf).encode())
        if not handle:
            raise Unprocessable(f"adapter at {path} does not fit {self.base_model}")
        self._unload(name)  # same name, new weights: replace
        self._loras = {**self._loras, name: _Lora(path, gguf, handle, time.perf_counter())}
        logger.info("loaded LoRA adapter %s from %s", name, path)

    def _unload(self, name: str) -> None:
        lora = self._loras.get(name)
        if lora is None:
            return
        for sequence in self._sequences:
            if sequence.adapter == name:  # computed with weights the name no longer means
                self._clear(sequence)
                sequence.adapter = None
        if self._active_lora == name:
            self._use_adapter(None)
        self._loras = {k: v for k, v in self._loras.items() if k != name}
        if lora.handle is not None:
            llama_cpp.llama_adapter_lora_free(lora.handle)
        logger.info("unloaded LoRA adapter %s", name)


def _add(batch: llama_cpp.llama_batch, token: int, pos: int, seq_id: int, logits: bool) -> None:
    i = batch.n_tokens
    batch.token[i] = token
    batch.pos[i] = pos  # type: ignore[call-overload]  # llama-cpp-python types pos as an array
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits
    batch.n_tokens = i + 1
