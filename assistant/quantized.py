"""Weight-only quantised linear layers for the served base on a CPU.

On a CPU one decoded token reads every weight of the model once; in fp32 that is 540 MB for
SmolLM2-135M, and the matmuls are the largest part of a token's time. Integer weights multiplied
through torch's CPU kernels for bfloat16 activations (`_weight_int8pack_mm`,
`_weight_int4pack_mm_for_cpu`, vectorised for AVX-512/AVX2) read a half (int8) or a quarter
(int4) of the bytes, while activations, norms, attention and each user's LoRA stay as they were.

- int4: 4-bit weights in groups of 32 along the input, each group with its own scale and
  minimum (`w = q * scale + minimum`, q in 0..15). That is the grid of the GGUF the default
  model ships as (Q4_1: blocks of 32, a scale and a minimum each), so its weights are stored
  exactly; only the scales and minima are rounded to bfloat16.
- int8: one scale per output channel (`w = q * scale`, q in -127..127); for any model.

Only the serving model's module tree is quantised (`quantize_linears`); the training copy keeps
float weights to differentiate through (fp32 or a bf16 copy: `LoadedModel.training_copy`). The
classes subclass `nn.Linear` so peft attaches LoRA to them as to any linear layer; the LoRA
itself stays fp32 beside the quantised matmul (`compute_dtype`), which `assistant.stacked_lora`
adds per row.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

WeightBits = Literal["int8", "int4", "auto"]
INT4_GROUP = 32  # the GGUF Q4_1 block size: the default model's own grid
INT4_OUTPUTS = 16  # torch's int4 packing takes output counts in multiples of this
_ACTIVATIONS = torch.bfloat16  # the kernels' vectorised path (fp32 activations run scalar)


def int4_supported() -> bool:
    """Whether this torch build has the CPU int4 kernels."""
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(
        ops, "_convert_weight_to_int4pack_for_cpu"
    )


class QuantizedLinear(nn.Linear):
    """A linear layer whose weight is stored as integers; inputs and outputs keep their dtype.

    `weight` holds the packed integers (a buffer: peft reads it for the layer's device and
    shape checks, and leaves LoRA in `compute_dtype` since it is no float).
    """

    compute_dtype = torch.float32  # peft keeps a LoRA attached here in fp32

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a float weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(_ACTIVATIONS)
        y = self._matmul(rows).to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights={type(self).__name__}"


class Int8Linear(QuantizedLinear):
    """Per-output-channel int8 weights: w[o, :] = q[o, :] * scale[o]."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight", q.contiguous())
        self.register_buffer("scale", scale.to(_ACTIVATIONS))

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x, self.weight, self.scale)


class Int4Linear(QuantizedLinear):
    """4-bit weights in groups of `INT4_GROUP` inputs: w = q * scale + minimum per group."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        w = linear.weight.detach().float()
        out, inp = w.shape
        groups = w.reshape(out, inp // INT4_GROUP, INT4_GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = (high - low).clamp(min=1e-12) / 15
        q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.reshape(out, inp).to(torch.int32), 1
        )
        # the kernel computes (q - 8) * scale + zero, so zero is the group's value at q = 8
        scales_and_zeros = torch.stack([scale, low + 8 * scale], dim=-1).transpose(0, 1)
        self.register_buffer("weight", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros.contiguous().to(_ACTIVATIONS))

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, self.weight, INT4_GROUP, self.scales_and_zeros
        )


def on_int4_grid(weight: torch.Tensor) -> bool:
    """Whether every group of `INT4_GROUP` weights is exactly q * scale + minimum with q in
    0..15: true of a model converted from a Q4_1 GGUF, where int4 then loses nothing."""
    out, inp = weight.shape
    if inp % INT4_GROUP:
        return False
    groups = weight.detach().float().reshape(out, inp // INT4_GROUP, INT4_GROUP)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    steps = (groups - low) / ((high - low).clamp(min=1e-12) / 15)
    return bool((steps - steps.round()).abs().max() < 1e-3)


def quantized(linear: nn.Linear, bits: WeightBits) -> QuantizedLinear:
    """The layer as int4 or int8. "auto": int4 where its weights already lie on the int4 grid
    (so nothing is lost), int8 elsewhere. int4 needs whole groups of inputs, outputs in
    multiples of `INT4_OUTPUTS` and torch's int4 kernels; a layer without them gets int8."""
    int4_possible = (
        linear.in_features % INT4_GROUP == 0
        and linear.out_features % INT4_OUTPUTS == 0
        and int4_supported()
    )
    if bits == "auto":
        int4_possible = int4_possible and on_int4_grid(linear.weight)
    return Int4Linear(linear) if bits != "int8" and int4_possible else Int8Linear(linear)


def quantize_linears(model: nn.Module, bits: WeightBits) -> dict[str, int]:
    """Replace every nn.Linear in `model`'s tree in place; returns how many of each kind.

    The output projection (the largest matrix; tied to the input embedding in SmolLM2, which
    stays fp32) follows the same rule: in the default model's GGUF it is not on the int4 grid.
    """
    kinds: dict[str, int] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                layer = quantized(child, bits)
                setattr(parent, name, layer)
                kinds[type(layer).__name__] = kinds.get(type(layer).__name__, 0) + 1
    return kinds
