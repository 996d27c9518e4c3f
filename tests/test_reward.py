"""Reward heads: they learn a hidden preference from clicks, stay modest on few clicks,
handle ties and "both bad", and read features from the base with adapters off."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from online_rl.features import LAST_TOKEN, FeatureSpec
from online_rl.policy import forward_batch, make_batch
from online_rl.reward import (
    Feedback,
    RewardConfig,
    RewardHead,
    features,
    feedback_loss,
    fit_head,
    fit_population,
    fit_user,
    pairwise_accuracy,
)

DIM = 32


def simulated_user(direction: torch.Tensor, n: int, seed: int, noise: float = 0.0):
    """Replies as random features; the user likes those along `direction`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, DIM, generator=gen) * 3 + 5  # off-centre, unscaled, like hidden states
    truth = (x - 5) @ direction
    rng = random.Random(seed)
    fb = Feedback()
    for i in range(0, n, 2):
        a, b = i, i + 1
        winner = "a" if truth[a] > truth[b] else "b"
        if rng.random() < noise:
            winner = "b" if winner == "a" else "a"
        fb.pairs.append((a, b, winner))
    for i in range(n, 2 * n):
        fb.thumbs.append((i, 1 if truth[i] > 0 else -1))
    return x, fb


def test_a_user_preference_is_learned_and_beats_the_population() -> None:
    gen = torch.Generator().manual_seed(0)
    everyone = torch.randn(DIM, generator=gen)
    mine = torch.randn(DIM, generator=gen)
    config = RewardConfig()
    x_pop, fb_pop = simulated_user(everyone, 200, seed=1)
    standardizer, population = fit_population(x_pop, fb_pop, config)
    x, fb = simulated_user(mine, 160, seed=2)
    reward, metrics = fit_user(standardizer, population, x, fb, config)
    assert metrics["reward_loss_last"] < metrics["reward_loss_first"]
    assert metrics["heldout_accuracy"] > 0.8
    assert metrics["heldout_accuracy"] > metrics["population_heldout_accuracy"] + 0.1
    assert metrics["n_pairs"] == 80 and metrics["n_thumbs"] == 160


def test_noisy_clicks_still_learn() -> None:
    direction = torch.randn(DIM, generator=torch.Generator().manual_seed(3))
    config = RewardConfig()
    x, fb = simulated_user(direction, 160, seed=4, noise=0.2)
    standardizer, population = fit_population(x, Feedback(), config)
    _, metrics = fit_user(standardizer, population, x, fb, config)
    assert metrics["heldout_accuracy"] > 0.7


def test_user_head_starts_at_zero_and_stays_small_on_few_clicks() -> None:
    head = RewardHead(DIM)
    assert torch.equal(head(torch.randn(5, DIM)), torch.zeros(5))
    direction = torch.randn(DIM, generator=torch.Generator().manual_seed(5))
    x, fb = simulated_user(direction, 6, seed=6)
    few = Feedback(fb.pairs[:1], fb.thumbs[:2])
    norms = {}
    for l2 in (1e-2, 10.0):
        config = RewardConfig(user_l2=l2, holdout_fraction=0.0)
        standardizer, population = fit_population(x, Feedback(), config)
        reward, _ = fit_user(standardizer, population, x, few, config)
        norms[l2] = reward.user.net.weight.norm().item()
    assert 0 < norms[10.0] < norms[1e-2] / 2


def test_tie_pulls_scores_together_and_both_bad_pushes_both_down() -> None:
    scores = torch.tensor([2.0, -2.0, 0.5, 0.4], requires_grad=True)
    threshold = torch.zeros(())
    config = RewardConfig(center=0.0)
    feedback_loss(scores, threshold, Feedback(pairs=[(0, 1, "tie")]), config).backward()
    assert scores.grad[0] > 0 and scores.grad[1] < 0  # descent lowers 0, raises 1
    scores.grad = None
    feedback_loss(scores, threshold, Feedback(pairs=[(2, 3, "both_bad")]), config).backward()
    assert scores.grad[2] > 0 and scores.grad[3] > 0  # descent lowers both


def test_pairwise_accuracy_counts_pairs_and_thumb_orderings() -> None:
    scores = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5])
    fb = Feedback(pairs=[(0, 1, "a"), (0, 1, "b"), (0, 1, "tie")], thumbs=[(2, 1), (4, 1), (3, -1)])
    # pairs: 1 of 2 right; thumbs: (2>3) and (4>3) right -> 3 of 4
    assert pairwise_accuracy(scores, fb) == pytest.approx(0.75)
    assert pairwise_accuracy(scores, Feedback(thumbs=[(2, 1)])) is None


