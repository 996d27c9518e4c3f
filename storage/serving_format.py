"""The contract every version folder keeps, so a multi-LoRA serving tier can load it as it is.

A version folder is a plain PEFT LoRA adapter at its top level — `adapter_config.json` and
`adapter_model.safetensors`, which `PeftModel.from_pretrained` loads onto the base and vLLM's
dynamic LoRA loading (`/v1/load_lora_adapter`) accepts — with attune's own files beside it
(value and reward heads, the manifest), never inside the adapter's tensors. `problems()` says
what breaks the contract; a test holds every version a round writes to it.

Read without torch: a safetensors file is an 8-byte little-endian header length, a JSON
header naming each tensor's dtype and shape, then the data.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
# the projections vLLM applies LoRA to in Llama-family models
SERVABLE_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
LORA_KEY = re.compile(r"^base_model\.model\.(?:.+\.)?(\w+)\.lora_([AB])\.weight$")
FLOAT_DTYPES = {"F32", "F16", "BF16"}


def safetensors_header(path: Path) -> dict[str, Any]:
    """Each tensor's dtype and shape, from the file's header (the data is not read)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def _config_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    targets = config.get("target_modules") or []
    if isinstance(targets, str) or not set(targets) <= SERVABLE_MODULES:
        problems.append(f"target_modules {targets!r} are not all of {sorted(SERVABLE_MODULES)}")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config.get('bias')!r}: LoRA servers take 'none' only")
    if config.get("modules_to_save"):
        problems.append("modules_to_save puts full layers into the adapter")
    if config.get("use_dora"):
        problems.append("DoRA adapters are not served as LoRA")
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        problems.append(f"rank r is {config.get('r')!r}")
    return problems


def _weight_problems(header: dict[str, Any], rank: int) -> list[str]:
    problems = []
    if not header:
        problems.append(f"{WEIGHTS} holds no tensors")
    for key, info in header.items():
        match = LORA_KEY.match(key)
        if match is None:
            problems.append(f"{key}: not a LoRA weight (heads belong beside the adapter)")
            continue
        module, side = match.groups()
        if module not in SERVABLE_MODULES:
            problems.append(f"{key}: LoRA on {module}, which a server does not adapt")
        if info["dtype"] not in FLOAT_DTYPES:
            problems.append(f"{key}: dtype {info['dtype']}")
        shape = info["shape"]
        if len(shape) != 2 or shape[0 if side == "A" else 1] != rank:
            problems.append(f"{key}: shape {shape} does not have rank {rank} on its LoRA side")
    return problems


def problems(folder: Path) -> list[str]:
    """What keeps `folder` from loading as a plain PEFT / vLLM LoRA adapter ([] if nothing)."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        return [f"{folder}: {CONFIG} and {WEIGHTS} must sit at the top of the folder"]
    config = json.loads((folder / CONFIG).read_text())
    found = _config_problems(config)
    if isinstance(config.get("r"), int):
        found += _weight_problems(safetensors_header(folder / WEIGHTS), config["r"])
    return found
