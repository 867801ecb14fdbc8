"""JSON-schema grammars for one model's vocabulary (xgrammar), shared by serving and training.

Serving (``app.llm.inprocess``) steps one matcher per sequence over llama.cpp's logits; GRPO
rollouts (``training.grpo``) use ``GrammarMask`` as a transformers logits processor. Both compile
the schema the same way, so an adapter is trained under the constraint it is served with.
"""

from collections.abc import Sequence
from typing import Any

import torch
import xgrammar as xgr
from transformers import LogitsProcessor, PreTrainedTokenizerBase


class JsonGrammar:
    """Compiles JSON schemas into xgrammar grammars for one model's vocabulary. Compiled
    grammars are cached by schema text, so each is built once."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_ids: list[int]
    ) -> None:
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids
        )
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info)

    def compile(self, schema: str) -> xgr.CompiledGrammar:
        # Compact JSON only: with free whitespace a small model can spend its whole token
        # budget on newlines without ever breaking the grammar.
        return self._compiler.compile_json_schema(schema, any_whitespace=False)

    def mask(self, schemas: Sequence[str], prefix: str = "") -> "GrammarMask":
        """A fresh logits processor for one ``generate()`` call: row i is decoded under
        ``schemas[i]``, each row having already written ``prefix`` (text the prompt ends
        with, part of the JSON)."""
        return GrammarMask([self.compile(s) for s in schemas], self.vocab_size, prefix)


class GrammarMask(LogitsProcessor):
    """Masks every token the JSON grammar does not allow next, one matcher per batch row."""

    def __init__(
        self, grammars: Sequence[xgr.CompiledGrammar], vocab_size: int, prefix: str = ""
    ) -> None:
        self.matchers = [xgr.GrammarMatcher(grammar) for grammar in grammars]
        if prefix and not all(matcher.accept_string(prefix) for matcher in self.matchers):
            raise ValueError(f"{prefix!r} is not a valid start of the schema's JSON")
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.prefilled = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
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
