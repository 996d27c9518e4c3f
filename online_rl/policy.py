"""The trainable side of one user's model: LoRA + value head on a copy of the base's modules.

The copy shares every weight tensor with the served model (see `LoadedModel.training_copy`), so
training neither doubles memory nor takes the serving lock. One `TrainablePolicy` serves every
user's rounds in turn: `start_from` loads that user's live adapter (or a fresh, zero one) into
the trainable adapter "default", and the live one beside it as "live" for comparisons.

Sequences are laid out as the prompt left-padded to width P, then the response right-padded to
width R; the logits that score response token t come from column P - 1 + t.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from assistant.generation import Forward, bind_forward
from assistant.stacked_lora import StackedLora
from online_rl.features import FeatureSpec, pool

TRAINABLE = "default"  # peft saves the adapter of this name at the top of the folder
LIVE = "live"
BASE = "__base__"
VALUE_HEAD_FILE = "value_head.pt"


@dataclass(frozen=True)
class LoraSettings:
    """The shape of every user's adapter. Changing it starts users from a fresh adapter."""

    r: int = 16
    alpha: int = 32
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class Batch:
    """Prompts and responses as one padded tensor, with the masks every loss needs."""

    ids: torch.Tensor  # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    response_mask: torch.Tensor  # (B, R): 1 on response tokens, EOS included when sampled
    prompt_width: int  # P

    @property
    def last_index(self) -> torch.Tensor:
        """Column (within the response) of each row's last real token."""
        return (self.response_mask.sum(-1) - 1).clamp(min=0).long()

    @property
    def reply_mask(self) -> torch.Tensor:
        """(B, P + R): 1 on response tokens, over the whole row."""
        prompt = self.response_mask.new_zeros(len(self.ids), self.prompt_width)
        return torch.cat([prompt, self.response_mask], dim=1)

    def replies(self) -> list[list[int]]:
        """Each row's response token ids (EOS included when sampled)."""
        ids, mask = self.ids[:, self.prompt_width :].tolist(), self.response_mask.tolist()
        return [[t for t, m in zip(r, k, strict=True) if m] for r, k in zip(ids, mask, strict=True)]

    def rows(self, index: torch.Tensor | slice) -> Batch:
        return Batch(
            self.ids[index],
            self.attention_mask[index],
            self.response_mask[index],
            self.prompt_width,
        )


