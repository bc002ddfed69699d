"""Writing a text file so that a reader never sees half of it: to a temporary file beside it, then a rename."""

from __future__ import annotations

import os
from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    """Write `text` to `path` through `path` + `.tmp` and an atomic rename."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