def test_features_ignore_adapters(tiny_model_dir: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    examples = [([5, 6], [7, 8]), ([9], [10]), ([11, 12], [13])]
    plain = features(base, examples, 2, torch.device("cpu"), LAST_TOKEN)
    assert plain.shape == (3, base.config.hidden_size)
    single = features(base, [examples[1]], 2, torch.device("cpu"), LAST_TOKEN)
    assert torch.allclose(single[0], plain[1], atol=1e-5)  # padding does not change a row
    torch.manual_seed(0)
    peft = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with_adapter = features(peft, examples, 2, torch.device("cpu"), LAST_TOKEN)
    assert not torch.allclose(with_adapter, plain, atol=1e-4)
    base_only = features(
        peft, examples, 2, torch.device("cpu"), LAST_TOKEN, base_only=peft.disable_adapter()
    )
    assert torch.allclose(base_only, plain, atol=1e-5)


@pytest.mark.parametrize(
    "spec",
    [
        LAST_TOKEN,
        FeatureSpec(parts=(("mean", 1), ("last", -1)), lexical_dim=32, lexical_scale=0.5),
    ],
    ids=["last-token", "mean-two-layers-lexical"],
)
def test_stored_replies_and_rollouts_get_the_same_features(
    tiny_model_dir: Path, spec: FeatureSpec
) -> None:
    """Fitting reads stored replies through `features`, rollouts and the gate through
    `forward_batch`: one pooling function, so the head scores what it was fitted on, however
    the rows are padded together."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    examples = [([5, 6, 7], [8, 9]), ([9], [10, 11, 12, 2]), ([11, 12], [13])]
    stored = features(model, examples, 2, torch.device("cpu"), spec, batch_size=2)
    batch = make_batch([p for p, _ in examples], [r for _, r in examples], 2, torch.device("cpu"))
    with torch.no_grad():
        rollout = forward_batch(model, batch, 1.0, feature_spec=spec).features
    width = model.config.hidden_size * len(spec.parts) + spec.lexical_dim
    assert stored.shape == rollout.shape == (3, width)
    assert torch.allclose(stored, rollout, atol=1e-5)
    if spec.lexical_dim:
        lex = stored[:, -spec.lexical_dim :]
        assert (lex >= 0).all()
        assert (lex[1] > 0).sum() > (lex[2] > 0).sum()  # four tokens: more n-grams than one
        counts = features(model, [([5], [8, 8, 8])], 2, torch.device("cpu"), spec)
        assert counts[0, -spec.lexical_dim :].max() > lex[2].max()  # a repeated token counts


def test_stored_vectors_from_before_kinds_are_last_token_vectors() -> None:
    from storage.db import FIRST_FEATURE_KIND

    assert LAST_TOKEN.key == FIRST_FEATURE_KIND


def test_cross_fitted_threshold_calls_unseen_liked_replies_liked() -> None:
    """A rare taste, a few liked replies: the fitted threshold sits just under the training
    likes and misses most unseen ones; the cross-fitted one moves down and finds them."""
    from online_rl.reward import cross_fitted_threshold

    gen = torch.Generator().manual_seed(0)
    dim = 200  # more dimensions than clicks: separable, as a user's features always are
    x = torch.randn(60, dim, generator=gen)
    fresh = torch.randn(4000, dim, generator=gen)
    liked = x[:, 0] > 1.0
    thumbs = [(i, 1 if liked[i] else -1) for i in range(len(x))]
    feedback = Feedback(thumbs=thumbs)
    config = RewardConfig(balance_thumbs=True, threshold_folds=4)
    head, _ = fit_head(x, feedback, config, 1.0)
    offset = cross_fitted_threshold(x, feedback, config, 1.0)
    assert offset is not None and offset < 0

    def balanced(threshold: float) -> float:
        truth, scores = fresh[:, 0] > 1.0, head(fresh).detach()
        said = scores > threshold
        return (said[truth].float().mean() + (~said[~truth]).float().mean()).item() / 2

    assert balanced(head.threshold.item() + offset) > balanced(head.threshold.item()) + 0.05
    # one label only: nothing to place a threshold between
    all_down = Feedback(thumbs=[(i, -1) for i in range(len(x))])
    assert cross_fitted_threshold(x, all_down, config, 1.0) is None
