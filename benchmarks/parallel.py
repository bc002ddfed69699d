"""Train and score a benchmark's models side by side, one process per model, and merge the results.

Small models leave a GPU mostly idle (a training step of the digits models is mostly kernel launches), so twelve
processes on one H100 train twelve models in little more than the time of one. Their training times are then
shared-GPU times: compare quality at equal steps (the curves), not wall time, between such runs.

    python -m benchmarks.parallel --output outputs/benchmarks/gpu                         # digits, gpu mode
    python -m benchmarks.parallel --benchmark fashion --output outputs/benchmarks/fashion-gpu   # Fashion-MNIST
    python -m benchmarks.parallel --mode tiny --output /tmp/x --deadline 600              # the CPU smoke test

A model timed from others (an equal-time run) starts when they have finished, with them named too (read back, not
retrained). Writes OUTPUT/<results file> (every finished model; `unfinished` names the others), the report
OUTPUT/BENCHMARKS.md with its plots, and OUTPUT/log.txt (every process's output, one after another). Exits non-zero,
with each failed model's last error line, when any model fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import fashion, paths, quality, report

# benchmark -> (module run per model, its modes and variants, the results file it writes)
BENCHMARKS = {
    "quality": ("benchmarks", quality, quality.RESULTS_FILE),
    "fashion": ("benchmarks.fashion", fashion, fashion.RESULTS_FILE),
}


def dependencies(variant) -> list[str]:
    """The models `variant` is timed from (an equal-time run's), which must finish before it starts."""
    return list(variant.equal_time[:2]) if variant.equal_time else []


def last_error_line(log: Path) -> str:
    """The line of a failed process's log that says why: the last one naming an error, else the last one."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line or "error" in line]
    return (named or lines or ["(no output)"])[-1][:300]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="quality")
    parser.add_argument("--mode", default="gpu", help="a mode of the benchmark (quality: tiny, quick, full, gpu; "
                        "fashion: tiny, cpu, gpu)")  # fmt: skip
    parser.add_argument("--output", type=Path, required=True, help="where the merged results and report go")
    parser.add_argument("--runs", type=Path, default=None, help="training runs (default outputs/bench/<mode>)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="these models only")
    parser.add_argument("--deadline", type=float, default=3600, help="seconds after which unfinished runs stop")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    args = parser.parse_args(argv)
    module_name, benchmark, results_file = BENCHMARKS[args.benchmark]
    if args.mode not in benchmark.MODES:
        parser.error(f"the {args.benchmark} benchmark has no mode {args.mode!r}; it has {sorted(benchmark.MODES)}")
    chosen = [v for v in benchmark.variants(args.mode) if not args.only or v.name in args.only]
    if not chosen:
        parser.error(f"no {args.mode}-mode models named {args.only}")
    prefix = "" if args.benchmark == "quality" else f"{args.benchmark}-"
    runs = args.runs or paths.ROOT / "outputs" / "bench" / f"{prefix}{args.mode}"
    parts = runs / "parts"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    extra = ["--skip-cost"] if args.benchmark == "quality" else []
    start = time.monotonic()
    timed_from = {variant.name: dependencies(variant) for variant in chosen}
    # a model waits for the ones it is timed from that run here; the others its own process trains first
    waiting = {name: [d for d in deps if d in timed_from] for name, deps in timed_from.items()}
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    status: dict[str, str] = {}  # name -> "ok" or why it failed

    def launch(name: str) -> None:
        folder = parts / name
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", module_name, "--mode", args.mode, *extra, "--only", *timed_from[name], name,
                   "--results", str(folder), "--report", str(folder / "report.md"), "--runs", str(runs)]  # fmt: skip
        log = open(folder / "log.txt", "w")  # noqa: SIM115  (closed when the process ends)
        running[name] = (subprocess.Popen(command, cwd=paths.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        print(f"started {name}", flush=True)

    while waiting or running:
        for name in [n for n, deps in waiting.items() if all(status.get(d) == "ok" for d in deps)]:
            launch(name)
        for name in list(waiting):
            if name in running:
                del waiting[name]
            else:
                failed = [d for d in waiting[name] if d in status and status[d] != "ok"]
                if failed:
                    status[name] = f"not started: {failed[0]} failed"
                    del waiting[name]
        for name, (process, log) in list(running.items()):
            if time.monotonic() - start > args.deadline and process.poll() is None:
                process.kill()
            if process.poll() is None:
                continue
            log.close()
            del running[name]
            log_path = parts / name / "log.txt"
            status[name] = (
                "ok" if process.returncode == 0 else f"exit {process.returncode}: {last_error_line(log_path)}"
            )
            print(f"{name}: {status[name]} after {time.monotonic() - start:.0f} s", flush=True)
        time.sleep(0.5)
    failures = {name: why for name, why in status.items() if why != "ok"}
    for name, why in failures.items():
        print(f"FAILED {name}: {why}", file=sys.stderr)
    merged = merge(args, [v.name for v in chosen], parts, results_file, time.monotonic() - start)
    if failures:
        raise SystemExit(1)
    return merged


def merge(args, names: list[str], parts: Path, results_file: str, seconds: float) -> dict:
    """Every model's own row (a part also holds the rows of the models it was timed from) into one results file."""
    args.output.mkdir(parents=True, exist_ok=True)
    logs = [f"===== {n}\n" + (parts / n / "log.txt").read_text()[-20000:] for n in names if (parts / n).is_dir()]
    (args.output / "log.txt").write_text("\n".join(logs))
    results = {n: json.loads((parts / n / results_file).read_text()) for n in names
               if (parts / n / results_file).is_file()}  # fmt: skip
    rows = [next(run for run in result["runs"] if run["name"] == n) for n, result in results.items()]
    if not rows:
        raise SystemExit(f"no model finished; see {args.output / 'log.txt'}")
    merged = {**next(iter(results.values())), "runs": rows}
    merged["unfinished"] = [n for n in names if n not in results]
    merged["processes_side_by_side"] = len(names)
    merged["wall_seconds"] = seconds
    (args.output / results_file).write_text(json.dumps(merged, indent=2))
    notes = [f"{len(names)} models trained side by side, one process each, on one {merged.get('device', 'device')}: "
             "training times are shared-device times."]  # fmt: skip
    command = f"python -m benchmarks.parallel --benchmark {args.benchmark} --mode {args.mode}"
    report.write(args.output, args.output / "BENCHMARKS.md", command, notes)
    return merged


if __name__ == "__main__":
    main()
