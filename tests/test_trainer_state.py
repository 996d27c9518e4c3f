"""What the trainer keeps between rounds: the liked pool and the base's red-team baseline
survive a restart (SQLite), the rest is bounded, and a deleted user is forgotten everywhere,
even while their round runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from assistant import Assistant
from online_rl.config import TrainingConfig
from online_rl.gate import GateConfig
from online_rl.ppo import PPOConfig
from storage import records
from storage.db import Store
from tests.test_training import FAST, OPEN_GATE, give_feedback

POOLING = replace(FAST, ranked_preference_steps=1, ranked_pair_margin=0.0)
ROLLOUTS = FAST.rollout_prompts * FAST.samples_per_prompt


def training(gate: GateConfig = OPEN_GATE) -> TrainingConfig:
    return TrainingConfig(round=POOLING, gate=gate, ppo=PPOConfig(max_new_tokens=8))


def reopen(tmp_path: Path, tiny_model_dir: Path, config: TrainingConfig) -> Assistant:
    return Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=config)


@pytest.fixture
def everything_liked(monkeypatch: pytest.MonkeyPatch) -> None:
    from online_rl import reward

    monkeypatch.setattr(reward.UserReward, "liked", lambda self, x: torch.full((len(x),), True))


def user_rows(asst: Assistant, user_id: str) -> dict[str, int]:
    db = asst.store.db
    return {
        t: db.execute(f"select count(*) from {t} where user_id = ?", [user_id]).fetchone()[0]
        for t in db.table_names()
        if "user_id" in db[t].columns_dict
    }


def test_liked_samples_rows_keep_the_newest_per_user_and_model(tmp_path: Path) -> None:
    db = Store(tmp_path / "a.db").db
    alice = records.add_user(db, "alice", None, "user")["id"]
    vector = torch.arange(3, dtype=torch.float32).numpy().tobytes()
    records.add_liked_samples(db, alice, "m1", "k", [([1, 2], [3, i], vector) for i in range(5)])
    records.add_liked_samples(db, alice, "m2", "k", [([9], [9], vector)])
    newest = records.list_liked_samples(db, alice, "m1", 3)
    assert [r["reply"] for r in newest] == [[3, 2], [3, 3], [3, 4]]  # oldest of the three first
    assert newest[0]["prompt"] == [1, 2] and newest[0]["vector"] == vector
    assert records.liked_sample_count(db, alice, "m2") == 1
    records.trim_liked_samples(db, alice, 2)  # the newest two of the user, whatever the model
    assert [r["reply"] for r in records.list_liked_samples(db, alice, "m1", 9)] == [[3, 4]]
    assert records.liked_sample_count(db, alice, "m2") == 1


def test_the_liked_pool_survives_a_restart(
    tmp_path: Path, tiny_model_dir: Path, everything_liked: None
) -> None:
    with reopen(tmp_path, tiny_model_dir, training()) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        first = asst.train("alice").metrics
    with reopen(tmp_path, tiny_model_dir, training()) as asst:
        second = asst.train("alice").metrics
        alice = asst.user("alice").id
        assert records.liked_sample_count(asst.store.db, alice, asst.base.source) == 2 * ROLLOUTS
    assert first["liked_pool"] == ROLLOUTS and second["liked_pool"] == 2 * ROLLOUTS
    # the second round imitates its fresh samples and, from the pool, the first round's
    assert second["distill_examples"] == min(FAST.sft_batch, 2 * ROLLOUTS)


def test_the_liked_pool_keeps_the_newest(
    tmp_path: Path, tiny_model_dir: Path, everything_liked: None
) -> None:
    config = replace(training(), round=replace(POOLING, liked_pool=ROLLOUTS + 1))
    with reopen(tmp_path, tiny_model_dir, config) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        asst.train("alice")
        assert asst.train("alice").metrics["liked_pool"] == ROLLOUTS + 1
        assert user_rows(asst, asst.user("alice").id)["liked_samples"] == ROLLOUTS + 1


def test_a_new_feature_kind_is_computed_for_existing_replies_and_the_old_kept(
    tmp_path: Path, tiny_model_dir: Path, everything_liked: None
) -> None:
    """Changing what the heads read (`RewardConfig.features`) loses nothing: each clicked reply
    gets a vector of the new kind on the next round, the old vectors stay, and the liked pool's
    samples are re-featured."""
    from online_rl.features import LAST_TOKEN, FeatureSpec
    from online_rl.reward import RewardConfig

    first = replace(training(), reward=RewardConfig(features=LAST_TOKEN))
    with reopen(tmp_path, tiny_model_dir, first) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        asst.train("alice")
        alice = asst.user("alice").id
    kinds = FeatureSpec((("mean", 1), ("last", -1)), lexical_dim=16)
    config = replace(training(), reward=RewardConfig(features=kinds))
    with reopen(tmp_path, tiny_model_dir, config) as asst:
        db = asst.store.db

        def vectors(kind: str) -> int:
            q = "select count(*) from features where user_id = ? and kind = ?"
            return db.execute(q, [alice, kind]).fetchone()[0]

        dtype = asst.base.training_dtype
        old, new = LAST_TOKEN.stored_kind(dtype), kinds.stored_kind(dtype)
        before = vectors(old)
        assert before > 0 and vectors(new) == 0
        asst.train("alice")
        assert vectors(old) == before and vectors(new) >= before
        pool_kinds = {r[0] for r in db.execute("select kind from liked_samples")}
        assert pool_kinds == {new}


def test_a_change_of_training_precision_recomputes_features_and_keeps_the_old(
    tmp_path: Path, tiny_model_dir: Path, everything_liked: None
) -> None:
    """Features read in bf16 are filed apart from fp32's (`FeatureSpec.stored_kind`): after a
    change of precision each clicked reply gets a vector of the new kind, the old stay, and
    the liked pool is re-featured; a head never mixes the two."""
    config = training()
    spec = config.reward.features

    def opened(precision: str) -> Assistant:
        return Assistant.open(
            tmp_path / "d", model=str(tiny_model_dir), training=config, training_precision=precision
        )

    with opened("fp32") as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        asst.train("alice")
        alice = asst.user("alice").id
    with opened("bf16") as asst:
        db = asst.store.db

        def vectors(kind: str) -> int:
            q = "select count(*) from features where user_id = ? and kind = ?"
            return db.execute(q, [alice, kind]).fetchone()[0]

        fp32, bf16 = spec.stored_kind(torch.float32), spec.stored_kind(torch.bfloat16)
        assert fp32 == spec.key and bf16 != fp32
        before = vectors(fp32)
        assert before > 0 and vectors(bf16) == 0
        assert asst.train("alice").accepted
        assert vectors(fp32) == before and vectors(bf16) >= before
        assert {r[0] for r in db.execute("select kind from liked_samples")} == {bf16}


def base_only_calls(asst: Assistant, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the trainer's sampling: the sizes of the calls that sample only the base on the
    red-team prompts (the baseline; not the base's replies an adopted version is described
    against, which are the round's held-out questions)."""
    from online_rl import sampling
    from online_rl.policy import BASE, TRAINABLE

    sample = sampling.sample
    calls: list[int] = []
    red_team_length = asst.trainer.config.gate.red_team_max_new_tokens

    def spy(policy, base, prompts, adapter_names, seeds, max_new_tokens, *rest):
        only_base = BASE in adapter_names and TRAINABLE not in adapter_names
        if only_base and max_new_tokens == red_team_length:
            calls.append(len(prompts))
        return sample(policy, base, prompts, adapter_names, seeds, max_new_tokens, *rest)

    monkeypatch.setattr(sampling, "sample", spy)
    return calls


