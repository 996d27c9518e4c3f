"""The supervised parts of a round: the user's own demonstrations and A/B preferences.

- demonstrations (liked replies, A/B winners, best-of-n samples): next-token cross-entropy on
  the reply tokens;
- A/B preferences: the DPO loss (Rafailov et al. 2023) against the base with adapters off,
  -log sigmoid(beta * [(log pi(w) - log ref(w)) - (log pi(l) - log ref(l))]), which uses what a
  choice says — this one rather than that one — and not just which reply was kept; optionally
  plus the chosen reply's cross-entropy, which keeps the policy on text like the chosen one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from online_rl.policy import Batch, forward_batch
from online_rl.ppo import NonFiniteLoss, masked_mean


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
    margin = ((chosen_out.logprobs * chosen_mask).sum(-1) - ref_chosen) - (
        sequence_logprob(policy, rejected) - ref_rejected
    )
    loss = -F.logsigmoid(beta * margin).mean()
    if nll_weight:
        loss = loss - nll_weight * masked_mean(chosen_out.logprobs, chosen_mask)
    accuracy = (margin > 0).float().mean().item()
    return _step(optimizer, loss, max_grad_norm), accuracy
