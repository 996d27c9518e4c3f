"""Continuous batching: every reply being generated shares one forward pass per step.

Why: on a CPU one decoding step of a small model for 8 rows costs far less than 8 steps for 1
(the weights are read once per step either way; 2.9x the throughput, README "Serving"), so
users who chat at the same time should share steps rather than take turns. A request (a group
of rows: one chat reply, or the two replies of an A/B pair) joins the running batch between two
steps: its prompts are prefilled together, and their KV cache is padded on the left to the
batch's width and appended. A group leaves as soon as its rows end. Every row keeps its own
LoRA adapter (as batched matmuls, `assistant.stacked_lora`), its sampling settings and its
seeded generator, so its text does not depend on who else is in the batch.

One worker thread owns the serving model; callers get the tokens of their group step by step
from a queue (`DecodeBatcher.stream`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from assistant.adapters import AdapterRegistry
from assistant.config import GenerationConfig
from assistant.errors import AttuneError
from assistant.generation import left_pad, next_tokens
from assistant.stacked_lora import StackedLora

log = logging.getLogger(__name__)

_DONE = object()  # a group's last queue item


class BatcherClosed(AttuneError):
    """The assistant closed while a reply was being generated."""


@dataclass(eq=False)
class Group:
    """Rows submitted together; they join the batch in the same step and report together."""

    user_ids: list[str]
    prompts: list[list[int]]
    settings: GenerationConfig
    seeds: list[int]
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stack: ExitStack = field(default_factory=ExitStack)  # the adapter lease, released on leave
    adapter_names: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    generators: list[torch.Generator] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    steps: int = 0

    @property
    def done(self) -> bool:
        return all(self.finished) or self.steps >= self.settings.max_new_tokens


@dataclass
class Batch:
    """The running rows: their groups (in row order), KV cache, attention mask, next inputs."""

    groups: list[Group] = field(default_factory=list)
    cache: DynamicCache | None = None
    mask: torch.Tensor | None = None  # (rows, width): 0 on left padding
    next_ids: torch.Tensor | None = None  # (rows, 1): the token each row feeds next
    positions: torch.Tensor | None = None  # (rows, 1): that token's position

    @property
    def rows(self) -> int:
        return sum(len(g.prompts) for g in self.groups)


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def merge_caches(
    a: DynamicCache, a_mask: torch.Tensor, b: DynamicCache, b_mask: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor]:
    """Stack two batches' caches row-wise, left-padding the narrower one (masked out)."""
    width = max(a_mask.shape[1], b_mask.shape[1])
    layers = [
        (
            torch.cat([_pad_left(la.keys, width, 2), _pad_left(lb.keys, width, 2)]),
            torch.cat([_pad_left(la.values, width, 2), _pad_left(lb.values, width, 2)]),
        )
        for la, lb in zip(a.layers, b.layers, strict=True)
    ]
    mask = torch.cat([_pad_left(a_mask, width, 1), _pad_left(b_mask, width, 1)])
    return DynamicCache(ddp_cache_data=layers), mask


