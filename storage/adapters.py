"""Adapter version folders on disk, written so that a crash never leaves a half version.

A version is written into a hidden temporary folder beside its final place, every file is
fsynced, a manifest of SHA-256 sums is added, and only then is the folder renamed into place
(rename is atomic on one file system). Loading checks the manifest, so a file damaged later is
caught rather than loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

MANIFEST = "manifest.json"
TEMP_PREFIX = ".tmp-"

# a version's files by name (relative to its folder): how a version travels to and from a round
# that runs in another process or on another machine
AdapterFiles = dict[str, bytes]


class CorruptAdapter(Exception):
    """An adapter folder is missing, incomplete or does not match its manifest."""


def version_dir(root: Path, user_id: str, version: int) -> Path:
    return Path(root) / user_id / f"v{version:05d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_version(root: Path, user_id: str, version: int, write: Callable[[Path], None]) -> Path:
    """Let `write` fill a fresh folder, then publish it atomically as that version."""
    final = version_dir(root, user_id, version)
    if final.exists():
        raise FileExistsError(f"adapter version already on disk: {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.parent / f"{TEMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        write(temp)
        files = sorted(p for p in temp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(temp)): _sha256(p) for p in files}
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for p in [*files, temp / MANIFEST]:
            _fsync(p)
        _fsync(temp)
        os.rename(temp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final


def read_files(folder: Path) -> AdapterFiles:
    """Every file under `folder` but the manifest, by relative name (check a version folder
    with `verify_version` first: a missing folder reads as no files)."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def put_files(files: AdapterFiles, folder: Path) -> None:
    """Write `files` (from `read_files`) into `folder`; a name that would leave it is refused."""
    folder = Path(folder).resolve()
    for name, data in files.items():
        path = (folder / name).resolve()
        if not path.is_relative_to(folder) or path == folder:
            raise ValueError(f"refusing to write {name!r} outside {folder}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def highest_version_on_disk(root: Path, user_id: str) -> int:
    """The highest version folder of the user (0 if none): a crash after writing a version but
    before recording it must not make the next round reuse its number."""
    numbers = [int(p.name[1:]) for p in (Path(root) / user_id).glob("v[0-9]*") if p.is_dir()]
    return max(numbers, default=0)


def verify_version(path: Path) -> None:
    """Raise CorruptAdapter unless every file in the manifest is present and intact."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise CorruptAdapter(f"{path}: no readable manifest ({e})") from e
    for name, digest in manifest.items():
        file = path / name
        if not file.is_file() or _sha256(file) != digest:
            raise CorruptAdapter(f"{path}: {name} is missing or damaged")


def remove_partial_writes(root: Path) -> list[Path]:
    """Delete temporary folders left by a crash mid-write; returns what was removed."""
    removed = []
    for temp in Path(root).glob(f"*/{TEMP_PREFIX}*"):
        shutil.rmtree(temp, ignore_errors=True)
        removed.append(temp)
    return removed


def delete_version(root: Path, user_id: str, version: int) -> bool:
    """Delete one version's folder; False if it was not there. The folder is first renamed to
    a temporary name, so a crash mid-delete leaves something `remove_partial_writes` sweeps,
    never a half version under a version's name."""
    final = version_dir(root, user_id, version)
    temp = final.parent / f"{TEMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(final, temp)
    except FileNotFoundError:
        return False
    _fsync(final.parent)
    shutil.rmtree(temp, ignore_errors=True)  # what is left is swept on the next open
    return True


def delete_user_versions(root: Path, user_id: str) -> None:
    shutil.rmtree(Path(root) / user_id, ignore_errors=True)
