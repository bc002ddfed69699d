"""What a complete checkpoint holds: `manifest.json`, the size and SHA-256 of every file, written last.

A checkpoint folder appears under its final name only once it is complete (`training.checkpointing` renames it
into place), but its files can still be damaged later: a truncated copy, a disk error, a file deleted by hand.
The manifest tells: `damaged_files(folder)` names every file that is missing, of another size or of another
content. Checkpoints written before manifests existed have none and are taken as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike) -> Path:
    """Record every file under `folder` (sizes and SHA-256) in `folder/manifest.json`, flushed to disk."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files}
    path = folder / MANIFEST_FILE
    with open(path, "w") as handle:
        json.dump({"files": entries}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def damaged_files(folder: str | os.PathLike) -> list[str]:
    """What is wrong with checkpoint `folder`, one line per file (empty: complete, or written without a manifest)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        return [f"{path}: unreadable manifest ({error})"]
    problems = []
    for name, expected in entries.items():
        file = folder / name
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif file.stat().st_size != expected["bytes"]:
            problems.append(f"{file}: {file.stat().st_size} bytes, {expected['bytes']} written")
        elif file_digest(file) != expected["sha256"]:
            problems.append(f"{file}: content differs from what was written (SHA-256)")
    return problems
