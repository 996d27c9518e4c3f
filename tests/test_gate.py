"""The gate's checks on hand-made replies: each failure names itself, a good candidate passes."""

from __future__ import annotations

from online_rl.gate import GateConfig, decide, repetition, sameness, text_stats
from online_rl.release_tests import Look

VARIED = [
    "Water the plant once a week and keep it near a bright window.",
    "Start with a short walk every morning, then add a few stretches.",
    "Write down three things you did well today before you sleep.",
    "Boil the pasta in salted water and stir it now and then.",
]
STOCK = ["A wonderful adventure!"] * 6 + ["A wonderful idea, a wise AI!", "A wise question!"]


def test_sameness_is_low_for_varied_replies_and_high_for_one_stock_reply() -> None:
    assert sameness(VARIED) < 0.1
    assert sameness(STOCK) > 0.5
    assert sameness([]) == 0.0


def test_repetition_sees_a_reply_that_loops() -> None:
    assert repetition("aber " * 30) > 0.9
    assert repetition(VARIED[0]) == 0.0


def gain_look(gain: float) -> Look:
    """The improvement test's look at a paired gain: shown (lower bound above 0) when the gain
    is 0.2 or more, over 16 pairs with a bound 0.1 either side."""
    return Look(16, gain, gain - 0.1, gain + 0.1, "pass" if gain - 0.1 > 0 else "fail")


def check(candidate: list[str], kl: float = 5.0, kl_per_token: float = 0.1, gain: float = 0.2):
    ended = [True] * len(candidate)
    return decide(
        gain_look(gain),
        kl,
        kl_per_token,
        text_stats(candidate, ended),
        text_stats(VARIED, ended),
        GateConfig(),
    )


def test_a_varied_candidate_with_a_reward_gain_passes() -> None:
    decision = check(VARIED)
    assert decision.accept, decision.reason


def test_one_stock_reply_for_every_prompt_is_rejected_as_degenerate() -> None:
    decision = check(STOCK)
    assert not decision.accept and "sameness" in decision.reason


def test_few_tokens_far_from_the_base_are_rejected_though_the_total_kl_is_small() -> None:
    decision = check(VARIED, kl=8.0, kl_per_token=2.0)
    assert not decision.accept and "per token" in decision.reason


def test_the_total_kl_budget_and_the_reward_gain_are_checked() -> None:
    assert "budget" in check(VARIED, kl=100.0).reason
    decision = check(VARIED, gain=0.05)
    assert not decision.accept and "not shown better than live" in decision.reason
    assert "lower bound -0.050" in decision.reason and "16 pairs" in decision.reason
    assert decision.resumable  # only "no gain" lets the next round go on from it
    assert not check(VARIED, kl=100.0).resumable and not check(STOCK).resumable


def test_cut_off_replies_are_judged_against_live_not_against_a_fixed_share() -> None:
    def truncated(candidate_cut: int, live_cut: int) -> bool:
        n = 10
        candidate = text_stats(VARIED[:2] * 5, [i >= candidate_cut for i in range(n)])
        live = text_stats(VARIED[:2] * 5, [i >= live_cut for i in range(n)])
        decision = decide(gain_look(0.2), 5.0, 0.1, candidate, live, GateConfig())
        return "cut at the token limit" in decision.reason

    assert not truncated(10, 9)  # all cut where live cuts 9 of 10: noise, not degeneracy
    assert truncated(10, 5)  # all cut where live ends half: worse than live + slack
