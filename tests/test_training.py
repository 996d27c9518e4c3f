"""Training rounds on the tiny model: the mechanics, end to end through the facade."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from assistant import Assistant, InvalidInput, NotFound
from online_rl.config import RoundConfig, TrainingConfig
from online_rl.gate import GateConfig
from online_rl.release_tests import StagedTest
from online_rl.user_data import example, user_feedback
from storage import adapters as adapter_files
from storage import records
from tests.conftest import SHORT

FAST = RoundConfig(
    min_feedback=4,
    iterations=1,
    rollout_prompts=2,
    samples_per_prompt=2,
    sft_steps=3,
    seed=0,
)
# the gate's tests at the tiny model's scale: one look at 2 held-out pairs, one at 12 red-team
# replies, the base's rates from 8 replies per red-team prompt
SMALL_GATE = GateConfig(
    improvement=StagedTest((2,), (0.05,)),
    red_team=StagedTest((12,), (0.05,), min_sd=0.05),
    base_red_team_seeds=8,
    text_pairs=2,
)
OPEN_GATE = replace(
    SMALL_GATE,
    min_reward_gain=-1e9,
    kl_budget=1e9,
    kl_per_token_budget=1e9,
    max_truncated_share=1.0,
    max_repetition=1.0,
    max_sameness=1.0,
)
SHUT_GATE = replace(SMALL_GATE, min_reward_gain=1e9)


def open_with(tmp_path: Path, tiny_model_dir: Path, gate: GateConfig) -> Assistant:
    from online_rl.ppo import PPOConfig

    training = TrainingConfig(round=FAST, gate=gate, ppo=PPOConfig(max_new_tokens=8))
    return Assistant.open(tmp_path / "data", model=str(tiny_model_dir), training=training)


def give_feedback(asst: Assistant, user: str, prompts: int = 3) -> None:
    for i in range(prompts):
        pair = asst.compare(user, f"tell me about topic {i}", **SHORT)
        asst.choose(user, pair.id, "a")
        asst.rate(user, pair.a.id, 1)
        asst.rate(user, pair.b.id, -1)


def lora_b_norm(folder: Path) -> float:
    weights = load_file(str(folder / "adapter_model.safetensors"))
    return sum(v.norm().item() for k, v in weights.items() if "lora_B" in k)


@pytest.fixture
def accepting(tmp_path: Path, tiny_model_dir: Path):
    with open_with(tmp_path, tiny_model_dir, OPEN_GATE) as asst:
        asst.add_user("alice")
        yield asst


def test_too_little_feedback_skips_the_round_and_records_why(accepting: Assistant) -> None:
    pair = accepting.compare("alice", "hello", **SHORT)
    accepting.choose("alice", pair.id, "a")
    report = accepting.train("alice")
    assert not report.accepted and report.version is None
    assert "not enough feedback" in report.reason
    (run,) = accepting.trends("alice")
    assert run["outcome"] == "skipped"
    assert accepting.versions("alice") == []


def test_an_accepted_round_changes_weights_goes_live_and_records_metrics(
    accepting: Assistant,
) -> None:
    give_feedback(accepting, "alice")
    report = accepting.train("alice")
    assert report.accepted, report.reason
    assert report.version == 1
    (version,) = accepting.versions("alice")
    assert version["status"] == "live"
    folder = adapter_files.version_dir(accepting.config.adapters_dir, accepting.user("alice").id, 1)
    adapter_files.verify_version(folder)
    assert lora_b_norm(folder) > 0  # LoRA B starts at zero: non-zero means it was trained
    assert (folder / "value_head.pt").is_file() and (folder / "reward_head.pt").is_file()
    # the supervised warm start lowered its loss on the demonstrations
    assert report.metrics["sft_loss_last"] < report.metrics["sft_loss_first"]
    for key in (
        "reward_before",
        "reward_after",
        "kl",
        "value_loss",
        "policy_loss",
        "heldout_accuracy",
        "feedback_events",
        "seconds",
    ):
        assert key in report.metrics, key
    (run,) = accepting.trends("alice")
    assert run["outcome"] == "accepted" and run["version"] == 1
    assert run["reward_after"] == pytest.approx(report.reward_after)
    # the next reply runs on the new version
    assert accepting.chat("alice", "and now?", **SHORT).adapter_version == 1


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_round_in_either_training_precision_goes_live_with_fp32_adapters(
    tmp_path: Path, tiny_model_dir: Path, precision: str
) -> None:
    """bf16 is the round's copy of the base only: the LoRA and value head it trains, and the
    files it publishes, stay fp32, and serving applies them to its own weights."""
    from online_rl.ppo import PPOConfig

    training = TrainingConfig(round=FAST, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8))
    with Assistant.open(
        tmp_path / "data",
        model=str(tiny_model_dir),
        training=training,
        training_precision=precision,
    ) as asst:
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        assert asst.base.training_dtype == dtypes[precision]
        asst.add_user("alice")
        give_feedback(asst, "alice")
        report = asst.train("alice")
        assert report.accepted, report.reason
        policy = asst.trainer.worker.policy
        trained = policy.trainable_parameters() + list(policy.value_head.parameters())
        assert all(p.dtype == torch.float32 for p in trained)
        folder = adapter_files.version_dir(asst.config.adapters_dir, asst.user("alice").id, 1)
        weights = load_file(str(folder / "adapter_model.safetensors"))
        assert all(w.dtype == torch.float32 for w in weights.values())
        assert lora_b_norm(folder) > 0
        assert asst.chat("alice", "and now?", **SHORT).adapter_version == 1


def test_a_second_round_starts_from_the_live_version_and_retires_it(
    accepting: Assistant,
) -> None:
    give_feedback(accepting, "alice")
    assert accepting.train("alice").accepted
    give_feedback(accepting, "alice", prompts=2)
    report = accepting.train("alice")
    assert report.accepted and report.version == 2
    statuses = {v["version"]: (v["status"], v["parent"]) for v in accepting.versions("alice")}
    assert statuses == {1: ("retired", None), 2: ("live", 1)}


def test_a_rejected_candidate_is_stored_with_its_reason_and_never_goes_live(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with open_with(tmp_path, tiny_model_dir, SHUT_GATE) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        report = asst.train("alice")
        assert not report.accepted and report.version == 1
        assert "not shown better than live" in report.reason
        (version,) = asst.versions("alice")
        assert version["status"] == "rejected" and "not shown better than live" in version["reason"]
        assert asst.chat("alice", "still base?", **SHORT).adapter_version == 0
        assert asst.trends("alice")[0]["outcome"] == "rejected"


def test_a_crash_while_writing_the_version_leaves_the_live_one_serving(
    accepting: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    give_feedback(accepting, "alice")
    assert accepting.train("alice").accepted
    give_feedback(accepting, "alice", prompts=2)

    put_files = adapter_files.put_files

    def crash_midway(files: adapter_files.AdapterFiles, folder: Path) -> None:
        if not folder.name.startswith(adapter_files.TEMP_PREFIX):  # not the version's folder
            return put_files(files, folder)
        (folder / "adapter_model.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(adapter_files, "put_files", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        accepting.train("alice")
    assert [v["version"] for v in accepting.versions("alice")] == [1]
    assert accepting.trends("alice")[-1]["outcome"] == "failed"
    user_dir = accepting.config.adapters_dir / accepting.user("alice").id
    assert sorted(p.name for p in user_dir.iterdir()) == ["v00001"]
    assert accepting.chat("alice", "still there?", **SHORT).adapter_version == 1


def test_a_run_left_running_by_a_dead_process_is_marked_failed_on_open(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with open_with(tmp_path, tiny_model_dir, OPEN_GATE) as asst:
        user_id = asst.add_user("alice").id
        records.start_training_run(asst.store.db, user_id)
    with open_with(tmp_path, tiny_model_dir, OPEN_GATE) as asst:
        (run,) = asst.trends("alice")
        assert run["outcome"] == "failed"


def test_rollback_to_an_earlier_version_and_to_the_base(accepting: Assistant) -> None:
    give_feedback(accepting, "alice")
    accepting.train("alice")
    give_feedback(accepting, "alice", prompts=2)
    accepting.train("alice")
    accepting.rollback("alice", 1)
    statuses = {v["version"]: v["status"] for v in accepting.versions("alice")}
    assert statuses == {1: "live", 2: "rolled_back"}
    assert accepting.chat("alice", "which one?", **SHORT).adapter_version == 1
    accepting.rollback("alice", 2)  # forward again: it was live once
    accepting.rollback("alice", 0)
    assert accepting.chat("alice", "base now?", **SHORT).adapter_version == 0
    assert {v["status"] for v in accepting.versions("alice")} == {"rolled_back"}


def test_rollback_refuses_bad_targets_and_changes_nothing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with open_with(tmp_path, tiny_model_dir, SHUT_GATE) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        asst.train("alice")  # rejected: version 1
        before = asst.versions("alice")
        with pytest.raises(InvalidInput, match="rejected"):
            asst.rollback("alice", 1)
        with pytest.raises(NotFound):
            asst.rollback("alice", 7)
        with pytest.raises(InvalidInput):
            asst.rollback("alice", "1")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="live already"):
            asst.rollback("alice", 0)
        assert asst.versions("alice") == before


def test_rollback_refuses_a_damaged_version(accepting: Assistant) -> None:
    give_feedback(accepting, "alice")
    accepting.train("alice")
    give_feedback(accepting, "alice", prompts=2)
    accepting.train("alice")
    folder = adapter_files.version_dir(accepting.config.adapters_dir, accepting.user("alice").id, 1)
    (folder / "adapter_model.safetensors").write_bytes(b"bit rot")
    with pytest.raises(InvalidInput, match="damaged"):
        accepting.rollback("alice", 1)
    assert accepting.chat("alice", "fine?", **SHORT).adapter_version == 2


def test_a_rollback_during_a_round_is_not_undone_by_its_candidate(
    accepting: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from online_rl import gate

    give_feedback(accepting, "alice")
    assert accepting.train("alice").accepted  # v1 live
    decide = gate.decide

    def operator_rolls_back_meanwhile(*args, **kwargs):
        decision = decide(*args, **kwargs)
        accepting.rollback("alice", 0)  # while the round compared against v1
        return decision

    monkeypatch.setattr(gate, "decide", operator_rolls_back_meanwhile)
    report = accepting.train("alice")
    assert not report.accepted and report.version == 2
    assert report.reason.startswith("stale: live changed from v1 to v0 while the round ran")
    statuses = {v["version"]: (v["status"], v["reason"]) for v in accepting.versions("alice")}
    assert statuses[1] == ("rolled_back", None)
    assert statuses[2][0] == "stale" and statuses[2][1] == report.reason
    assert accepting.trends("alice")[-1]["outcome"] == "rejected"
    assert accepting.chat("alice", "base still?", **SHORT).adapter_version == 0


def test_features_are_computed_once_per_reply_and_cached(accepting: Assistant) -> None:
    give_feedback(accepting, "alice")
    accepting.train("alice")
    db = sqlite3.connect(accepting.config.db_path)
    (cached,) = db.execute("select count(*) from features").fetchone()
    assert cached == 6  # two answers for each of three A/B prompts
    accepting.train("alice")
    assert db.execute("select count(*) from features").fetchone()[0] == cached


def test_other_users_adapters_are_untouched_by_a_round(accepting: Assistant) -> None:
    accepting.add_user("bob")
    give_feedback(accepting, "bob")
    accepting.train("bob")
    bob_dir = accepting.config.adapters_dir / accepting.user("bob").id
    before = {p: p.read_bytes() for p in bob_dir.rglob("*") if p.is_file()}
    give_feedback(accepting, "alice")
    accepting.train("alice")
    assert {p: p.read_bytes() for p in bob_dir.rglob("*") if p.is_file()} == before
    assert accepting.chat("bob", "mine?", **SHORT).adapter_version == 1


def test_trends_carry_the_reason_of_every_run(accepting: Assistant) -> None:
    give_feedback(accepting, "alice")
    accepting.train("alice")
    run = records.list_training_runs(accepting.store.db, accepting.user("alice").id)[0]
    assert run["reason"] and json.loads(run["metrics"])["feedback_events"] == 9


def test_the_gate_pairs_candidate_and_live_on_fresh_seeds_and_samples_the_base_once(
    accepting: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from online_rl import sampling
    from online_rl.policy import BASE, TRAINABLE

    trainer = accepting.trainer
    calls: list[tuple[list, list[str], list[int], int]] = []
    sample = sampling.sample

    def spy(policy, base, prompts, adapter_names, seeds, max_new_tokens, temperature):
        calls.append(
            ([tuple(p) for p in prompts], list(adapter_names), list(seeds), max_new_tokens)
        )
        return sample(policy, base, prompts, adapter_names, seeds, max_new_tokens, temperature)

    monkeypatch.setattr(sampling, "sample", spy)
    give_feedback(accepting, "alice")
    red_team = len(trainer.worker.red_team.prompts)
    gate = accepting.trainer.config.gate
    n, m = gate.improvement.stages[0], gate.red_team.stages[0]
    seeds_by_round = []
    for _ in range(2):
        calls.clear()
        assert accepting.train("alice").accepted
        # the gain's stage: candidate and live on the same prompts and seeds
        reference = trainer.worker.policy.reference_name
        prompts, names, seeds, _ = next(
            c for c in reversed(calls) if TRAINABLE in c[1] and reference in c[1]
        )
        assert names == [TRAINABLE] * n + [reference] * n
        assert prompts[:n] == prompts[n:] and seeds[:n] == seeds[n:]
        seeds_by_round.append(seeds)
        # adopted over a version (not the base): the base on the pairs' questions and seeds,
        # what the user reads the version against (`assistant.traits`)
        learned = [c for c in calls if set(c[1]) == {BASE} and c[3] != gate.red_team_max_new_tokens]
        assert len(learned) == (len(seeds_by_round) - 1)
        for base_prompts, _, base_seeds, _ in learned:
            k = len(base_seeds)
            assert base_prompts == prompts[:k] and base_seeds == seeds[:k]
        gate_calls = [c for c in calls if c not in learned]
        # then, the candidate being better, its red-team stage, at the red-team length
        _, names, _, length = gate_calls[-1]
        assert names == [TRAINABLE] * m and length == gate.red_team_max_new_tokens
        # the base's red-team replies: sampled in the first round only (the base is frozen)
        base_calls = [c for c in gate_calls if set(c[1]) == {BASE}]
        assert bool(base_calls) == (len(seeds_by_round) == 1)
        assert sum(len(c[1]) for c in base_calls) == (
            red_team * gate.base_red_team_seeds if base_calls else 0
        )
        assert all(c[3] == gate.red_team_max_new_tokens for c in base_calls)
    assert set(seeds_by_round[0]).isdisjoint(seeds_by_round[1])  # fresh seeds every round


def test_a_candidate_not_shown_better_costs_no_red_team_replies(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_with(tmp_path, tiny_model_dir, SHUT_GATE) as asst:
        asst.add_user("alice")
        from online_rl import sampling

        trainer = asst.trainer
        red_team = {tuple(p) for p in trainer.worker.red_team.prompts}
        asked: list[tuple] = []
        for name in ("sample", "sample_rollouts"):  # the gate's replies, the rollouts
            sample = getattr(sampling, name)

            def spy(policy, base, prompts, *rest, sample=sample):
                asked.extend(tuple(p) for p in prompts)
                return sample(policy, base, prompts, *rest)

            monkeypatch.setattr(sampling, name, spy)
        give_feedback(asst, "alice")
        report = asst.train("alice")
    assert "not shown better" in report.reason
    assert report.metrics["red_team_replies"] == 0
    # red-team prompts come up only as the round's own rollouts (one prompt, sampled 2 times)
    assert (
        sum(p in red_team for p in asked)
        == trainer.config.safety.rollout_prompts * FAST.samples_per_prompt
    )


def test_dpo_reference_log_probs_are_cached_per_message(accepting: Assistant) -> None:
    give_feedback(accepting, "alice")
    accepting.train("alice")
    trainer = accepting.trainer
    alice = accepting.user("alice").id
    db = accepting.store.db
    pairs = user_feedback(db, alice, trainer.config.safety).preferences
    assert {(alice, m["id"]) for pair in pairs for m in pair} <= set(trainer.worker.references)
    winners = [example(db, trainer.prompting, w) for w, _ in pairs]
    fresh = trainer.worker.base_logprobs(winners).cpu()  # the cache holds them on the CPU
    cached = torch.tensor([trainer.worker.references[alice, w["id"]] for w, _ in pairs])
    assert torch.allclose(fresh, cached, atol=1e-4)


@pytest.mark.parametrize("liked", [True, False])
def test_only_samples_the_user_would_like_are_imitated_and_pooled(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, liked: bool
) -> None:
    from online_rl import reward
    from online_rl.ppo import PPOConfig

    monkeypatch.setattr(reward.UserReward, "liked", lambda self, x: torch.full((len(x),), liked))
    recipe = replace(FAST, ranked_preference_steps=1, ranked_pair_margin=0.0)
    training = TrainingConfig(round=recipe, gate=OPEN_GATE, ppo=PPOConfig(max_new_tokens=8))
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=training) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        first = asst.train("alice").metrics
        second = asst.train("alice").metrics
    rollouts = FAST.rollout_prompts * FAST.samples_per_prompt
    # ranked (best, worst) pairs are a DPO step whether or not anything is liked
    assert first["ranked_pair_loss_first"] is not None
    if liked:
        assert first["liked_pool"] == rollouts and second["liked_pool"] == 2 * rollouts
        assert first["distill_examples"] == rollouts and first["distill_loss"] is not None
    else:
        assert first["liked_pool"] == 0 and second["liked_pool"] == 0
        assert first["distill_examples"] == 0 and first["distill_loss"] is None


NO_STEPS = replace(FAST, sft_steps=0, preference_steps=0, iterations=0)


@pytest.mark.parametrize(
    ("gate", "resume", "resumed"),
    [
        (SHUT_GATE, True, True),  # refused for no reward gain only: the branch goes on
        (SHUT_GATE, False, False),  # the switch is off
        (replace(OPEN_GATE, kl_budget=-1.0), True, False),  # refused for KL: back to live
    ],
)
def test_a_round_goes_on_from_a_candidate_refused_only_for_no_gain(
    tmp_path: Path, tiny_model_dir: Path, gate: GateConfig, resume: bool, resumed: bool
) -> None:
    from online_rl.ppo import PPOConfig

    first = TrainingConfig(round=FAST, gate=gate, ppo=PPOConfig(max_new_tokens=8))
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=first) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        assert not asst.train("alice").accepted
    # the second round trains nothing: its candidate is exactly where it started
    second = replace(first, round=replace(NO_STEPS, resume_refused=resume))
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=second) as asst:
        report = asst.train("alice")
        assert not report.accepted and report.version == 2
        statuses = {v["version"]: (v["status"], v["parent"]) for v in asst.versions("alice")}
        folder = adapter_files.version_dir(asst.config.adapters_dir, asst.user("alice").id, 1)
    assert statuses[2] == ("rejected", 1 if resumed else None)
    assert report.metrics["parent_version"] == (1 if resumed else 0)
    assert lora_b_norm(folder) > 0
    expected = lora_b_norm(folder) if resumed else 0.0
    assert lora_b_norm(folder.parent / "v00002") == pytest.approx(expected)


def test_a_refused_candidate_whose_folder_is_gone_is_not_resumed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Its row still says resumable, its folder was pruned or lost: the next round starts from
    live instead of failing on the missing files (and then failing every round after)."""
    from online_rl.ppo import PPOConfig

    training = TrainingConfig(round=FAST, gate=SHUT_GATE, ppo=PPOConfig(max_new_tokens=8))
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=training) as asst:
        alice = asst.add_user("alice").id
        give_feedback(asst, "alice")
        assert not asst.train("alice").accepted
        assert adapter_files.delete_version(asst.config.adapters_dir, alice, 1)
        report = asst.train("alice")
        assert report.version == 2 and report.metrics["parent_version"] == 0


