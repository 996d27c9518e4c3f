"""PPO pieces against hand-computed numbers, and one real update on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from online_rl.policy import TrainablePolicy, forward_batch, make_batch
from online_rl.ppo import (
    NonFiniteLoss,
    PPOConfig,
    Rollouts,
    adaptive_kl_coef,
    gae,
    kl_per_token,
    ppo_update,
    shaped_scores,
    token_rewards,
    whiten,
)


def test_gae_with_gamma_one_and_lambda_one_is_reward_to_go_minus_value() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    mask = torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0, 1.0]]))
    assert torch.allclose(advantages, torch.tensor([[0.5, 0.8, 0.9]]))


def test_gae_by_hand_with_lambda_and_padding() -> None:
    rewards = torch.tensor([[0.0, 2.0, 0.0]])
    values = torch.tensor([[1.0, 1.0, 9.0]])  # the last column is padding: its value is ignored
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, _ = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    delta1 = 2.0 + 0.0 - 1.0
    delta0 = 0.0 + 1.0 - 1.0
    assert advantages[0, 1].item() == pytest.approx(delta1)
    assert advantages[0, 0].item() == pytest.approx(delta0 + 0.5 * delta1)
    assert advantages[0, 2].item() == 0.0


def test_score_lands_on_the_last_real_token_and_kl_on_every_token() -> None:
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.1, 0.1]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = token_rewards(torch.tensor([1.0, -1.0]), kl, mask, torch.tensor([2, 0]), kl_coef=0.5)
    assert torch.allclose(
        rewards, torch.tensor([[-0.05, -0.1, 1.0 - 0.15], [-1.0 - 0.05, 0.0, 0.0]])
    )


def test_k3_is_never_negative_and_k1_is_the_log_ratio() -> None:
    logp = torch.log(torch.tensor([0.2, 0.5, 0.9]))
    ref = torch.log(torch.tensor([0.4, 0.5, 0.1]))
    assert torch.allclose(kl_per_token(logp, ref, "k1"), logp - ref)
    assert (kl_per_token(logp, ref, "k3") >= 0).all()
    assert kl_per_token(logp, ref, "k3")[1].item() == pytest.approx(0.0)


def test_missing_eos_is_penalised_and_scores_clipped() -> None:
    c = PPOConfig(missing_eos_penalty=1.0, reward_clip=2.0)
    out = shaped_scores(torch.tensor([0.5, 0.5, 9.0]), torch.tensor([True, False, True]), c)
    assert out.tolist() == [0.5, -0.5, 2.0]


def test_adaptive_kl_coef_moves_toward_the_target() -> None:
    c = PPOConfig(target_kl=6.0, kl_horizon=100)
    assert adaptive_kl_coef(0.1, 12.0, 10, c) > 0.1
    assert adaptive_kl_coef(0.1, 1.0, 10, c) < 0.1
    assert adaptive_kl_coef(0.1, 1.0, 10, PPOConfig(adaptive_kl=False)) == 0.1


def test_whitening_ignores_padding() -> None:
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    w = whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert real.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
    assert (w[:, 2] == 0).all()


def _rollouts(policy: TrainablePolicy, scores: list[float]) -> Rollouts:
    prompts = [[5, 6, 7]] * len(scores)
    replies = [[10 + i, 20 + i, 2] for i in range(len(scores))]
    batch = make_batch(prompts, replies, pad_id=0, device=torch.device("cpu"))
    with torch.no_grad(), policy.base_only():
        ref = forward_batch(policy.peft, batch, 1.0)
    return Rollouts(
        batch, torch.tensor(scores), torch.ones(len(scores), dtype=torch.bool), ref.logprobs
    )


def test_ppo_raises_the_likelihood_of_rewarded_replies_and_changes_only_lora(
    policy: TrainablePolicy,
) -> None:
    rollouts = _rollouts(policy, [2.0, -2.0, -2.0, -2.0])
    frozen = {n: p.clone() for n, p in policy.peft.named_parameters() if not p.requires_grad}
    c = PPOConfig(temperature=1.0, learning_rate=3e-3, epochs=2, minibatch_size=4, kl_coef=0.0)
    params = policy.trainable_parameters() + list(policy.value_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=c.learning_rate)

    def sequence_logprob() -> torch.Tensor:
        with torch.no_grad():
            out = forward_batch(policy.peft, rollouts.batch, 1.0)
        return (out.logprobs * rollouts.batch.response_mask).sum(-1)

    before = sequence_logprob()
    value_losses = [
        ppo_update(policy.peft, policy.value_head, optimizer, rollouts, 0.0, c)["value_loss"]
        for _ in range(6)
    ]
    after = sequence_logprob()
    assert after[0] - before[0] > 0.1  # the rewarded reply became likelier...
    assert (after[1:] - before[1:] < after[0] - before[0]).all()  # ...more than the others
    assert value_losses[-1] < value_losses[0]  # the value head learns the returns
    for name, p in policy.peft.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


def test_a_nan_score_aborts_the_update_before_any_step(policy: TrainablePolicy) -> None:
    rollouts = _rollouts(policy, [1.0, float("nan")])
    before = [p.clone() for p in policy.trainable_parameters()]
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    with pytest.raises(NonFiniteLoss):
        ppo_update(policy.peft, policy.value_head, optimizer, rollouts, 0.1, PPOConfig())
    assert all(
        torch.equal(a, b) for a, b in zip(before, policy.trainable_parameters(), strict=True)
    )


def test_an_exploding_ratio_skips_the_minibatch(
    policy: TrainablePolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollouts = _rollouts(policy, [1.0, -1.0])
    # Pretend the rollouts came from a very different policy: ratios are astronomically off.
    c = PPOConfig(temperature=1.0, max_ratio=10.0)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    original = forward_batch

    def far_off(model, batch, temperature, value_head=None):  # noqa: ANN001
        out = original(model, batch, temperature, value_head)
        if torch.is_grad_enabled():
            out.logprobs = out.logprobs + math.log(1000.0)
        return out

    monkeypatch.setattr("online_rl.ppo.forward_batch", far_off)
    stats = ppo_update(policy.peft, policy.value_head, optimizer, rollouts, 0.1, c)
    assert stats["skipped_minibatches"] == 1.0
    assert math.isnan(stats["policy_loss"])


def test_decoding_runs_fused_attention_and_gives_the_model_back_as_it_was(
    tiny_model_dir: Path,
) -> None:
    """A bf16 training copy runs its passes with plain-matmul attention; sampling switches to
    torch's fused attention for the decoding steps and back afterwards, even on an error."""
    from transformers import AutoModelForCausalLM

    from online_rl.policy import attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.set_attn_implementation("eager")
    with attention(model, "sdpa"):
        assert model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == "eager"
    with pytest.raises(RuntimeError), attention(model, "sdpa"):
        raise RuntimeError("a decoding step failed")
    assert model.config._attn_implementation == "eager"


