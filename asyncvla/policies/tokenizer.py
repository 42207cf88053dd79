"""A closed-vocabulary word tokenizer for the short templated instructions of the built-in envs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

PAD_ID = 0
UNK_ID = 1

# Punctuation is turned into spaces (not deleted) so "red,blue" still splits into two words.
_PUNCTUATION = str.maketrans({c: " " for c in ",.!?;:"})


def normalize_words(text: str) -> list[str]:
    """Lowercase, replace ``,.!?;:`` by spaces and split on whitespace."""
    return text.lower().translate(_PUNCTUATION).split()


class WordTokenizer:
    """Maps instructions to fixed-length id rows: 0 = ``<pad>``, 1 = ``<unk>``, then the vocabulary.

    Vocabulary words are normalized like instructions and deduplicated (first occurrence wins), so
    the id of a word depends only on the order of the vocabulary list.
    """

    # Rollouts repeat a handful of instructions millions of times; the cache is cleared when it
    # reaches this many entries so free-form instructions cannot grow it without bound.
    max_cache_entries = 65536

    def __init__(self, vocabulary: Sequence[str], max_len: int) -> None:
        if isinstance(vocabulary, str) or not all(isinstance(w, str) for w in vocabulary):
            raise ValueError("vocabulary must be a list of strings")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = int(max_len)
        self.word_to_id: dict[str, int] = {}
        for entry in vocabulary:
            for word in normalize_words(entry):
                if word not in self.word_to_id:
                    self.word_to_id[word] = len(self.word_to_id) + 2
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids, including ``<pad>`` and ``<unk>``."""
        return len(self.word_to_id) + 2

    def encode(self, text: str) -> tuple[int, ...]:
        """Ids of ``text``, truncated to and right-padded with ``<pad>`` to ``max_len`` (an empty
        text is ``<unk>``)."""
        ids = self._cache.get(text)
        if ids is None:
            words = normalize_words(text)[: self.max_len]
            # An empty instruction is one <unk>: a row of padding only would mask every word.
            row = [self.word_to_id.get(w, UNK_ID) for w in words] or [UNK_ID]
            ids = tuple(row + [PAD_ID] * (self.max_len - len(row)))
            if len(self._cache) >= self.max_cache_entries:
                self._cache.clear()
            self._cache[text] = ids
        return ids

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """LongTensor [B, max_len] of the ids of each text."""
        if isinstance(texts, str):
            raise ValueError("encode_batch expects a list of strings, got a single string")
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.long).reshape(
            len(texts), self.max_len
        )
