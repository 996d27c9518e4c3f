"""Every version folder a round writes is a plain PEFT LoRA adapter a multi-LoRA server loads
as it is (`storage.serving_format`): checked on real rounds' folders, loaded back with
`PeftModel.from_pretrained`, and each broken variant of a folder is caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from assistant import Assistant
from storage import serving_format
from tests.test_training import accepting as accepting  # noqa: F401 (the fixture)
from tests.test_training import give_feedback


def round_folders(asst: Assistant) -> list[Path]:
    return sorted(p for p in Path(asst.config.adapters_dir).glob("*/v*") if p.is_dir())


def test_every_version_a_round_writes_loads_as_a_plain_peft_adapter(
    accepting: Assistant, tiny_model_dir: Path
) -> None:
    give_feedback(accepting, "alice")
    assert accepting.train("alice").accepted
    give_feedback(accepting, "alice", prompts=2)
    accepting.train("alice")
    folders = round_folders(accepting)
    assert len(folders) == 2
    for folder in folders:
        assert serving_format.problems(folder) == [], folder
        files = {p.name for p in folder.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        loaded = PeftModel.from_pretrained(base, str(folder))
        on_disk = load_file(str(folder / "adapter_model.safetensors"))
        state = {k.replace(".default", ""): v for k, v in loaded.state_dict().items()}
        for key, tensor in on_disk.items():
            assert torch.equal(state[key], tensor), key
        assert any(t.abs().sum() > 0 for k, t in on_disk.items() if "lora_B" in k)  # trained
        ids = torch.tensor([[1, 2, 3]])
        assert loaded(input_ids=ids).logits.shape[-1] == base.config.vocab_size


def test_each_broken_folder_is_caught(accepting: Assistant, tmp_path: Path) -> None:
    give_feedback(accepting, "alice")
    accepting.train("alice")
    (good,) = round_folders(accepting)

    def variant(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        return folder

    headed = variant("head-inside")
    weights = load_file(str(headed / "adapter_model.safetensors"))
    save_file(
        weights | {"value_head.weight": torch.zeros(1, 4)}, headed / "adapter_model.safetensors"
    )
    assert any("not a LoRA weight" in p for p in serving_format.problems(headed))

    saving = variant("modules-to-save")
    config = json.loads((saving / "adapter_config.json").read_text())
    (saving / "adapter_config.json").write_text(
        json.dumps(config | {"modules_to_save": ["lm_head"]})
    )
    assert any("modules_to_save" in p for p in serving_format.problems(saving))

    nested = variant("nested")
    (nested / "default").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (nested / name).rename(nested / "default" / name)  # peft's layout for a named adapter
    assert "must sit at the top" in serving_format.problems(nested)[0]

    reranked = variant("rank")
    config = json.loads((reranked / "adapter_config.json").read_text())
    (reranked / "adapter_config.json").write_text(json.dumps(config | {"r": config["r"] * 2}))
    assert any("rank" in p for p in serving_format.problems(reranked))
