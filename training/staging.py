"""Writing a run's exported pipeline so that a failed write leaves the previous one whole.

The export (pipeline folders, code files, grid, metrics, card) is written into `output_dir/.export.partial`
first. Only when all of it is written are its entries moved into `output_dir`, each with a rename (a folder:
the old one renamed aside, the new one renamed in, the old one removed). A full disk or any other write error
while staging removes the staging folder and raises `ExportWriteError`; what `output_dir` held is untouched.
Entries of `output_dir` that the export does not write (checkpoints, a searched `solver_schedule.json`) stay.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

STAGING_FOLDER = ".export.partial"
# what a failed write raises: the OS's errors, and safetensors' own wrapper of them ("I/O error: File too large")
WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError, SafetensorError)


class ExportWriteError(ValueError):
    """The exported pipeline could not be written; the previously exported one is intact."""


FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # no space left, file too large, quota exceeded
FULL_TEXTS = ("No space left", "File too large", "Disk quota")  # as safetensors reports them (no errno)


def remedy(error: BaseException) -> str:
    """What to do before trying again: free space when the disk or a limit was full, else fix what failed."""
    full = getattr(error, "errno", None) in FULL or any(text in str(error) for text in FULL_TEXTS)
    return "free space" if full else "fix the cause above"


@contextmanager
def staged_export(output_dir: Path) -> Iterator[Path]:
    """Yield the staging folder to write the export into; publish it into `output_dir` when the block succeeds."""
    staging = output_dir / STAGING_FOLDER
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        yield staging
    except WRITE_ERRORS as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportWriteError(
            f"Could not save the pipeline to {output_dir}: {error}. The pipeline saved there before (if any) is "
            f"untouched and the checkpoints hold this run: {remedy(error)} and run the same command again with "
            "--resume_from_checkpoint latest to export it."
        ) from error
    publish(staging, output_dir)


def publish(staging: Path, output_dir: Path) -> None:
    """Move every entry of `staging` into `output_dir`, each replaced by a rename, then remove `staging`."""
    for entry in sorted(staging.iterdir()):
        target = output_dir / entry.name
        if entry.is_dir() and target.is_dir():
            aside = output_dir / f".{entry.name}.old"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(target, aside)
            os.replace(entry, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    staging.rmdir()
