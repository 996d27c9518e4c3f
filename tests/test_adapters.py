"""The per-user adapter registry: live versions from disk, mixed batches, damaged files."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from assistant import Assistant
from storage import adapters as adapter_files
from storage import records

GREEDY = {"max_new_tokens": 8, "temperature": 0.0}


def publish_adapter(
    asst: Assistant, tiny_model_dir: Path, user: str, version: int, seed: int
) -> Path:
    """Write a LoRA adapter with non-zero weights as the user's live version."""
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2.0)  # large enough to change greedy text on the tiny model
    user_id = asst.user(user).id
    path = adapter_files.write_version(
        asst.config.adapters_dir, user_id, version, model.save_pretrained
    )
    records.add_adapter_version(
        asst.store.db, user_id, version, str(path), version - 1 or None, "live"
    )
    return path


def test_live_adapter_is_used_and_recorded(
    asst: Assistant, alice: str, tiny_model_dir: Path
) -> None:
    base = asst.chat(alice, "hello there", seed=0, **GREEDY)
    assert base.adapter_version == 0
    publish_adapter(asst, tiny_model_dir, alice, 1, seed=1)
    tuned = asst.chat(alice, "hello there", seed=0, **GREEDY)
    assert tuned.adapter_version == 1
    assert tuned.text != base.text
    assert asst.store.db["messages"].get(tuned.id)["adapter_version"] == 1


def test_mixed_batch_matches_each_user_alone(
    asst: Assistant, alice: str, bob: str, tiny_model_dir: Path
) -> None:
    publish_adapter(asst, tiny_model_dir, alice, 1, seed=1)
    alone_alice = asst.generate(alice, ["what is new"], seed=0, **GREEDY)
    alone_bob = asst.generate(bob, ["what is new"], seed=0, **GREEDY)
    assert alone_alice != alone_bob
    # one forward pass serving two users with different adapters
    prompt = asst._prompt_ids(
        [{"role": "user", "content": "what is new"}], asst._settings({**GREEDY, "seed": 0})
    )
    settings = asst._settings({**GREEDY, "seed": 0})
    ids = [asst.user(alice).id, asst.user(bob).id]
    samples, versions = asst._complete(ids, [prompt, prompt], settings, [0, 0])
    texts = [s.text for s in samples]
    assert versions == [1, 0]
    assert texts == [alone_alice[0], alone_bob[0]]


def test_cold_adapters_are_evicted_but_reload(tmp_path: Path, tiny_model_dir: Path) -> None:
    from assistant.config import AssistantConfig, ModelConfig

    asst = Assistant(
        AssistantConfig(
            data_dir=tmp_path, model=ModelConfig(name=str(tiny_model_dir)), hot_adapters=1
        )
    )
    for i, name in enumerate(["u1", "u2"]):
        asst.add_user(name)
        publish_adapter(asst, tiny_model_dir, name, 1, seed=10 + i)
    first = asst.chat("u1", "hi", seed=0, **GREEDY)
    asst.chat("u2", "hi", seed=0, **GREEDY)
    assert len(asst.adapters._hot) == 1  # u1's adapter went back to disk
    again = asst.chat("u1", "hi", seed=0, **GREEDY)
    assert again.text == first.text and again.adapter_version == 1


def test_a_moved_data_folder_keeps_serving_the_live_version(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with Assistant.open(tmp_path / "data", model=str(tiny_model_dir)) as asst:
        asst.add_user("alice")
        publish_adapter(asst, tiny_model_dir, "alice", 1, seed=1)
        assert asst.chat("alice", "hi", seed=0, **GREEDY).adapter_version == 1
    shutil.move(tmp_path / "data", tmp_path / "restored")
    with Assistant.open(tmp_path / "restored", model=str(tiny_model_dir)) as asst:
        assert asst.chat("alice", "hi", seed=0, **GREEDY).adapter_version == 1
        (row,) = records.list_adapter_versions(asst.store.db, asst.user("alice").id)
        assert Path(row["path"]).is_relative_to(tmp_path / "restored")
