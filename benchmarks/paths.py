"""Where the benchmarks write. By default into the untracked `outputs/benchmarks/`, so a run never overwrites the
committed results; `--publish` writes the tracked `benchmarks/results/` and `BENCHMARKS.md` instead."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_RESULTS = ROOT / "benchmarks" / "results"
PUBLISHED_REPORT = ROOT / "BENCHMARKS.md"
OUTPUT = ROOT / "outputs" / "benchmarks"


def add_publish_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--publish",
        action="store_true",
        help=f"write the tracked {shown(PUBLISHED_RESULTS)}/ (and BENCHMARKS.md) instead of {shown(OUTPUT)}/",
    )


def results_dir(publish: bool) -> Path:
    return PUBLISHED_RESULTS if publish else OUTPUT / "results"


def report_path(publish: bool) -> Path:
    return PUBLISHED_REPORT if publish else OUTPUT / "BENCHMARKS.md"


def shown(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (for messages and the report)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
