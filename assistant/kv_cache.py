"""A KV cache for one batch decoded to its end: it grows by doubling instead of by copying.

transformers' `DynamicCache` concatenates every layer's keys and values with the new token's at
each step, so step t copies the whole cache (rows x heads x t x dim, twice per layer) into a
freshly allocated tensor. Here each layer keeps a buffer with spare room, writes the new
positions in place and hands attention a view of the filled part; a full buffer is copied once
into one twice its size. The numbers are the same (`tests/test_generation.py`).

Only for `generation.stream_tokens`, where a batch's rows stay together until the end: the
serving batcher, which merges and drops rows between steps, keeps `DynamicCache`.
"""

from __future__ import annotations

from typing import Any, NoReturn

import torch
from transformers.cache_utils import Cache, DynamicLayer

MIN_CAPACITY = 64  # positions a fresh buffer holds at least


def _grown(buffer: torch.Tensor | None, like: torch.Tensor, length: int, need: int) -> torch.Tensor:
    """A buffer shaped like `like` with room for at least `need` positions (twice that), the
    first `length` positions copied from `buffer`."""
    rows, heads, _, dim = like.shape
    grown = like.new_empty(rows, heads, max(2 * need, MIN_CAPACITY), dim)
    if buffer is not None and length:
        grown[:, :, :length] = buffer[:, :, :length]
    return grown


class GrowingLayer(DynamicLayer):
    """One layer's keys and values in buffers with spare room; `keys`/`values` are views of
    the filled positions, as `DynamicLayer`'s attention callers expect."""

    is_croppable = False

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._key_buffer: torch.Tensor | None = None
            self._value_buffer: torch.Tensor | None = None
            self._length = 0
        start, end = self._length, self._length + key_states.shape[-2]
        if self._key_buffer is None or end > self._key_buffer.shape[-2]:
            self._key_buffer = _grown(self._key_buffer, key_states, start, end)
            self._value_buffer = _grown(self._value_buffer, value_states, start, end)
        assert self._value_buffer is not None
        self._key_buffer[:, :, start:end] = key_states
        self._value_buffer[:, :, start:end] = value_states
        self._length = end
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values

    def _rows_stay(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("a growing cache's rows stay together until the end")

    crop = batch_repeat_interleave = batch_select_indices = reorder_cache = _rows_stay


def growing_cache() -> Cache:
    """An empty cache whose layers are `GrowingLayer`s (created as the model first fills it)."""
    return Cache(layer_class_to_replicate=GrowingLayer)
