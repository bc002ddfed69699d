"""BENCHMARKS.md assembled from the benchmarks' JSON results: each benchmark module (`benchmarks.cost`, `.gpu`,
`.convergence`, `.denoising_profile`, `.fashion`, `.step_aware`, `.guidance`, `.quality`, `.step_search`,
`.momentum`) renders its own section and plots; this module only puts them in order, and rewrites the report after a
benchmark's run (`finish`); publishing also renders the measured parts of README.md and docs/ again
(`benchmarks.pages`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import (
    convergence,
    cost,
    denoising_profile,
    fashion,
    gpu,
    guidance,
    momentum,
    pages,
    quality,
    step_aware,
    step_search,
)
from .paths import PUBLISHED_REPORT, PUBLISHED_RESULTS, BenchmarkRun, command_line, shown

# The report, in order: each section is written when its results file is in the results folder.
SECTIONS = (
    (cost.RESULTS_FILE, cost.report_section),
    (gpu.RESULTS_FILE, gpu.report_section),
    (convergence.RESULTS_FILE, convergence.report_section),
    (denoising_profile.RESULTS_FILE, denoising_profile.report_section),
    (fashion.RESULTS_FILE, fashion.report_section),
    (step_aware.RESULTS_FILE, step_aware.report_section),
    (guidance.RESULTS_FILE, guidance.report_section),
    (quality.RESULTS_FILE, quality.report_section),
    (step_search.RESULTS_FILE, step_search.report_section),
    (momentum.RESULTS_FILE, momentum.report_section),
)


# What produces the published report's sections, in their order: the published BENCHMARKS.md names these whichever
# of them ran last (each rewrites the whole report from every results file).
PUBLISH_COMMANDS = (
    "python -m benchmarks.cost --publish",
    "python -m benchmarks --mode full --skip-cost --publish",
    "python -m benchmarks.fashion --mode cpu --publish",
    "python -m benchmarks.step_aware --mode cpu --publish",
    "python -m benchmarks.guidance --mode cpu --publish",
    "python -m benchmarks.convergence --publish",
)


def write(results: Path, output: Path, command: str, notes: list[str] | None = None) -> Path:
    """BENCHMARKS.md (at `output`) from the JSON files in `results`, with their plots next to them. It says it was
    produced by `command`, or by every one of `PUBLISH_COMMANDS` when it is the published report."""
    if output.resolve() == PUBLISHED_REPORT.resolve():
        command = "; ".join(PUBLISH_COMMANDS)
    lines = [
        "# Benchmarks: continuous U-Net vs diffusers' UNet2DModel\n",
        f"Produced by `{command}` (see `benchmarks/`); raw numbers in `{shown(results)}/*.json`.\n",
    ]
    for file_name, report in SECTIONS:
        if (results / file_name).exists():
            lines += report(json.loads((results / file_name).read_text()), results)
    notes_file = results / "notes.md"  # hand-written reading of a run, dated; kept when the tables are rewritten
    if notes or notes_file.exists():
        lines += [
            "\n## Where the cUNet loses, and other notes\n",
            *(notes or []),
            notes_file.read_text() if notes_file.exists() else "",
        ]
    output.parent.mkdir(parents=True, exist_ok=True)
    # images are named from the repository root; links in the report are relative to where it lies
    text = "\n".join(lines).replace(f"]({shown(results)}/", f"]({os.path.relpath(results, output.parent)}/")
    output.write_text(text + "\n")
    if output.resolve() == PUBLISHED_REPORT.resolve() and results.resolve() == PUBLISHED_RESULTS.resolve():
        pages.write_pages(results)  # the README's and docs' numbers, from the same results
    return output


def finish(run: BenchmarkRun) -> Path:
    """After a benchmark's run: the report rewritten from every results file, and how long the run took."""
    path = write(run.results, run.report_file, command_line(run.module, run.args, run.default_mode))
    print(f"\n{run.label} ({run.args.mode}) took {time.perf_counter() - run.start:.0f} s; report: {shown(path)}",
          flush=True)  # fmt: skip
    return path