def test_rounds_keep_the_version_folders_bounded(tmp_path: Path, tiny_model_dir: Path) -> None:
    from online_rl.ppo import PPOConfig
    from storage.retention import RetentionConfig

    training = TrainingConfig(
        round=replace(FAST, resume_refused=False),
        gate=SHUT_GATE,
        ppo=PPOConfig(max_new_tokens=8),
        retention=RetentionConfig(once_live=1, refused=2),
    )
    with Assistant.open(tmp_path / "d", model=str(tiny_model_dir), training=training) as asst:
        asst.add_user("alice")
        give_feedback(asst, "alice")
        for _ in range(4):
            assert not asst.train("alice").accepted
        folders = sorted(
            p.name for p in (asst.config.adapters_dir / asst.user("alice").id).iterdir()
        )
        versions = asst.versions("alice")
    assert folders == ["v00003", "v00004"]  # the two newest refused candidates
    assert [v["version"] for v in versions] == [1, 2, 3, 4]  # every row stays: the history


def test_identical_candidate_and_live_replies_are_a_tie_whatever_their_scores(
    accepting: Assistant,
) -> None:
    from online_rl.gate_measure import GateSamples, add_pairs

    trainer = accepting.trainer
    prompt = trainer.prompting.ids([{"role": "user", "content": "hello"}])
    same, other = [5, 6, 7], [8, 9]
    seen = GateSamples()
    # a score that differs for every row, as float noise between batch rows could
    scores = lambda x: torch.arange(len(x), dtype=torch.float32)  # noqa: E731
    replies = [same, same, same, other]
    policy, base, config = trainer.worker.policy, accepting.base, trainer.config
    add_pairs(policy, base, seen, [prompt, prompt], replies, [True] * 4, scores, config)
    assert seen.gains == [0.0, 1.0 - 3.0]  # the identical pair ties; the other is scored