def make_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
) -> Batch:
    """Left-pad prompts and right-pad responses (each at least one token) into a Batch."""
    width_p = max(len(p) for p in prompts)
    width_r = max(1, max(len(r) for r in responses))
    ids = torch.full((len(prompts), width_p + width_r), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    response_mask = torch.zeros((len(prompts), width_r), dtype=torch.long)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids[row, width_p - len(prompt) : width_p] = torch.tensor(prompt, dtype=torch.long)
        attention[row, width_p - len(prompt) : width_p] = 1
        if response:
            ids[row, width_p : width_p + len(response)] = torch.tensor(response, dtype=torch.long)
            attention[row, width_p : width_p + len(response)] = 1
            response_mask[row, : len(response)] = 1
    return Batch(ids.to(device), attention.to(device), response_mask.to(device), width_p)


@dataclass
class Outputs:
    logprobs: torch.Tensor  # (B, R): log p(response token | prefix) at the given temperature
    values: torch.Tensor | None  # (B, R): value-head estimate before each response token
    features: torch.Tensor | None  # (B, F): reward features (`online_rl.features`), if asked


def backbone_pass(model: Any, batch: Batch, every_layer: bool = True) -> Any:
    """The transformer body over the batch; every layer's hidden states kept if asked."""
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    return model.get_decoder()(
        input_ids=batch.ids,
        attention_mask=batch.attention_mask,
        position_ids=positions,
        output_hidden_states=every_layer,
    )


def reply_features(model: Any, batch: Batch, spec: FeatureSpec) -> torch.Tensor:
    """(B, F): the replies' reward features, from one pass of the body (no vocabulary)."""
    out = backbone_pass(model, batch)
    replies = batch.replies() if spec.lexical_dim else []
    return pool(out.hidden_states, batch.reply_mask, replies, spec)


def forward_batch(
    model: Any,
    batch: Batch,
    temperature: float,
    value_head: nn.Module | None = None,
    feature_spec: FeatureSpec | None = None,
) -> Outputs:
    """One pass over prompt + response; only response columns go through the vocabulary.
    With a `feature_spec`, the reply's reward features come from the same pass (`features.pool`),
    so what scores a rollout is what a stored reply was fitted on; without one (the PPO and
    warm-start steps) no layer's states are kept and nothing is pooled."""
    out = backbone_pass(model, batch, every_layer=feature_spec is not None)
    hidden = out.last_hidden_state
    width_r = batch.response_mask.shape[1]
    before = hidden[:, batch.prompt_width - 1 : batch.prompt_width - 1 + width_r]
    logits = model.get_output_embeddings()(before).float() / temperature
    targets = batch.ids[:, batch.prompt_width :]
    logprobs = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    features = None
    if feature_spec is not None:
        with torch.no_grad():
            replies = batch.replies() if feature_spec.lexical_dim else []
            features = pool(out.hidden_states, batch.reply_mask, replies, feature_spec)
    values = value_head(before.float()).squeeze(-1) if value_head is not None else None
    return Outputs(logprobs, values, features)


@contextmanager
def attention(model: Any, implementation: str) -> Iterator[None]:
    """Run `model` with this attention implementation, then the one it had. Decoding (one
    query row per step) is fastest with torch's fused attention; a bf16 training copy runs its
    passes with plain matmuls (`assistant.model.cast_copy`), which differ from the fused ones
    by rounding only, so replies sampled one way are scored the other way."""
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def new_value_head(hidden_size: int) -> nn.Module:
    """A linear value estimate on the policy's hidden state, starting at zero."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class TrainablePolicy:
    """The user's LoRA (trainable), the live LoRA (frozen, for the gate), and a value head."""

    def __init__(
        self,
        model: Any,
        lora: LoraSettings,
        device: torch.device,
        between_steps: Callable[[], object] = lambda: None,
    ):
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

        self.lora = lora
        self.device = device
        self.between_steps = between_steps  # before each decoding step and update minibatch
        self.peft = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=0.0,  # rollouts and the loss must see the same function
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
            adapter_name=TRAINABLE,
        )
        self.peft.eval()  # no dropout anywhere; peft's mixed batches also require eval mode
        self._fresh = {
            k: v.detach().clone() for k, v in get_peft_model_state_dict(self.peft).items()
        }
        self.value_head = new_value_head(model.config.hidden_size).to(device)
        self.has_live = False

    def base_only(self) -> AbstractContextManager[Any]:
        """Run as the bare base model: the KL reference and the reward features."""
        return self.peft.disable_adapter()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.peft.parameters() if p.requires_grad]

    def start_from(self, live_path: Path | None, resume_path: Path | None = None) -> bool:
        """Set the trainable adapter (and value head) to the user's live version, or fresh, or
        to `resume_path` (a refused candidate of the same live version) when given.

        Returns False when the live version's shape differs from `lora` (it then starts fresh).
        """
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        if self.has_live:
            self.peft.delete_adapter(LIVE)
            self.has_live = False
        self.peft.set_adapter(TRAINABLE)
        state = self._fresh
        matched = True
        head_state = None
        if live_path is not None:
            weights = load_file(str(live_path / "adapter_model.safetensors"), device="cpu")
            if weights.keys() == self._fresh.keys() and all(
                weights[k].shape == self._fresh[k].shape for k in weights
            ):
                state = weights
                self.peft.load_adapter(str(live_path), adapter_name=LIVE, is_trainable=False)
                self.has_live = True
                if (live_path / VALUE_HEAD_FILE).is_file():
                    head_state = torch.load(live_path / VALUE_HEAD_FILE, map_location="cpu")
            else:
                matched = False
        if resume_path is not None and matched:
            state = load_file(str(resume_path / "adapter_model.safetensors"), device="cpu")
            head_state = torch.load(resume_path / VALUE_HEAD_FILE, map_location="cpu")
        set_peft_model_state_dict(self.peft, state, adapter_name=TRAINABLE)
        fresh_head = new_value_head(self.value_head.in_features)
        self.value_head.load_state_dict(head_state or fresh_head.state_dict())
        self.peft.set_adapter(TRAINABLE)
        for name, p in self.peft.named_parameters():
            p.requires_grad_(f".{TRAINABLE}." in name)
        self.value_head.requires_grad_(True)
        self.peft.eval()
        return matched

    @property
    def reference_name(self) -> str:
        """The adapter name the live version has in a mixed batch (the base if none)."""
        return LIVE if self.has_live else BASE

    @contextmanager
    def sampling_forward(
        self, adapter_names: Sequence[str], hidden_states: bool = False
    ) -> Iterator[Forward]:
        """A decoding step for `generation`, for rows that may mix TRAINABLE, LIVE and BASE.

        A batch on the trainable adapter alone runs peft as it is. A mixed one (the gate's
        candidate and live replies side by side) gets each row's LoRA the way serving adds it
        (`assistant.stacked_lora`): peft's own per-row routing slices the batch per adapter in
        every layer (README "A round's sampling" measures the difference). Afterwards peft
        computes the LoRA again, for the training steps that differentiate it. With
        `hidden_states` each step's output carries every layer's states (a rollout's values).
        """
        forward = bind_forward(self.peft, output_hidden_states=hidden_states)

        def step(*args: Any) -> Any:
            self.between_steps()
            return forward(*args)

        with attention(self.peft.get_base_model(), "sdpa"):
            if set(adapter_names) == {TRAINABLE}:
                yield step
                return
            stacked = StackedLora(self.peft)
            stacked.refresh()
            stacked.use(adapter_names)
            try:
                yield step
            finally:
                stacked.detach()

    @contextmanager
    def merged(self) -> Iterator[None]:
        """Run the trainable adapter folded into copies of the base weights it touches
        (W + scale * B A, rounded to the base's dtype once), with peft's per-layer LoRA path
        off: a decoding step then runs the base's matmuls only. The copies are this tree's
        own (the pristine tree and serving keep theirs) and are dropped on the way out."""
        from peft.tuners.lora import LoraLayer

        swapped = []
        try:
            for layer in self.peft.modules():
                if isinstance(layer, LoraLayer) and TRAINABLE in layer.lora_A:
                    linear = layer.get_base_layer()
                    weight = linear.weight
                    folded = weight.float() + layer.get_delta_weight(TRAINABLE).float()
                    linear.weight = nn.Parameter(folded.to(weight.dtype), requires_grad=False)
                    swapped.append((linear, weight))
            with self.peft.disable_adapter():
                yield
        finally:
            for linear, weight in swapped:
                linear.weight = weight

    def save(self, folder: Path) -> None:
        """Write the trainable adapter and value head into `folder` (peft's own layout)."""
        self.peft.save_pretrained(str(folder), selected_adapters=[TRAINABLE])
        torch.save(self.value_head.state_dict(), folder / VALUE_HEAD_FILE)
