"""A benchmark's assistant: its own empty data folder under --data-dir, the shared model cache."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from assistant import Assistant


def open_fresh(
    args: argparse.Namespace, name: str, copy_of: Path | None = None, **options: Any
) -> Assistant:
    """Open the assistant in `<data-dir>/bench-<name>`, emptied first (each run starts clean),
    or made a copy of the data folder `copy_of` (runs that start from the same state), on the
    model the `attune bench` flags name; `options` go to `Assistant.open`."""
    data = Path(args.data_dir) / f"bench-{name}"
    shutil.rmtree(data, ignore_errors=True)
    if copy_of is not None:
        shutil.copytree(copy_of, data)
    cache = Path(args.model_cache) if args.model_cache else Path(args.data_dir) / "models"
    return Assistant.open(
        data,
        model=args.model,
        quantize=args.quantize,
        device=args.device,
        training_precision=args.training_precision,
        model_cache=cache,
        **options,
    )