def test_the_base_red_team_baseline_is_not_resampled_after_a_restart(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with reopen(tmp_path, tiny_model_dir, training()) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        calls = base_only_calls(asst, monkeypatch)
        asst.train("alice")
        red_team = len(asst.trainer.worker.red_team.prompts)
        assert sum(calls) == red_team * OPEN_GATE.base_red_team_seeds
    with reopen(tmp_path, tiny_model_dir, training()) as asst:
        calls = base_only_calls(asst, monkeypatch)
        asst.train("alice")
        assert calls == []
    # what the baseline depends on changed: it is sampled again
    more_seeds = training(replace(OPEN_GATE, base_red_team_seeds=3))
    with reopen(tmp_path, tiny_model_dir, more_seeds) as asst:
        calls = base_only_calls(asst, monkeypatch)
        asst.train("alice")
        assert sum(calls) == red_team * 3


def test_delete_user_forgets_the_pool_and_the_trainers_memory(
    tmp_path: Path, tiny_model_dir: Path, everything_liked: None
) -> None:
    with reopen(tmp_path, tiny_model_dir, training()) as asst:
        alice = asst.add_user("alice").id
        asst.add_user("bob")
        give_feedback(asst, "alice")
        give_feedback(asst, "bob")
        asst.train("alice")
        asst.train("bob")
        bob = asst.user("bob").id
        trainer = asst.trainer
        assert user_rows(asst, alice)["liked_samples"] == ROLLOUTS
        assert any(owner == alice for owner, _ in trainer.worker.references)
        asst.delete_user("alice")
        assert not any(user_rows(asst, alice).values())
        assert not any(owner == alice for owner, _ in trainer.worker.references)
        assert user_rows(asst, bob)["liked_samples"] == ROLLOUTS
        assert any(owner == bob for owner, _ in trainer.worker.references)


def test_delete_user_makes_no_trainer(tmp_path: Path, tiny_model_dir: Path) -> None:
    with reopen(tmp_path, tiny_model_dir, training()) as asst:
        asst.add_user("alice")
        asst.delete_user("alice")
        assert asst._trainer is None


def test_the_reference_log_probs_in_memory_are_bounded(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from online_rl import round_worker

    monkeypatch.setattr(round_worker, "REFERENCE_LOGPROBS_KEPT", 3)
    with reopen(tmp_path, tiny_model_dir, training()) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")  # three A/B pairs: six replies
        report = asst.train("alice")
        assert report.metrics["preference_loss_first"] is not None
        assert len(asst.trainer.worker.references) == 3


@pytest.mark.parametrize("when", ["pooling", "gate"])
def test_a_user_deleted_during_their_round_leaves_nothing_behind(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    everything_liked: None,
    when: str,
) -> None:
    from online_rl import gate, reward

    with reopen(tmp_path, tiny_model_dir, training()) as asst:
        alice = asst.add_user("alice").id
        give_feedback(asst, "alice")

        def delete_then(function):
            def wrapped(*args, **kwargs):
                if records.get_user(asst.store.db, "alice") is not None:
                    asst.delete_user("alice")
                return function(*args, **kwargs)

            return wrapped

        if when == "pooling":  # section 3, before the round adds to the user's liked pool
            monkeypatch.setattr(reward.UserReward, "liked", delete_then(reward.UserReward.liked))
        else:  # section 4, after the round sampled and before it writes its candidate
            monkeypatch.setattr(gate, "decide", delete_then(gate.decide))
        report = asst.train("alice")
        assert not report.accepted and report.version is None
        assert report.reason == "abandoned: the user was deleted while the round ran"
        assert not (asst.config.adapters_dir / alice).exists()
        assert not any(user_rows(asst, alice).values())
        assert not any(owner == alice for owner, _ in asst.trainer.worker.references)