def test_the_kl_coefficient_carries_from_the_live_version_into_the_next_round(
    accepting: Assistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's adaptive KL coefficient is stored with its version (a column) and the next
    round starting from that version begins with it, not with the configured start."""
    from online_rl import ppo

    used: list[float] = []
    update = ppo.ppo_update

    def spy(peft, value_head, optimizer, rollouts, kl_coef, config, between_steps):
        used.append(kl_coef)
        return update(peft, value_head, optimizer, rollouts, kl_coef, config, between_steps)

    monkeypatch.setattr(ppo, "ppo_update", spy)
    give_feedback(accepting, "alice")
    first = accepting.train("alice")
    assert first.accepted, first.reason
    alice = accepting.user("alice").id
    stored = records.version_kl_coef(accepting.store.db, alice, first.version)
    configured = accepting.trainer.config.ppo.kl_coef
    assert used == [configured] and stored is not None and stored != configured
    assert "kl_coef" not in first.metrics  # state, not a metric
    give_feedback(accepting, "alice")
    accepting.train("alice")
    assert used[1] == stored


def test_a_round_offers_chat_the_cores_between_its_steps(accepting: Assistant) -> None:
    """The round calls `between_steps` before every decoding step and update minibatch
    (serving waits there while a chat reply is written: tests/test_batching.py)."""
    policy = accepting.trainer.worker.policy
    assert policy.between_steps == accepting._chat_first  # wired by the facade
    steps: list[int] = []
    policy.between_steps = lambda: steps.append(1)
    give_feedback(accepting, "alice")
    report = accepting.train("alice")
    ppo = accepting.trainer.config.ppo
    assert len(steps) >= ppo.max_new_tokens + ppo.epochs  # sampling steps and minibatches
    assert report.accepted  # what the round computes is unchanged by the calls
