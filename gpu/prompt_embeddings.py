"""Prompt embeddings kept per text, so a repeated or looped prompt does not re-run the text encoder.

Both diffusers backends encode each text (the prompt, and the negative prompt when guidance needs
one) through the pipeline's own ``encode_prompt`` and hand the pipeline the embeddings instead of the
text. A stream repeats its prompt every segment, and a looped playlist comes back to the same few:
encoding them once saves a text-encoder pass per segment (a 12B Gemma for LTX-2).

The cache is a small LRU keyed by the exact text and everything else the encoding depends on
(``max_sequence_length``); entries stay on the pipeline's device. Capacity 0 turns it off. It is
thread-safe, though the backends only use it under their pipeline lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["DEFAULT_PROMPT_CACHE_SIZE", "CacheStats", "PromptEmbeddingCache", "encode_with_cache"]

DEFAULT_PROMPT_CACHE_SIZE = 8  # texts; a looped playlist of up to this many prompts never re-encodes

T = TypeVar("T")


@dataclass(frozen=True)
class CacheStats:
    """How often the cache answered (hits) and how often the encoder ran (misses)."""

    hits: int
    misses: int
    size: int


class PromptEmbeddingCache(Generic[T]):
    """At most ``capacity`` encodings, least recently used dropped first."""

    def __init__(self, capacity: int = DEFAULT_PROMPT_CACHE_SIZE) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"prompt_cache_size must be a non-negative int, got {capacity!r}")
        self._capacity = capacity
        self._entries: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def get(self, key: Hashable, encode: Callable[[], T]) -> T:
        """The encoding stored under ``key``, or ``encode()``'s result, stored for next time."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self._hits += 1
                return self._entries[key]
            self._misses += 1
        value = encode()  # outside the lock: an encoder failure leaves nothing behind
        if self._capacity:
            with self._lock:
                self._entries[key] = value
                self._entries.move_to_end(key)
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every encoding (their device memory goes back when nothing else holds them)."""
        with self._lock:
            self._entries.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(hits=self._hits, misses=self._misses, size=len(self._entries))


def encode_with_cache(
    cache: PromptEmbeddingCache[tuple[Any, Any]],
    pipeline: Any,
    text: str,
    *,
    torch: Any,
    max_sequence_length: int,
    device: Any,
) -> tuple[Any, Any]:
    """``(embeddings, attention mask)`` of ``text`` from ``pipeline.encode_prompt``, encoded once per text."""

    def encode() -> tuple[Any, Any]:
        with torch.no_grad():  # as inside the pipeline: no autograd graph kept with the cache
            embeds, mask, _, _ = pipeline.encode_prompt(
                prompt=text, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length, device=device
            )
        return embeds, mask

    return cache.get((text, max_sequence_length), encode)
