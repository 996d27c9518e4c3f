"""The supervised parts of a round: the user's own demonstrations and A/B preferences.

- demonstrations (liked replies, A/B winners, best-of-n samples): next-token cross-entropy on
  the reply tokens;
- A/B preferences: the DPO loss (Rafailov et al. 2023) against the base with adapters off,
  -log sigmoid(beta * [(log pi(w) - log ref(w)) - (log pi(l) - log ref(l))]), which uses what a
  choice says — this one rather than that one — and not just which reply was kept; optionally
  plus the chosen reply's cross-entropy, which keeps the policy on text like the chosen one.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from online_rl.config import RoundConfig
from online_rl.policy import Batch, forward_batch
from online_rl.ppo import NonFiniteLoss, masked_mean
from online_rl.user_data import Example


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_grad_norm: float) -> float:
    if not torch.isfinite(loss):
        raise NonFiniteLoss("warm-start loss is not finite")
    optimizer.zero_grad()
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return loss.item()


def supervised_step(
    policy: Any, optimizer: torch.optim.Optimizer, batch: Batch, max_grad_norm: float
) -> float:
    """One step of next-token cross-entropy on the response tokens."""
    out = forward_batch(policy, batch, temperature=1.0)
    return _step(optimizer, -masked_mean(out.logprobs, batch.response_mask.float()), max_grad_norm)


def sequence_logprob(policy: Any, batch: Batch) -> torch.Tensor:
    """Sum of the reply tokens' log-probabilities, per row."""
    out = forward_batch(policy, batch, temperature=1.0)
    return (out.logprobs * batch.response_mask).sum(-1)


def preference_step(
    policy: Any,
    optimizer: torch.optim.Optimizer,
    chosen: Batch,
    rejected: Batch,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    max_grad_norm: float,
    nll_weight: float = 0.0,
) -> tuple[float, float]:
    """One DPO step; returns (loss, share of pairs the policy already ranks right).

    nll_weight adds the chosen replies' per-token cross-entropy (RPO, Pang et al. 2024): DPO
    alone can lower both replies' likelihood and drift into text neither resembles.
    """
    chosen_out = forward_batch(policy, chosen, temperature=1.0)
    chosen_mask = chosen.response_mask.float()
    device = chosen_mask.device  # the references may be cached on the CPU
    margin = ((chosen_out.logprobs * chosen_mask).sum(-1) - ref_chosen.to(device)) - (
        sequence_logprob(policy, rejected) - ref_rejected.to(device)
    )
    loss = -F.logsigmoid(beta * margin).mean()
    if nll_weight:
        loss = loss - nll_weight * masked_mean(chosen_out.logprobs, chosen_mask)
    accuracy = (margin > 0).float().mean().item()
    return _step(optimizer, loss, max_grad_norm), accuracy


@dataclass
class WarmStart:
    """What the warm start did; its first and last losses go into the round's metrics."""

    sft_losses: list[float] = field(default_factory=list)
    preference_losses: list[float] = field(default_factory=list)
    preference_accuracy: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float | None]:
        def at(values: list[float], i: int) -> float | None:
            return values[i] if values else None

        return {
            "sft_loss_first": at(self.sft_losses, 0),
            "sft_loss_last": at(self.sft_losses, -1),
            "preference_loss_first": at(self.preference_losses, 0),
            "preference_loss_last": at(self.preference_losses, -1),
            "preference_accuracy_last": at(self.preference_accuracy, -1),
        }


def warm_start(
    policy: Any,
    optimizer: torch.optim.Optimizer,
    to_batch: Callable[[Sequence[Example]], Batch],
    demonstrations: list[Example],
    pairs: list[tuple[Example, Example]],
    reference: tuple[torch.Tensor, torch.Tensor],
    c: RoundConfig,
    max_grad_norm: float,
    rng: random.Random,
    between_steps: Callable[[], object] = lambda: None,
) -> WarmStart:
    """`sft_steps` supervised steps on random batches of the demonstrations, then
    `preference_steps` DPO steps on random batches of the (chosen, rejected) pairs, whose base
    log-probs are `reference`; `between_steps()` before each (serving lets chat go first)."""
    done = WarmStart()
    for _ in range(c.sft_steps if demonstrations else 0):
        between_steps()
        chosen = rng.sample(demonstrations, min(len(demonstrations), c.sft_batch))
        done.sft_losses.append(supervised_step(policy, optimizer, to_batch(chosen), max_grad_norm))
    for _ in range(c.preference_steps if pairs else 0):
        between_steps()
        rows = rng.sample(range(len(pairs)), min(len(pairs), c.preference_batch))
        loss, accuracy = preference_step(
            policy,
            optimizer,
            to_batch([pairs[i][0] for i in rows]),
            to_batch([pairs[i][1] for i in rows]),
            reference[0][rows],
            reference[1][rows],
            c.preference_beta,
            max_grad_norm,
        )
        done.preference_losses.append(loss)
        done.preference_accuracy.append(accuracy)
    return done


class ReferenceLogprobs:
    """The base's summed log-prob of stored replies (DPO's reference) per (user id, message
    id), the `capacity` most recently used. The base is frozen and messages immutable, so a
    value never goes stale. Kept in memory, not stored: a lost one costs one no-grad base pass
    over at most 2 x preference_pairs replies per user, so a restart or an eviction is cheap,
    and memory stays bounded. Thread-safe: `forget` runs on other threads than rounds."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._values: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, keys: list[tuple[str, str]], compute: Callable[[list[int]], torch.Tensor]
    ) -> torch.Tensor:
        """The values of `keys`; `compute(indices)` gives those of keys[i] not kept."""
        with self._lock:
            known = {k: self._values[k] for k in keys if k in self._values}
        missing = [i for i, k in enumerate(keys) if k not in known]
        if missing:
            fresh = compute(missing).tolist()
            known |= {keys[i]: value for i, value in zip(missing, fresh, strict=True)}
        with self._lock:
            for k in keys:
                self._values[k] = known[k]
                self._values.move_to_end(k)
            while len(self._values) > self.capacity:
                self._values.popitem(last=False)
        return torch.tensor([known[k] for k in keys])

    def forget(self, user_id: str) -> None:
        with self._lock:
            for key in [k for k in self._values if k[0] == user_id]:
                del self._values[key]

    def __getitem__(self, key: tuple[str, str]) -> float:
        with self._lock:
            return self._values[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        with self._lock:
            return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)