def keep_rows(cache: DynamicCache, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Drop the other rows from the cache (in place) and the columns no kept row attends to."""
    cache.batch_select_indices(rows)
    mask = mask[rows]
    unused = int((mask.cumsum(-1) == 0).all(0).sum())  # left columns padded in every row
    if unused:
        for layer in cache.layers:
            layer.keys = layer.keys[:, :, unused:]
            layer.values = layer.values[:, :, unused:]
        mask = mask[:, unused:]
    return mask


class DecodeBatcher:
    """The serving model's one worker: joins waiting groups, steps the batch, hands out tokens.

    max_rows: rows decoded together at most; a group that does not fit waits for rows to end
    (a group larger than max_rows runs alone).
    """

    def __init__(self, registry: AdapterRegistry, max_rows: int):
        self.registry = registry
        self.base = registry.base
        self.max_rows = max(1, max_rows)
        self._waiting: deque[Group] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._lora: StackedLora | None = None  # per-row LoRA, once the model holds adapters
        self._adapters_changed = True
        self._idle = threading.Event()  # set while no reply is being written or waiting
        self._idle.set()
        self._busy_listeners: list[Callable[[bool], None]] = []

    # the callers' side ------------------------------------------------------------------------

    def stream(
        self,
        user_ids: Sequence[str],
        prompts: Sequence[Sequence[int]],
        settings: GenerationConfig,
        seeds: Sequence[int],
    ) -> Iterator[tuple[list[int], list[int]]]:
        """Yield, per step, each row's new token (pad once a row has ended) and the adapter
        version each row runs on. Leaving the loop early cancels the group."""
        group = Group(list(user_ids), [list(p) for p in prompts], settings, list(seeds))
        with self._wake:
            if self._closed:
                raise BatcherClosed("the assistant is closing")
            self._waiting.append(group)
            if self._idle.is_set():
                self._idle.clear()
                self._tell(busy=True)
            self._start()
            self._wake.notify()
        try:
            while True:
                item = group.out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item, group.versions
        finally:
            group.cancelled.set()

    def on_busy_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(True)` when a reply starts being written after none was, and
        `listener(False)` when the last one ends: a round in another process pauses on it
        (chat first across processes). Called under the batcher's lock, in order: a listener
        must return at once."""
        self._busy_listeners.append(listener)

    def _tell(self, busy: bool) -> None:
        for listener in self._busy_listeners:
            try:
                listener(busy)
            except Exception:  # a listener's failure never stops a reply
                log.exception("a busy-change listener failed")

    def wait_until_idle(self, timeout: float) -> bool:
        """Block until no reply is being written or waiting (True), or `timeout` seconds have
        passed (False): a training round calls this between its steps, so chat goes first."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Stop the worker; replies still being generated end with BatcherClosed."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="decode-batcher", daemon=True)
            self._thread.start()

    # the worker -------------------------------------------------------------------------------

    def _run(self) -> None:
        batch = Batch()
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not batch.groups:
                    if not self._idle.is_set():
                        self._idle.set()
                        self._tell(busy=False)
                    self._wake.wait()
                if self._closed:
                    self._fail(batch.groups + list(self._waiting), BatcherClosed("closing"))
                    self._waiting.clear()
                    return
                joining = self._take_joining(batch)
            with torch.inference_mode():
                if joining:
                    try:
                        self._join(batch, joining)
                    except Exception as e:  # the new rows fail; the running ones go on
                        log.exception("a reply could not join the batch")
                        self._fail(joining, e)
                    self._leave(batch)
                if batch.groups:  # a step on every iteration: joins never stall running rows
                    try:
                        self._step(batch)
                    except Exception as e:  # a failed step fails its rows, not the worker
                        log.exception("generation step failed")
                        self._fail(batch.groups, e)
                        batch = Batch()
                        continue
                    self._leave(batch)

    def _take_joining(self, batch: Batch) -> list[Group]:
        """Waiting groups that fit now, oldest first."""
        joining: list[Group] = []
        free = self.max_rows - batch.rows
        while self._waiting:
            group = self._waiting[0]
            if group.cancelled.is_set():
                self._waiting.popleft()
                continue
            fits = len(group.prompts) <= free
            if not fits and (batch.groups or joining):
                break
            joining.append(self._waiting.popleft())
            free -= len(group.prompts)
        return joining

    def _fail(self, groups: list[Group], error: BaseException) -> None:
        for group in groups:
            group.stack.close()
            group.out.put(error)

    def _forward(self, names: list[str], **inputs: Any) -> Any:
        """One forward of the serving model with each row on its own adapter."""
        registry = self.registry
        with registry.forward_lock:
            if registry.peft is None:
                return self.base.model(use_cache=True, logits_to_keep=1, **inputs)
            if self._lora is None:
                self._lora = StackedLora(registry.peft)
            if self._adapters_changed:
                self._lora.refresh()
                self._adapters_changed = False
            self._lora.use(names)
            return registry.peft(use_cache=True, logits_to_keep=1, **inputs)

    def _join(self, batch: Batch, joining: list[Group]) -> None:
        """Prefill the joining groups together and append them to the batch."""
        for group in joining:
            binding = group.stack.enter_context(self.registry.lease(group.user_ids))
            group.adapter_names, group.versions = binding.adapter_names, binding.versions
            group.generators = [torch.Generator().manual_seed(s) for s in group.seeds]
            group.finished = [False] * len(group.prompts)
        self._adapters_changed = True  # the leases may have loaded adapters
        prompts = [p for g in joining for p in g.prompts]
        ids, mask = left_pad(prompts, self.base.tokenizer.pad_token_id, self.base.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(
            [n for g in joining for n in g.adapter_names],
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=DynamicCache(),
        )
        tokens = self._pick(joining, out.logits[:, -1, :])
        if batch.cache is None or batch.mask is None or not batch.groups:
            batch.cache, batch.mask = out.past_key_values, mask
            batch.next_ids, batch.positions = tokens[:, None], positions[:, -1:] + 1
        else:
            batch.cache, batch.mask = merge_caches(
                batch.cache, batch.mask, out.past_key_values, mask
            )
            assert batch.next_ids is not None and batch.positions is not None
            batch.next_ids = torch.cat([batch.next_ids, tokens[:, None]])
            batch.positions = torch.cat([batch.positions, positions[:, -1:] + 1])
        batch.groups.extend(joining)

    def _step(self, batch: Batch) -> None:
        """One decoding step of every running row."""
        assert batch.mask is not None and batch.positions is not None
        batch.mask = torch.cat([batch.mask, torch.ones_like(batch.next_ids)], dim=-1)
        out = self._forward(
            [n for g in batch.groups for n in g.adapter_names],
            input_ids=batch.next_ids,
            attention_mask=batch.mask,
            position_ids=batch.positions,
            past_key_values=batch.cache,
        )
        batch.cache = out.past_key_values
        batch.next_ids = self._pick(batch.groups, out.logits[:, -1, :])[:, None]
        batch.positions = batch.positions + 1

    def _pick(self, groups: list[Group], logits: torch.Tensor) -> torch.Tensor:
        """Sample each group's rows with its own settings and generators; hand the tokens out."""
        eos = self.base.eos_ids
        pad = self.base.tokenizer.pad_token_id
        picked, start = [], 0
        for group in groups:
            rows = len(group.prompts)
            tokens = next_tokens(logits[start : start + rows], group.settings, group.generators)
            start += rows
            shown = [
                pad if ended else t
                for t, ended in zip(tokens.tolist(), group.finished, strict=True)
            ]
            group.finished = [
                ended or t in eos for t, ended in zip(shown, group.finished, strict=True)
            ]
            group.steps += 1
            group.out.put(shown)
            picked.extend(shown)  # an ended row feeds pad, as `generation.stream_tokens` does
        return torch.tensor(picked, dtype=torch.long, device=logits.device)

    def _leave(self, batch: Batch) -> None:
        """Groups that ended (or whose caller left) leave the batch and release their lease."""
        keep, row = [], 0
        staying: list[Group] = []
        for group in batch.groups:
            rows = len(group.prompts)
            if group.done or group.cancelled.is_set():
                group.stack.close()
                group.out.put(_DONE)
            else:
                staying.append(group)
                keep.extend(range(row, row + rows))
            row += rows
        if len(staying) == len(batch.groups):
            return
        batch.groups = staying
        if not staying:
            batch.cache = batch.mask = batch.next_ids = batch.positions = None
            return
        index = torch.tensor(keep, device=self.base.device)
        assert batch.cache is not None and batch.mask is not None
        assert batch.next_ids is not None and batch.positions is not None
        batch.mask = keep_rows(batch.cache, batch.mask, index)
        batch.next_ids, batch.positions = batch.next_ids[index], batch.positions[index]
