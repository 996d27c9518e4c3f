"""What a reward head reads of a reply: the base model's hidden states, pooled, plus word counts.

One function, `pool`, turns one forward pass's hidden states into a reply's features, and every
path that scores replies goes through it: fitting a head on stored messages, scoring rollouts in
the round's base pass, and the gate's pairs. (Before, fitting and scoring took "the last token"
in two places that agreed only by a padding convention.)

Why these choices (`attune bench heads` measures them; the README has the table):
- a middle layer, averaged over the reply's tokens, sees "is X anywhere in the reply" (a word,
  bold text, a list) far better than the last layer at the last token, which mostly encodes
  what comes next;
- lexical counts (hashed token unigrams and bigrams of the reply) keep a marker seen in a
  handful of liked replies from being lost among hundreds of dense dimensions: a "wide and
  deep" head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Pooling = Literal["last", "mean"]


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a reply gets.

    parts: (pooling, layer) pairs, concatenated: pooling "last" (the reply's last token) or
        "mean" (over the reply's tokens, EOS included); layer an index into the model's hidden
        states (0 = embeddings, -1 = the last layer), or a float in (0, 1): that fraction of
        the model's depth, so one spec fits models of any depth (`layer_index`).
    lexical_dim: hashed token unigram and bigram counts of the reply (log(1 + count)), this
        many buckets (0: none), times `lexical_scale`.
    """

    parts: tuple[tuple[Pooling, int | float], ...] = (("last", -1),)
    lexical_dim: int = 0
    lexical_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("a feature spec needs at least one (pooling, layer) part")
        if any(p not in ("last", "mean") for p, _ in self.parts):
            raise ValueError(f"pooling must be 'last' or 'mean', in {self.parts}")
        if any(isinstance(k, float) and not 0 < k < 1 for _, k in self.parts):
            raise ValueError(f"a fractional layer must be in (0, 1), in {self.parts}")
        if self.lexical_dim < 0:
            raise ValueError(f"lexical_dim must be >= 0, not {self.lexical_dim}")

    @property
    def key(self) -> str:
        """A short stable name (cached features are stored under it)."""
        dense = "+".join(f"L{layer}:{pooling}" for pooling, layer in self.parts)
        lexical = f"+lex{self.lexical_dim}x{self.lexical_scale:g}" if self.lexical_dim else ""
        return dense + lexical

    def width(self, hidden_size: int) -> int:
        """How many numbers a reply's features are, on a model of this hidden size."""
        return len(self.parts) * hidden_size + self.lexical_dim

    def stored_kind(self, dtype: torch.dtype) -> str:
        """The kind these features are stored under when a pass in `dtype` made them: fp32's
        keep the plain `key` (caches from before precisions had names stay valid), others get
        a suffix, so no cache mixes two precisions and a change of precision recomputes
        stored replies' features lazily (nothing is lost)."""
        if dtype == torch.float32:
            return self.key
        return f"{self.key}@{str(dtype).removeprefix('torch.')}"


LAST_TOKEN = FeatureSpec()  # the last layer at the reply's last token (the first heads' features)
# what heads read by default: chosen on `attune bench heads` (README, "Reward heads, measured"):
# the mean over the reply at 0.53 of the depth (layer 16 of SmolLM2-135M's 30) and word counts
MIDDLE_MEAN_AND_WORDS = FeatureSpec((("mean", 0.53),), lexical_dim=4096, lexical_scale=3.0)


def layer_index(layer: int | float, layers: int) -> int:
    """The hidden-state index of `layer` in a model with `layers` layers (hidden states hold
    layers + 1 entries: the embeddings, then each layer's output)."""
    if isinstance(layer, float):
        return round(layer * layers)
    if not -(layers + 1) <= layer <= layers:
        raise ValueError(f"layer {layer}: the model has {layers} layers")
    return layer


def pooled(hidden: torch.Tensor, reply_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(B, H) from one layer's (B, T, H) states; `reply_mask` (B, T) is 1 on reply tokens."""
    hidden = hidden.float()  # a bf16 pass's states are summed in fp32, not rounded per step
    mask = reply_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    columns = torch.arange(mask.shape[1], device=mask.device)
    last = (columns * reply_mask.long()).amax(1)  # the reply's last column
    return hidden[torch.arange(len(hidden), device=hidden.device), last]


def lexical(reply_ids: Sequence[Sequence[int]], dim: int) -> torch.Tensor:
    """(B, dim): log(1 + how many of the reply's token unigrams and bigrams hash to each
    bucket). Counts, not presence: "says 'you' four times" is a taste too."""
    out = torch.zeros(len(reply_ids), dim)
    for row, ids in enumerate(reply_ids):
        grams = [(t,) for t in ids] + list(zip(ids, ids[1:], strict=False))
        for g in grams:
            out[row, hash_gram(g) % dim] += 1.0
    return out.log1p()


def hash_gram(gram: tuple[int, ...]) -> int:
    """FNV-1a of a token n-gram: the same in every process and Python version, which stored
    feature vectors depend on (nothing here relies on `hash`'s unspecified details)."""
    h = 1469598103934665603  # FNV-1a, 64 bit
    for t in gram:
        for byte in int(t).to_bytes(4, "little"):
            h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h ^ len(gram)


def pool(
    hidden_states: Sequence[torch.Tensor],
    reply_mask: torch.Tensor,
    reply_ids: Sequence[Sequence[int]],
    spec: FeatureSpec,
) -> torch.Tensor:
    """A reply's features under `spec` from one pass's hidden states (every layer's, as
    transformers returns them with `output_hidden_states=True`)."""
    depth = len(hidden_states) - 1
    parts = [
        pooled(hidden_states[layer_index(layer, depth)], reply_mask, pooling)
        for pooling, layer in spec.parts
    ]
    if spec.lexical_dim:
        parts.append(spec.lexical_scale * lexical(reply_ids, spec.lexical_dim).to(parts[0]))
    return torch.cat(parts, dim=-1)
