"""Files the app offers for download (my data, the feedback export): written to a folder of
this process under the system's temp folder, and removed again after `KEEP_S` seconds (Gradio
has copied a returned file into its own cache by then, and serves it from there)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

KEEP_S = 600.0


def _root() -> Path:
    return Path(tempfile.gettempdir()) / f"attune-downloads-{os.getpid()}"


def sweep(now: float | None = None) -> None:
    """Remove offered files older than KEEP_S."""
    now = time.time() if now is None else now
    root = _root()
    if not root.exists():
        return
    for folder in root.iterdir():
        try:
            old = now - folder.stat().st_mtime > KEEP_S
        except FileNotFoundError:  # another request's sweep took it first
            continue
        if old:
            shutil.rmtree(folder, ignore_errors=True)


def offer(filename: str, data: bytes) -> Path:
    """Write `data` as a new file named `filename` (in a folder of its own, so two users'
    files never meet) and return its path; older offers are swept first."""
    sweep()
    _root().mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=_root()))
    path = folder / filename
    path.write_bytes(data)
    return path
