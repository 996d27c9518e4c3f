"""Every row of a batch on its own LoRA adapter, as two batched matmuls per adapted layer.

peft can already mix adapters in one batch (`adapter_names`), but it does so by looping over
the batch's adapters in every layer, slicing out each one's rows, and by adding and removing
forward hooks around every call: with 8 users on a 2-core CPU that costs more than the model
itself (serving benchmark). Here the batch's adapters are stacked once, when the batch changes
(a reply joins or leaves), into A: (rows, in, r) and B: (rows, r, out) per layer, scaling folded
into B and zeros for rows on the bare base; each step then adds x @ A @ B to the base layer's
output (`torch.bmm`), the idea of Punica and S-LoRA. peft still loads and holds the adapters;
its own LoRA computation is switched off on the serving model.

Per-row copies cost rows x (in + out) x r floats per layer: fine for a few chat rows, too much
for a training round's 64-row batch that mixes only its candidate and live adapters. When a
batch holds at most `SHARED_ADAPTERS` distinct adapters, each layer instead keeps their factors
side by side, A: (in, K r) and B: (K r, out), and a 0/1 mask (rows, 1, K r) that keeps each
row's own columns: x @ A, masked, @ B, the same sum with K times the (small) LoRA products.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from assistant.adapters import BASE

SHARED_ADAPTERS = 2  # up to this many distinct adapters in a batch: factors side by side


def _factors(layer: Any, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The adapter's (A^T, scaling * B^T) in this layer, or None where it does not adapt it."""
    if name == BASE or (name not in layer.lora_A and name not in layer.lora_embedding_A):
        return None
    if name in layer.lora_embedding_A or layer.use_dora.get(name) or layer.lora_bias.get(name):
        raise NotImplementedError(
            f"adapter {name}: serving stacks plain LoRA on Linear layers only "
            "(no embedding LoRA, DoRA or LoRA bias)"
        )
    a = layer.lora_A[name].weight  # (r, in)
    b = layer.lora_B[name].weight  # (out, r)
    return a.t(), b.t() * layer.scaling[name]


Stacked = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # A, B, each row's column mask


def _stack(layer: Any, names: Sequence[str]) -> Stacked | None:
    """Per-row factors, zero-padded to the largest rank (zeros for base rows); None when no
    row uses an adapter here."""
    factors = [_factors(layer, n) for n in names]
    present = [f for f in factors if f is not None]
    if not present:
        return None
    rank = max(a.shape[1] for a, _ in present)
    a0, b0 = present[0]
    a_rows, b_rows = [], []
    for f in factors:
        a = a0.new_zeros(a0.shape[0], rank)
        b = b0.new_zeros(rank, b0.shape[1])
        if f is not None:
            a[:, : f[0].shape[1]] = f[0]
            b[: f[1].shape[0]] = f[1]
        a_rows.append(a)
        b_rows.append(b)
    return torch.stack(a_rows), torch.stack(b_rows), None


def _side_by_side(layer: Any, names: Sequence[str]) -> Stacked | None:
    """The batch's distinct adapters' factors side by side, A: (in, K r) and B: (K r, out),
    and each row's 0/1 column mask (rows, 1, K r), or no mask when every row uses all the
    columns (one adapter for the whole batch: a single stream); None when no row uses an
    adapter here."""
    present = [(n, f) for n in dict.fromkeys(names) if (f := _factors(layer, n)) is not None]
    if not present:
        return None
    a = torch.cat([f[0] for _, f in present], dim=1)
    b = torch.cat([f[1] for _, f in present], dim=0)
    mask = a.new_zeros(len(names), 1, a.shape[1])
    start = 0
    for name, (a_n, _) in present:
        rows = [i for i, n in enumerate(names) if n == name]
        mask[rows, :, start : start + a_n.shape[1]] = 1.0
        start += a_n.shape[1]
    return a, b, None if bool(mask.all()) else mask


class StackedLora:
    """Owns the per-row LoRA of one model (a PeftModel); `use(names)` before a forward.

    Serving keeps one for good; a training round attaches one for a sampling pass and
    `detach`es it after, so that peft's own LoRA (which training differentiates) is back on.
    """

    def __init__(self, peft_model: Any):
        self.model = peft_model
        self._names: list[str] | None = None
        self._stacks: dict[nn.Module, Stacked] = {}
        self._hooked: dict[nn.Module, Any] = {}

    def refresh(self) -> None:
        """After adapters were loaded: hook any new adapted layer and keep peft's own LoRA
        off (it would add the adapters a second time)."""
        from peft.tuners.lora import LoraLayer

        for module in self.model.modules():
            if isinstance(module, LoraLayer) and module not in self._hooked:
                self._hooked[module] = module.register_forward_hook(self._add_delta)
        self.model.base_model.disable_adapter_layers()
        self._names = None  # an adapter may have been replaced under the same name

    def detach(self) -> None:
        """Remove the hooks and give the model its own LoRA computation back."""
        for hook in self._hooked.values():
            hook.remove()
        self._hooked, self._stacks, self._names = {}, {}, None
        self.model.base_model.enable_adapter_layers()

    def use(self, names: Sequence[str]) -> None:
        """Stack the factors for this row order (kept while the batch stays the same)."""
        if self._names == list(names):
            return
        stack = _side_by_side if len(set(names) - {BASE}) <= SHARED_ADAPTERS else _stack
        self._stacks = {}
        for module in self._hooked:
            stacked = stack(module, names)
            if stacked is not None:
                self._stacks[module] = stacked
        self._names = list(names)

    def _add_delta(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        stacked = self._stacks.get(module)
        if stacked is None:
            return output
        a, b, mask = stacked
        x = inputs[0].to(a.dtype)  # (rows, seq, in)
        if a.dim() == 3:  # per row: batched matmuls
            delta = torch.bmm(torch.bmm(x, a), b)
        else:  # side by side: x @ A, each row's own columns, @ B
            low_rank = x @ a
            delta = (low_rank if mask is None else low_rank * mask) @ b
        return output + delta.to(output.dtype)
