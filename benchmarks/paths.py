"""Where the benchmarks write. By default into the untracked `outputs/benchmarks/`, so a run never overwrites the
committed results; `--publish` writes the tracked `benchmarks/results/` and `BENCHMARKS.md` instead."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_RESULTS = ROOT / "benchmarks" / "results"
PUBLISHED_REPORT = ROOT / "BENCHMARKS.md"
OUTPUT = ROOT / "outputs" / "benchmarks"


@dataclass(frozen=True)
class BenchmarkRun:
    """A finished benchmark run, as its `main` returns it: what `report.finish` needs to rewrite the report and say
    how long the run took. (The benchmarks below `report` cannot call it themselves: `report` imports them all for
    their sections, so their command lines call `report.finish(main())`.)"""

    label: str  # how the closing line names the benchmark
    module: str  # how it is run: python -m <module>
    args: argparse.Namespace
    results: Path
    report_file: Path
    start: float  # time.perf_counter() when it began
    default_mode: str | None = None  # a mode the report's command line leaves unsaid


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
