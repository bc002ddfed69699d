"""Train and score the quality benchmark's models side by side, one process per model, and merge the results.

Small models leave a GPU mostly idle (a training step of the digits models is mostly kernel launches), so twelve
processes on one H100 train twelve models in little more than the time of one. Their training times are then
shared-GPU times: compare quality at equal steps (the curves), not wall time, between such runs.

    python -m benchmarks.parallel --output outputs/benchmarks/gpu          # the gpu mode's 12 models
    python -m benchmarks.parallel --mode tiny --output /tmp/x --deadline 600   # the CPU smoke test

Writes OUTPUT/quality.json (every finished model; `unfinished` names the others), the report OUTPUT/BENCHMARKS.md
with its plots, and OUTPUT/log.txt (every process's output, one after another).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import quality, report

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(quality.MODES), default="gpu")
    parser.add_argument("--output", type=Path, required=True, help="where the merged results and report go")
    parser.add_argument("--runs", type=Path, default=None, help="training runs (default outputs/bench/<mode>)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="these models only")
    parser.add_argument("--deadline", type=float, default=3600, help="seconds after which unfinished runs stop")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    args = parser.parse_args(argv)
    names = [v.name for v in quality.variants(args.mode) if not args.only or v.name in args.only]
    if not names:
        parser.error(f"no {args.mode}-mode models named {args.only}")
    runs = args.runs or ROOT / "outputs" / "bench" / args.mode
    parts = runs / "parts"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    processes = {}
    for name in names:
        (parts / name).mkdir(parents=True, exist_ok=True)
        folder = parts / name
        command = [sys.executable, "-m", "benchmarks", "--mode", args.mode, "--skip-cost", "--only", name,
                   "--results", str(folder), "--report", str(folder / "report.md"), "--runs", str(runs)]  # fmt: skip
        log = open(parts / name / "log.txt", "w")  # noqa: SIM115  (closed below, after the process ends)
        processes[name] = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    print(f"{len(names)} processes started: {', '.join(names)}", flush=True)
    for name, (process, log) in processes.items():
        try:
            process.wait(timeout=max(1.0, args.deadline - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        print(f"{name}: exit {process.returncode} after {time.monotonic() - start:.0f} s", flush=True)
    return merge(args, names, parts, time.monotonic() - start)


def merge(args, names: list[str], parts: Path, seconds: float) -> dict:
    args.output.mkdir(parents=True, exist_ok=True)
    results = [
        json.loads((parts / n / "quality.json").read_text()) for n in names if (parts / n / "quality.json").is_file()
    ]
    logs = [f"===== {n}\n" + (parts / n / "log.txt").read_text()[-20000:] for n in names]
    (args.output / "log.txt").write_text("\n".join(logs))
    if not results:
        raise SystemExit(f"no model finished; see {args.output / 'log.txt'}")
    merged = {**results[0], "runs": [run for result in results for run in result["runs"]]}
    merged["unfinished"] = [n for n in names if not (parts / n / "quality.json").is_file()]
    merged["processes_side_by_side"] = len(names)
    merged["wall_seconds"] = seconds
    (args.output / "quality.json").write_text(json.dumps(merged, indent=2))
    notes = [f"{len(names)} models trained side by side, one process each, on one {merged.get('device', 'device')}: "
             "training times are shared-device times."]  # fmt: skip
    report.write(
        args.output, args.output / "BENCHMARKS.md", f"python -m benchmarks.parallel --mode {args.mode}", notes
    )
    return merged


if __name__ == "__main__":
    main()
