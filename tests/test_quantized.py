"""The served base's weight-only integer layers: exact where the weights are on the int4 grid,
close per channel in int8, LoRA still fp32 beside them, training untouched."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from assistant import generation
from assistant.config import GenerationConfig, ModelConfig
from assistant.errors import InvalidInput, ModelUnavailable
from assistant.model import load, serving_bits
from assistant.quantized import (
    INT4_GROUP,
    Int4Linear,
    Int8Linear,
    on_int4_grid,
    quantize_linears,
    quantized,
)


def grid_codes(out: int, inp: int, seed: int = 0) -> tuple[torch.Tensor, nn.Linear]:
    """The 4-bit codes q and a linear layer whose weights are q * scale + minimum per group
    of 32 (a Q4_1 GGUF's grid)."""
    g = torch.Generator().manual_seed(seed)
    groups = inp // INT4_GROUP
    q = torch.randint(0, 16, (out, groups, INT4_GROUP), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # every group spans the whole grid, as a real block does
    scale = torch.rand(out, groups, 1, generator=g) * 0.02 + 0.001
    low = -torch.rand(out, groups, 1, generator=g) * 0.1
    layer = nn.Linear(inp, out, bias=False)
    layer.weight.data = (q * scale + low).reshape(out, inp)
    return q.reshape(out, inp), layer


def grid_linear(out: int, inp: int, seed: int = 0) -> nn.Linear:
    return grid_codes(out, inp, seed)[1]


def bf16_reference(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """What an exact kernel returns: the fp32 product of bf16-rounded inputs."""
    return x.to(torch.bfloat16).float() @ layer.weight.t()


def test_int4_keeps_weights_on_its_grid_exactly() -> None:
    codes, layer = grid_codes(96, 128)
    assert on_int4_grid(layer.weight)
    q = quantized(layer, "auto")
    assert isinstance(q, Int4Linear)
    # the packed codes are the grid's own: read back through the kernel with scale 1 and the
    # value 8 at code 8 (so it returns the codes), on the identity matrix
    unit = torch.stack(
        [
            torch.ones_like(q.scales_and_zeros[..., 0]),
            torch.full_like(q.scales_and_zeros[..., 1], 8.0),
        ],
        -1,
    )
    eye = torch.eye(128, dtype=torch.bfloat16)
    read = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, q.weight, INT4_GROUP, unit)
    assert torch.equal(read.float().t(), codes)
    x = torch.randn(5, 128)
    expected = bf16_reference(layer, x)
    # only the bf16 scales/minima and the bf16 output differ from the exact product
    err = (q(x) - expected).abs().max() / expected.abs().max()
    assert err < 0.02
    # the same layer as int8 per channel is close but not on its grid: int4 is the better fit
    err8 = (Int8Linear(layer)(x) - expected).abs().max() / expected.abs().max()
    assert err8 < 0.03


def test_auto_keeps_int8_where_int4_would_lose_precision() -> None:
    torch.manual_seed(0)
    free = nn.Linear(128, 64, bias=True)  # random weights: not on any 4-bit grid
    assert not on_int4_grid(free.weight)
    assert isinstance(quantized(free, "auto"), Int8Linear)
    assert isinstance(quantized(free, "int4"), Int4Linear)  # asked for: given
    assert isinstance(quantized(nn.Linear(100, 16), "int4"), Int8Linear)  # 100 is no 32s
    assert isinstance(quantized(nn.Linear(64, 24), "int4"), Int8Linear)  # 24 is no 16s
    assert isinstance(quantized(grid_linear(24, 64), "auto"), Int8Linear)  # on the grid, too
    x = torch.randn(3, 7, 128)
    q8 = Int8Linear(free)
    out = q8(x)
    assert out.shape == (3, 7, 64) and out.dtype == torch.float32
    ref = free(x)
    assert (out - ref).abs().max() / ref.abs().max() < 0.03  # the bias is added too


def test_loaded_model_serves_integers_and_trains_in_float_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    loaded = load(ModelConfig(name=str(tiny_model_dir), device="cpu"), tmp_path)
    assert loaded.training_dtype in (torch.float32, torch.bfloat16)  # the CPU's (auto)
    served = [m for m in loaded.model.modules() if isinstance(m, nn.Linear)]
    assert served and all(isinstance(m, Int8Linear) for m in served)  # random tiny weights
    assert sum(loaded.serving_weights.values()) == len(served)
    training = loaded.training_copy()
    linears = [m for m in training.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear for m in linears)
    assert all(m.weight.dtype == loaded.training_dtype for m in linears)

    fp32 = load(ModelConfig(name=str(tiny_model_dir), quantize="none", device="cpu"), tmp_path)
    assert fp32.serving_weights == {}
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 2, 3]])
    with torch.inference_mode():
        p = torch.log_softmax(fp32.model(input_ids=ids).logits, -1)
        q = torch.log_softmax(loaded.model(input_ids=ids).logits, -1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    assert 0 < kl < 0.01


def test_int4_model_on_its_grid_serves_what_fp32_serves(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A model whose weights sit on the int4 grid (as the default GGUF's do) is served in
    int4 by default and decodes the same greedy reply as in fp32."""
    fp32 = load(ModelConfig(name=str(tiny_model_dir), quantize="none", device="cpu"), tmp_path)
    for module in fp32.model.modules():
        if type(module) is nn.Linear and module is not fp32.model.get_output_embeddings():
            module.weight.data = grid_linear(*module.weight.shape, seed=1).weight.data
    served = copy.deepcopy(fp32.model)
    kinds = quantize_linears(served, "auto")
    assert kinds["Int4Linear"] > 0 and kinds["Int8Linear"] == 1  # the tied output layer
    prompt = [1, 5, 9, 13, 17]
    settings = GenerationConfig(max_new_tokens=12, temperature=0.0, seed=0)

    def greedy(model: nn.Module) -> list[int]:
        steps = generation.stream_tokens(
            generation.bind_forward(model), [prompt], settings, [0], set(), 0, fp32.device
        )
        return [int(t) for t in steps]

    assert greedy(served) == greedy(fp32.model)


def test_lora_on_integer_layers_stays_fp32_and_changes_the_output(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model

    loaded = load(ModelConfig(name=str(tiny_model_dir), device="cpu"), tmp_path)
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.inference_mode():
        before = loaded.model(input_ids=ids).logits
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft = get_peft_model(loaded.model, config).eval()
    lora = [p for n, p in peft.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    with torch.inference_mode():
        after = peft(input_ids=ids).logits
        with peft.disable_adapter():
            off = peft(input_ids=ids).logits
    assert not torch.allclose(after, before)
    assert torch.equal(off, before)


def test_quantize_settings_are_checked() -> None:
    with pytest.raises(InvalidInput, match="int8 or int4"):
        ModelConfig(quantize="int3")  # type: ignore[arg-type]
    with pytest.raises(ModelUnavailable, match="CPU kernels"):
        serving_bits(ModelConfig(quantize="int4"), torch.device("cuda"))
    assert serving_bits(ModelConfig(), torch.device("cuda")) is None  # NF4 there
    assert serving_bits(ModelConfig(), torch.device("cpu")) == "auto"
    assert serving_bits(ModelConfig(quantize="none"), torch.device("cpu")) is None
    assert serving_bits(ModelConfig(quantize="int8"), torch.device("cpu")) == "int8"
