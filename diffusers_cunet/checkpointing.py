"""Training checkpoints that lose nothing: written atomically, rotated, and found again on resume.

`accelerator.save_state` writes into a hidden `.checkpoint-N.partial` folder; only when every process has
finished is it renamed to `checkpoint-N` (a rename within one file system is atomic). A run killed while
writing leaves at most a partial folder, which is ignored and cleaned up, and the previous checkpoint intact.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: str | os.PathLike) -> int:
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{str(path)!r} is not a checkpoint folder (expected a name like 'checkpoint-500').")
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(output_dir: str | os.PathLike, spec: str | None) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names: `latest` (or `None` if there is none yet) or a path."""
    if spec is None:
        return None
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(spec)
    if not path.is_dir():
        path = Path(output_dir) / spec
    if not path.is_dir():
        raise ValueError(f"Checkpoint {spec!r} does not exist (looked in {Path(spec)} and {path}).")
    checkpoint_step(path)
    return path


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None) -> Path:
    """Save the full training state of `accelerator` as `output_dir/checkpoint-<step>`, atomically.

    Must be called on every process. Older checkpoints beyond `total_limit` are deleted after the new one
    is complete.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # only when a run re-saves a step it already saved: keep the newer state
            shutil.rmtree(final)
        os.replace(partial, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def remove_partial_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Delete folders left by a run killed while it wrote a checkpoint; returns what was removed."""
    folder = Path(output_dir)
    removed = sorted(folder.glob(".checkpoint-*.partial")) if folder.is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