def test_the_sampler_keeps_the_log_probs_and_values_a_pass_over_its_replies_gives(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """PPO's "old" log-probs and values come from sampling (`sample_rollouts`): in fp32 they
    are what a pass over the sampled replies computes, also at a reply's end, where any end
    token the model drew is stored as the tokenizer's EOS; the replies are `sample`'s."""
    from assistant.config import ModelConfig
    from assistant.model import load
    from online_rl import sampling
    from online_rl.policy import TRAINABLE, LoraSettings

    config = ModelConfig(
        name=str(tiny_model_dir), device="cpu", quantize="none", training_precision="fp32"
    )
    base = load(config, tmp_path)
    # many end tokens, so most replies end early, on tokens other than the tokenizer's EOS
    base.model.generation_config.eos_token_id = list(range(100, 130))
    policy = TrainablePolicy(base.training_copy(), LoraSettings(r=4, alpha=8), base.device)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
        policy.value_head.weight.normal_(0, 0.1)
    prompts = [[5, 6, 7], [9], [11, 12, 13, 14], [20, 21]] * 2
    seeds = list(range(len(prompts)))
    drawn = sampling.sample_rollouts(policy, base, prompts, seeds, 10, 0.8, policy.value_head)
    replies, ended = sampling.sample(policy, base, prompts, [TRAINABLE] * 8, seeds, 10, 0.8)
    assert (drawn.replies, drawn.ended) == (replies, ended)
    assert any(ended) and not all(ended)
    batch = sampling.batch(base, prompts, drawn.replies)
    with torch.no_grad():
        old = forward_batch(policy.peft, batch, 0.8, policy.value_head)
    mask = batch.response_mask.bool()
    assert drawn.logprobs.shape == old.logprobs.shape
    assert torch.allclose(drawn.logprobs[mask], old.logprobs[mask], atol=1e-4)
    assert torch.allclose(drawn.values[mask], old.values[mask], atol=1e-4)
    assert (drawn.logprobs[~mask] == 0).all() and (drawn.values[~mask] == 0).all()


def test_the_folded_adapter_computes_what_peft_computes_and_is_unfolded_after(
    policy: TrainablePolicy,
) -> None:
    """Rollouts decode with the LoRA folded into copies of the base weights
    (`TrainablePolicy.merged`): the same function in fp32, and afterwards the very same weight
    tensors are back, even when decoding failed."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    weights = {n: p for n, p in policy.peft.named_parameters() if not p.requires_grad}
    batch = make_batch([[5, 6, 7], [9]], [[10, 11], [12, 13, 2]], 0, torch.device("cpu"))
    with torch.no_grad():
        unfolded = forward_batch(policy.peft, batch, 1.0).logprobs
        with policy.merged():
            folded = forward_batch(policy.peft, batch, 1.0).logprobs
        with policy.base_only():
            bare = forward_batch(policy.peft, batch, 1.0).logprobs
    assert torch.allclose(folded, unfolded, atol=1e-5)
    assert not torch.allclose(bare, unfolded, atol=1e-3)  # the adapter does change the output
    with pytest.raises(RuntimeError), policy.merged():
        raise RuntimeError("a decoding step failed")
    after = dict(policy.peft.named_parameters())
    assert all(after[n] is p for n, p in weights.items())
