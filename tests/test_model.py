"""Finding and loading a base model: folders, hub ids from the local cache, errors, NF4."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assistant import Assistant, ModelUnavailable
from assistant.config import ModelConfig
from assistant.model import load, resolve


def test_a_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="without config.json"):
        resolve(ModelConfig(name=str(tmp_path / "empty")), tmp_path / "cache")


def test_a_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no model at"):
        resolve(ModelConfig(name=str(tmp_path / "nowhere")), tmp_path / "cache")
    with pytest.raises(ModelUnavailable, match="no model at"):
        resolve(ModelConfig(name="./relative/nowhere"), tmp_path / "cache")


def run_offline(script: str, cwd: Path, hub_cache: Path) -> subprocess.CompletedProcess[str]:
    """Run Python with the hub offline; huggingface_hub reads these variables at import time."""
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_an_unreachable_hub_id_fails_with_advice(tmp_path: Path) -> None:
    script = (
        "from assistant import Assistant, ModelUnavailable\n"
        "try:\n"
        "    Assistant.open('data', model='no-such-org/no-such-model')\n"
        "except ModelUnavailable as e:\n"
        "    print('REFUSED', e)\n"
    )
    result = run_offline(script, tmp_path, tmp_path / "hub")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REFUSED" in result.stdout and "attune runs offline" in result.stdout


def test_a_hub_id_loads_from_the_local_hub_cache(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A hub id works offline when the model is in the hub cache (the layout hub downloads use)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--attune-test--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = (
        "from assistant import Assistant\n"
        "a = Assistant.open('data', model='attune-test/tiny')\n"
        "a.add_user('h')\n"
        "print('REPLY', a.chat('h', 'hi', max_new_tokens=3).adapter_version)\n"
    )
    result = run_offline(script, tmp_path, tmp_path / "hub")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REPLY 0" in result.stdout


def test_unknown_quantize_or_device_is_refused() -> None:
    from assistant import InvalidInput

    with pytest.raises(InvalidInput):
        ModelConfig(quantize="8bit")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        ModelConfig(device="tpu")  # type: ignore[arg-type]


def test_auto_is_full_precision_on_cpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    loaded = load(ModelConfig(name=str(tiny_model_dir), device="cpu"), tmp_path)
    assert not loaded.quantized and loaded.model.dtype.is_floating_point
    assert loaded.tokenizer.padding_side == "left"
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_4bit_base_chats_on_cpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    with Assistant.open(tmp_path, model=str(tiny_model_dir), quantize="4bit") as asst:
        assert asst.base.quantized
        linear = asst.base.model.model.layers[0].self_attn.q_proj
        assert type(linear).__name__ == "Linear4bit"
        asst.add_user("q")
        reply = asst.chat("q", "hello", max_new_tokens=4, seed=0)
        assert reply.adapter_version == 0


def test_a_bad_training_precision_is_refused() -> None:
    from assistant import InvalidInput

    with pytest.raises(InvalidInput, match="training_precision"):
        ModelConfig(training_precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="NF4"):
        ModelConfig(quantize="4bit", training_precision="bf16")


def test_auto_training_precision_is_fp32_on_a_cpu_and_bf16_on_cuda() -> None:
    """fp32 on a CPU whatever it multiplies fast (bf16 hides a round's small steps); bf16 on
    CUDA, where the model is loaded in it; asked for, it is what was asked."""
    import torch

    from assistant.model import training_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training_dtype(ModelConfig(), cpu) == torch.float32
    assert training_dtype(ModelConfig(), cuda) == torch.bfloat16
    assert training_dtype(ModelConfig(training_precision="fp32"), cuda) == torch.float32
    assert training_dtype(ModelConfig(training_precision="bf16"), cpu) == torch.bfloat16


def test_a_bf16_training_copy_beside_an_fp32_served_base(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The round's tree holds bf16 copies (tied weights still tied, rotary frequencies in
    fp32), the served tree keeps its fp32 weights, and a strided input to the vocabulary
    projection (transformers slices it) gives what a contiguous one gives."""
    import torch

    config = ModelConfig(
        name=str(tiny_model_dir), device="cpu", quantize="none", training_precision="bf16"
    )
    loaded = load(config, tmp_path)
    served, pristine = loaded.model, loaded.pristine
    assert loaded.training_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in served.parameters())
    assert all(p.dtype == torch.bfloat16 for p in pristine.parameters())
    assert pristine.get_input_embeddings().weight is pristine.get_output_embeddings().weight
    assert all(b.dtype == torch.float32 for b in pristine.buffers())
    assert pristine.config._attn_implementation == "eager"
    assert served.config._attn_implementation != "eager"
    hidden = torch.randn(3, 7, served.config.hidden_size, dtype=torch.bfloat16)
    head = pristine.get_output_embeddings()
    assert torch.equal(head(hidden[:, 2:5]), head(hidden[:, 2:5].contiguous()))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        full = served(input_ids=ids).logits.log_softmax(-1)
        half = pristine(input_ids=ids).logits.float().log_softmax(-1)
    assert (full.exp() * (full - half)).sum(-1).max() < 0.05  # the same model, rounded
    copy = loaded.training_copy()  # a round's tree: the bf16 tensors, shared
    assert copy.get_output_embeddings().weight is head.weight
