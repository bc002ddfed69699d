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


def benchmark_parser(description: str, modes, default_mode: str, runs_help: str = "where the training runs go",
                     only: bool = False) -> argparse.ArgumentParser:  # fmt: skip
    """The options of a training benchmark: --mode, --publish, --results and --report to override where it writes,
    --runs for its training runs (and --only, to train and score some of its models)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(modes), default=default_mode)
    add_publish_option(parser)
    parser.add_argument("--results", type=Path, default=None, help="results folder (overrides --publish)")
    parser.add_argument("--report", type=Path, default=None, help="report file (overrides --publish)")
    parser.add_argument("--runs", type=Path, default=None, help=runs_help)
    if only:
        parser.add_argument(
            "--only", nargs="+", default=None, metavar="NAME", help="train and score only these models"
        )
    return parser


def outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The results folder (created) and the report file a benchmark writes, from its parsed options."""
    results = args.results or results_dir(args.publish)
    results.mkdir(parents=True, exist_ok=True)
    return results, args.report or report_path(args.publish)


def command_line(module: str, args: argparse.Namespace, default_mode: str | None = None) -> str:
    """How the report says the benchmark was run: the mode (unless it is `default_mode`) and --publish."""
    command = f"python -m {module}" + ("" if args.mode == default_mode else f" --mode {args.mode}")
    return command + (" --publish" if args.publish else "")


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
