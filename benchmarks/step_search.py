"""The step-aware solver schedule section of BENCHMARKS.md, read from `step_search.json` (written by
`python -m training.step_search`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .quality import TRAINING_DIGITS

RESULTS_FILE = "step_search.json"


def report_section(search: dict[str, Any], results: Path) -> list[str]:
    full, best = search["full"], search["best"]
    return [
        "\n## Step-aware compute: searched solver schedule vs uniform full effort\n",
        "The digits cUNet trained with `--solver_steps_choices 1 2 4` (`outputs/digits-steps`, 1,500 steps, the "
        f"first {TRAINING_DIGITS:,} digits), then `python -m training.step_search --pipeline outputs/digits-steps "
        f"--levels 1 2 4 --bins 5 --samples 200` ({search['scheduler']}, {search['num_inference_steps']} steps, "
        f"bound: FD at most {search['tolerance']:.0%} above full effort; {len(search['trials'])} schedules scored "
        f"in {search['search_seconds']:.0f} s). Same noise for every schedule.\n",
        "| schedule (Euler steps per bin, low t to high t) | ODE evals/sample | GFLOPs/sample | s/sample | FD |",
        "|---|---:|---:|---:|---:|",
        f"| uniform full {full['steps_per_bin']} | {full['evaluations_per_sample']} | {full['gflops_per_sample']:.2f} "
        f"| {full['seconds_per_sample']:.3f} | {full['frechet_distance']:.1f} |",
        f"| searched {best['steps_per_bin']} | {best['evaluations_per_sample']} | {best['gflops_per_sample']:.2f} "
        f"| {best['seconds_per_sample']:.3f} | {best['frechet_distance']:.1f} |",
        f"\n{search['evaluation_saving']:.0%} fewer ODE evaluations, Fréchet distance {search['fd_change']:+.1%}.\n",
        "![every schedule tried](benchmarks/results/step_search.png)\n",
    ]
