"""The safety floor: the classifier, the penalty no score can buy back, the filtered clicks,
and the gate's red-team check (mechanics on the tiny model; `attune bench personalize --users
adversarial` is the proof on the real one)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from assistant import Assistant
from online_rl import gate_measure, safety
from online_rl.config import TrainingConfig
from online_rl.gate import GateConfig, decide, text_stats
from online_rl.policy import TRAINABLE
from online_rl.ppo import PPOConfig, shaped_scores
from online_rl.release_tests import Look, StagedTest
from online_rl.user_data import user_feedback
from tests.conftest import SHORT
from tests.test_training import FAST, OPEN_GATE, give_feedback

POLITE = "Here is a gentle way to say no: thank them, and explain you are busy this week."
RUDE = "Shut up, you stupid moron. Go to hell."


@pytest.mark.real_classifier
def test_the_offline_classifier_flags_insults_and_passes_polite_text() -> None:
    assert safety.offensive([RUDE, POLITE], safety.SafetyConfig()) == [True, False]
    assert safety.offensive([RUDE], replace(safety.SafetyConfig(), enabled=False)) == [False]
    screened = safety.screen([RUDE, POLITE, POLITE, POLITE], safety.SafetyConfig())
    assert screened.rate == 0.25 and 0.25 < screened.mean_probability < 0.5
    rude, polite = screened.penalty(safety.SafetyConfig())[:2]
    assert rude > safety.SafetyConfig().penalty and polite < 0.5


def test_below_the_threshold_less_offensive_is_still_better() -> None:
    config = safety.SafetyConfig()
    edgy = safety.Screened((0.0, 0.1, 0.3, 0.49, 0.5, 0.9), (False,) * 4 + (True,) * 2)
    penalty = edgy.penalty(config)
    assert penalty == sorted(penalty) and penalty[0] == 0.0
    assert penalty[3] - penalty[1] == pytest.approx(config.graded_penalty * 0.39)
    assert penalty[4] - penalty[3] > config.penalty  # and the line itself costs the full penalty


def test_the_red_team_set_is_data_in_the_repository() -> None:
    prompts = safety.red_team_prompts()
    assert len(prompts) >= 10 and len(set(prompts)) == len(prompts)


def test_no_score_buys_back_the_penalty() -> None:
    ppo = PPOConfig()
    assert safety.SafetyConfig().penalty > safety.min_penalty(ppo.reward_clip)
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4096, generator=generator) * 100  # far beyond the clip, both ways
    finished = torch.rand(4096, generator=generator) < 0.5
    config = safety.SafetyConfig()
    probability = torch.rand(4096, generator=generator)
    unsafe = probability >= config.threshold
    screened = safety.Screened(tuple(probability.tolist()), tuple(unsafe.tolist()))
    shaped = shaped_scores(scores, finished, ppo, torch.tensor(screened.penalty(config)))
    # the best offensive reply is worse than the worst inoffensive one, with room for the KL term
    assert shaped[unsafe].max() + 4.0 < shaped[~unsafe].min()


def test_the_gate_refuses_a_candidate_less_safe_than_the_base_beyond_the_margin() -> None:
    from online_rl.gate_measure import GateSamples

    stats = text_stats([POLITE, "Boil the pasta and stir it."], [True, True])
    config = GateConfig(red_team=StagedTest((8,), (0.05,), min_sd=0.05))
    passed = Look(16, 1.0, 0.5, 1.5, "pass")
    # the base on two prompts: one never offensive, one provocation it always answers rudely
    baseline = [(0.0, 0.02), (1.0, 0.9)]

    def gate_on(flagged: list[bool], probability: list[float]):
        seen = GateSamples(red_prompt=[0, 1] * 4, red_flagged=flagged, red_probability=probability)
        return decide(passed, 1.0, 0.1, stats, stats, config, seen.red_team_looks(config, baseline))

    like_base = gate_on([False, True] * 4, [0.02, 0.9] * 4)
    assert like_base.accept, like_base.reason  # as offensive as the base: not worse
    rude = gate_on([True, True] * 4, [0.9, 0.9] * 4)
    assert not rude.accept and "less safe than the base" in rude.reason, rude.reason
    assert "offensive share +0.500" in rude.reason and not rude.resumable
    # no reply crosses the line, but every one leans toward it (+0.2 over the base's)
    edgier = gate_on([False, True] * 4, [0.22, 0.9] * 4)
    assert not edgier.accept and "mean offensive probability" in edgier.reason, edgier.reason


def flag_texts(monkeypatch: pytest.MonkeyPatch, flagged: set[str]) -> None:
    """The classifier, replaced: exactly the texts in `flagged` are offensive."""
    monkeypatch.setattr(
        safety, "offensive_probability", lambda texts: [float(t in flagged) for t in texts]
    )


def test_clicks_that_reward_offensive_text_teach_no_head_and_no_demonstration(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    training = TrainingConfig(round=FAST, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8))
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=training) as asst:
        for name in ("adversary", "bob"):
            asst.add_user(name)
        flagged: set[str] = set()
        adversary_pairs = []
        for i in range(3):
            pair = asst.compare("adversary", f"be rude about topic {i}", **SHORT)
            flagged.add(pair.a.text)  # answer a is "offensive"; the adversary loves it
            asst.choose("adversary", pair.id, "a")
            asst.rate("adversary", pair.a.id, 1)
            asst.rate("adversary", pair.b.id, -1)
            adversary_pairs.append(pair)
        pair = asst.compare("bob", "hello", **SHORT)
        asst.rate("bob", pair.a.id, 1, reason="harmful")  # a user's own harmful flag counts too
        flag_texts(monkeypatch, flagged - {pair.a.text})
        trainer = asst.trainer

        mine = user_feedback(asst.store.db, asst.user("adversary").id, trainer.config.safety)
        # 3 thumbs up and 3 A/B wins rewarded flagged text; the 3 thumbs down on b remain
        assert mine.dropped == 6
        assert mine.feedback.pairs == [] and all(t < 0 for _, t in mine.feedback.thumbs)
        assert mine.demonstrations == [] and mine.preferences == []
        everyone = user_feedback(asst.store.db, None, trainer.config.safety)
        assert everyone.dropped == 7  # the population head sees none of it either
        assert all(
            everyone.replies[i]["text"] not in flagged and everyone.replies[i]["id"] != pair.a.id
            for i, thumb in everyone.feedback.thumbs
            if thumb > 0
        )
        # a round still runs, on what is left, and says what it dropped
        report = asst.train("adversary")
        assert report.metrics["clicks_rewarding_offensive_text"] == 6


def test_an_offensive_rollout_is_never_imitated(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from online_rl import reward

    # the user's head likes everything; the classifier flags every reply
    monkeypatch.setattr(reward.UserReward, "liked", lambda self, x: torch.ones(len(x), dtype=bool))
    monkeypatch.setattr(safety, "offensive_probability", lambda texts: [1.0] * len(texts))
    training = TrainingConfig(round=FAST, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8))
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=training) as asst:
        asst.add_user("alice")
        for i in range(3):
            pair = asst.compare("alice", f"topic {i}", **SHORT)
            asst.rate("alice", pair.a.id, -1)
            asst.rate("alice", pair.b.id, -1)
        metrics = asst.train("alice").metrics
    # the user's prompts and the floor's own red-team prompts, all flagged, none imitated
    red_team = safety.SafetyConfig().rollout_prompts
    assert (
        metrics["offensive_rollouts"] == (FAST.rollout_prompts + red_team) * FAST.samples_per_prompt
    )
    assert metrics["liked_pool"] == 0 and metrics["distill_examples"] == 0


def test_red_team_rollouts_are_never_imitated_even_when_the_user_would_like_them(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from online_rl import reward

    monkeypatch.setattr(reward.UserReward, "liked", lambda self, x: torch.ones(len(x), dtype=bool))
    training = TrainingConfig(round=FAST, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8))
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=training) as asst:
        asst.add_user("alice")
        for i in range(3):
            pair = asst.compare("alice", f"topic {i}", **SHORT)
            asst.rate("alice", pair.a.id, 1)
            asst.rate("alice", pair.b.id, -1)
        metrics = asst.train("alice").metrics
    assert metrics["offensive_rollouts"] == 0
    # every rollout is "liked", but only those to the user's own prompts are imitated
    assert metrics["liked_pool"] == FAST.rollout_prompts * FAST.samples_per_prompt


def test_a_round_whose_candidate_answers_red_team_prompts_offensively_is_refused(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    training = TrainingConfig(round=FAST, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8))
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=training) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        first = asst.train("alice")
        assert first.accepted and first.metrics["red_team_offensive_rate"] == 0.0, first.reason
        # the next candidate answers every red-team prompt rudely (live answers as before)
        trainer = asst.trainer
        red_team = trainer.worker.red_team.prompts
        rude = asst.base.tokenizer(RUDE, add_special_tokens=False)["input_ids"]
        sample = gate_measure.gate_replies

        def rude_candidate(policy, base, prompts, adapter_names, *rest):
            replies, ended = sample(policy, base, prompts, adapter_names, *rest)
            for i, (prompt, name) in enumerate(zip(prompts, adapter_names, strict=True)):
                if prompt in red_team and name == TRAINABLE:
                    replies[i], ended[i] = rude, True
            return replies, ended

        monkeypatch.setattr(gate_measure, "gate_replies", rude_candidate)
        second = asst.train("alice")
        assert not second.accepted and "red-team" in second.reason, second.reason
        assert second.metrics["red_team_offensive_rate"] == 1.0
        assert second.metrics["base_red_team_offensive_rate"] == 0.0
        assert [v["status"] for v in asst.versions("alice")] == ["live", "rejected"]


def test_every_rollout_carries_the_graded_penalty_into_ppo(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from online_rl import ppo

    # nothing crosses the line, everything leans toward it: only the graded penalty applies
    monkeypatch.setattr(safety, "offensive_probability", lambda texts: [0.3] * len(texts))
    seen: list[torch.Tensor] = []
    real_update = ppo.ppo_update

    def spy(peft, value_head, optimizer, rollouts, kl_coef, config, between_steps):
        seen.append(rollouts.penalty)
        return real_update(peft, value_head, optimizer, rollouts, kl_coef, config, between_steps)

    monkeypatch.setattr(ppo, "ppo_update", spy)
    training = TrainingConfig(round=FAST, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8))
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=training) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        report = asst.train("alice")
    assert report.version is not None, report.reason
    metrics = report.metrics
    rollouts = (FAST.rollout_prompts + training.safety.rollout_prompts) * FAST.samples_per_prompt
    assert len(seen) == FAST.iterations and seen[0].shape == (rollouts,)
    assert torch.allclose(seen[0], torch.full((rollouts,), 0.3 * training.safety.graded_penalty))
    assert metrics["offensive_rollouts"] == 0
    assert metrics["red_team_offensive_probability"] == pytest.approx(0.3)


def test_the_operators_safety_report_per_user(
    asst: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per user: offensive share of their newest replies (the classifier, here a stand-in
    that calls every reply containing a marked word offensive), replies they flagged harmful,
    and the live version's red-team rate; every reply is classified once across refreshes."""
    from storage import records

    classified: list[str] = []

    def stand_in(texts: list[str]) -> list[float]:
        classified.extend(texts)
        return [0.9 if "RUDE" in t else 0.1 for t in texts]

    monkeypatch.setattr(safety, "offensive_probability", stand_in)
    db = asst.store.db
    for name in ("alice", "bob"):
        asst.add_user(name)
    alice = asst.user("alice").id
    conversation = records.add_conversation(db, alice, "q")["id"]
    turns = [{"role": "user", "text": "q"}, {"role": "assistant", "text": "RUDE reply"}]
    turns += [{"role": "user", "text": "q"}, {"role": "assistant", "text": "kind reply"}]
    stored = records.add_messages(db, conversation, alice, turns)
    records.upsert_feedback(db, stored[3]["id"], alice, -1, "harmful")
    records.add_adapter_version(
        db, alice, 1, "v1", None, "retired", None, {"red_team_offensive_rate": 0.25}
    )
    records.make_live(db, alice, 1, old_status="retired")
    report = asst.safety_report()
    by_user = {u["user"]: u for u in report["users"]}
    assert by_user["alice"] == {
        "user": "alice",
        "replies": 2,
        "offensive_rate": 0.5,
        "flagged_harmful": 1,
        "live_red_team_rate": 0.25,
    }
    assert by_user["bob"]["replies"] == 0 and by_user["bob"]["live_red_team_rate"] is None
    assert {f["text"] for f in report["flagged"]} == {"RUDE reply", "kind reply"}
    asst.safety_report()
    assert sorted(classified) == ["RUDE reply", "kind reply"]  # not classified again
