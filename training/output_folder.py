"""A run's output folder belongs to one run: a new run refuses a folder that holds another's checkpoints or
exported pipeline, unless told to resume it or to remove it (`--overwrite_output_dir`, as transformers' Trainer
names it). Without this, a second run overwrote the first one's pipeline and left its checkpoints beside its own,
where `--resume_from_checkpoint latest` would later pick them."""

from __future__ import annotations

import shutil
from pathlib import Path

from diffusers_cunet.hub_code import INDEX_FILE, PIPELINE_CODE_FILE
from diffusers_cunet.step_schedule import SCHEDULE_FILE
from training.checkpointing import list_checkpoints

# What a run writes besides its checkpoints: the exported pipeline, its card, metrics and sample grids, its logs.
RUN_FILES = (INDEX_FILE, "metrics.json", "samples.png", "README.md", PIPELINE_CODE_FILE, SCHEDULE_FILE)
RUN_FOLDERS = ("unet", "scheduler", "samples", "logs", "process_logs")


def previous_run(output_dir: Path) -> list[str]:
    """What of an earlier run `output_dir` holds: its checkpoints and exported pipeline, by name."""
    found = [checkpoint.name for checkpoint in list_checkpoints(output_dir)]
    if (output_dir / INDEX_FILE).is_file():
        found.append(f"an exported pipeline ({INDEX_FILE})")
    return found


def check_output_dir(output_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds another (one line naming the folder and the ways out)."""
    if resume or overwrite:
        return
    found = previous_run(output_dir)
    if found:
        raise ValueError(
            f"--output_dir {output_dir} holds another run ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}):"
            " resume it with --resume_from_checkpoint latest, choose another --output_dir, or pass "
            "--overwrite_output_dir to remove its checkpoints and pipeline first."
        )


def clear_previous_run(output_dir: Path) -> list[str]:
    """Remove an earlier run's checkpoints and the files and folders a run writes (nothing else in the folder);
    returns what was removed."""
    removed = []
    for path in [*list_checkpoints(output_dir), *(output_dir / name for name in (*RUN_FILES, *RUN_FOLDERS))]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed
