"""The supervised parts of a round on the tiny model: demonstrations and DPO on A/B choices."""

from __future__ import annotations

import pytest
import torch

from online_rl.policy import TrainablePolicy, forward_batch, make_batch
from online_rl.warm_start import preference_step, sequence_logprob, supervised_step

CPU = torch.device("cpu")
PROMPTS = [[5, 6, 7], [8, 9, 10, 11]]
WINNERS = [[12, 13, 2], [14, 2]]
LOSERS = [[20, 21, 22, 23], [24, 25, 26]]


def test_supervised_steps_lower_the_loss_on_demonstrations(
    policy: TrainablePolicy,
) -> None:
    batch = make_batch(PROMPTS, WINNERS, 0, CPU)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    losses = [supervised_step(policy.peft, optimizer, batch, 1.0) for _ in range(5)]
    assert losses[-1] < losses[0] - 0.1


def test_dpo_moves_the_policy_toward_the_winner_and_away_from_the_loser(
    policy: TrainablePolicy,
) -> None:
    chosen, rejected = make_batch(PROMPTS, WINNERS, 0, CPU), make_batch(PROMPTS, LOSERS, 0, CPU)
    with torch.no_grad(), policy.base_only():
        ref_chosen = sequence_logprob(policy.peft, chosen)
        ref_rejected = sequence_logprob(policy.peft, rejected)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=5e-3)
    results = [
        preference_step(
            policy.peft, optimizer, chosen, rejected, ref_chosen, ref_rejected, 0.1, 1.0
        )
        for _ in range(6)
    ]
    assert results[0][0] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)
    assert results[-1][0] < results[0][0]  # the DPO loss falls...
    with torch.no_grad():
        margin = (sequence_logprob(policy.peft, chosen) - ref_chosen) - (
            sequence_logprob(policy.peft, rejected) - ref_rejected
        )
    assert (margin > 0).all()  # ...because winners gained on losers against the base


def test_the_sampling_paths_compute_what_peft_routing_computes(
    policy: TrainablePolicy,
) -> None:
    from online_rl.policy import BASE, TRAINABLE

    with torch.no_grad():
        for name, p in policy.peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-zero adapter, so base and adapter rows differ
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    mask, positions = torch.ones_like(ids), torch.arange(4).repeat(2, 1)
    with torch.no_grad():
        with policy.sampling_forward([TRAINABLE]) as forward:
            fast = forward(ids[:1], mask[:1], positions[:1], None).logits
        with policy.sampling_forward([TRAINABLE, BASE]) as forward:
            stacked = forward(ids, mask, positions, None).logits
        routed = policy.peft(ids, attention_mask=mask, adapter_names=[TRAINABLE, BASE]).logits
        after = policy.peft(ids[:1], attention_mask=mask[:1]).logits  # peft's LoRA is back
    assert torch.allclose(fast[0], stacked[0], atol=1e-5)  # same adapter, same numbers
    assert torch.allclose(stacked[:, -1], routed[:, -1], atol=1e-5)  # as peft's routing
    assert torch.allclose(after[0, -1], fast[0, -1], atol=1e-5)
    assert not torch.allclose(stacked[0], stacked[1], atol=1e-3)  # and the adapter does matter


def test_rpo_adds_the_chosen_replies_cross_entropy_to_the_dpo_loss(
    policy: TrainablePolicy,
) -> None:
    chosen, rejected = make_batch(PROMPTS, WINNERS, 0, CPU), make_batch(PROMPTS, LOSERS, 0, CPU)
    with torch.no_grad():
        ref_chosen = sequence_logprob(policy.peft, chosen)
        ref_rejected = sequence_logprob(policy.peft, rejected)
        out = forward_batch(policy.peft, chosen, temperature=1.0)
        mask = chosen.response_mask.float()
        nll = -((out.logprobs * mask).sum() / mask.sum()).item()
    frozen = torch.optim.SGD(policy.trainable_parameters(), lr=0.0)  # measure, do not move
    dpo, _ = preference_step(
        policy.peft, frozen, chosen, rejected, ref_chosen, ref_rejected, 0.1, 1.0
    )
    rpo, _ = preference_step(
        policy.peft, frozen, chosen, rejected, ref_chosen, ref_rejected, 0.1, 1.0, 0.5
    )
    assert dpo == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)
    assert rpo == pytest.approx(dpo + 0.5 * nll, abs=1e-4)
