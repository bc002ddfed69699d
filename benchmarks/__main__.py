"""Run the benchmarks side by side and write BENCHMARKS.md.

    python -m benchmarks                 # quick mode: under 20 minutes on 2 CPU cores (make bench)
    python -m benchmarks --mode full     # to convergence: 14 runs of 1,000 steps or equal time, ~1.8 h on 2 cores
    python -m benchmarks --mode tiny     # seconds: the smoke test of the benchmark code
    python -m benchmarks.parallel        # the gpu mode: one process per model, side by side on one GPU

Results go to outputs/benchmarks/results/ (JSON + PNG) and outputs/benchmarks/BENCHMARKS.md; with --publish to
the tracked benchmarks/results/ and BENCHMARKS.md. Training runs go to outputs/bench/<mode>/ (or --runs): a run
started again resumes each model from its latest checkpoint and reads finished models back instead of retraining
them; delete that folder to train from scratch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import cost, paths, quality, report


def main(argv: list[str] | None = None) -> Path:
    parser = paths.benchmark_parser(__doc__, quality.MODES, "quick", only=True)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args(argv)
    args.results, args.report = paths.outputs(args)
    start = time.perf_counter()
    tiny = args.mode == "tiny"
    if not args.skip_cost:
        result = cost.run(repeats=1 if tiny else 5, sampling_steps=2 if tiny else 50, tiny=tiny)
        (args.results / cost.RESULTS_FILE).write_text(json.dumps(result, indent=2))
    if not args.skip_quality:
        runs = args.runs or paths.ROOT / "outputs" / "bench" / args.mode
        quality.run(args.mode, runs, args.results / quality.RESULTS_FILE, only=args.only)
    print(f"Results: {paths.shown(args.results)}/ (cost.json, quality.json, *.png)")
    return report.finish(
        paths.BenchmarkRun("Benchmarks", "benchmarks", args, args.results, args.report, start, default_mode="quick")
    )


if __name__ == "__main__":
    main()
