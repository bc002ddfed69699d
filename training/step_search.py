"""Search a `SolverStepSchedule`: the fewest ODE evaluations per sample whose Fréchet distance stays within a
bound of the full-effort setting, for one scheduler and step count.

    python -m training.step_search --pipeline outputs/digits-steps --levels 1 2 4 --bins 5

Greedy, in two passes, because an evolutionary search (DDSM's) needs hundreds of sample-and-score rounds and
this must finish in minutes on 2 CPU cores: (1) sensitivity: lower one bin at a time to each cheaper level,
everything else at full effort, and score; (2) accumulate the reductions from the least to the most harmful
per evaluation saved, keeping each one only if the whole schedule still meets the bound (a bin cut once may be
cut deeper later). Every evaluation uses the same noise (common random numbers), so differences between
schedules are not sampling noise. At most 1 + 2 x bins x (levels - 1) evaluations.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from diffusers_cunet.step_schedule import SolverStepSchedule
from evaluation.search_scoring import ScheduleEvaluator, Trial


def greedy_reduction(evaluate, full, moves, apply, tolerance: float, score, cost, describe, log=print):
    """The two-pass greedy search shared by the step and the block-skip searches.

    (1) sensitivity: each move alone on the full-effort schedule; (2) the moves from the least to the most harmful
    per unit of cost saved, each kept only if the whole schedule still scores within `tolerance` of full effort.

    Args:
        evaluate: schedule -> trial.
        full: the trial of the full-effort schedule.
        moves: the candidate reductions (sortable: ties go to the smaller move).
        apply: (schedule, move) -> the reduced schedule, or `None` where the move no longer reduces it.
        score, cost: trial -> the score (lower is better) and the cost that reductions save.
        describe: move -> text for the log.

    Returns:
        (best trial found, every trial).
    """
    bound = score(full) * (1 + tolerance)
    log(f"full effort: score {score(full):.2f}, cost {cost(full):.4g}; bound {bound:.2f}")
    trials = [full]
    candidates = []
    for move in moves:
        trial = evaluate(apply(full.schedule, move))
        trials.append(trial)
        saved = cost(full) - cost(trial)
        candidates.append(((score(trial) - score(full)) / max(saved, 1e-12), move))
        log(f"{describe(move)}: score {score(trial):.2f}")
    best = full
    for _, move in sorted(candidates):
        schedule = apply(best.schedule, move)
        if schedule is None:
            continue
        trial = evaluate(schedule)
        trials.append(trial)
        if score(trial) <= bound:
            trial.accepted = True
            best = trial
            log(f"keep {describe(move)}: score {score(trial):.2f}, cost {cost(trial):.4g}")
    return best, trials


def greedy_search(
    evaluate, bins: int, levels: list[int], tolerance: float, method: str = "euler", log=print
) -> tuple[Trial, Trial, list[Trial]]:
    """Returns (full-effort trial, best schedule found, every trial). Moves lower one bin to a cheaper step count;
    a bin already cut may still be cut deeper."""
    levels = sorted(set(levels))
    full = evaluate(SolverStepSchedule.from_steps([levels[-1]] * bins, method))

    def apply(schedule: SolverStepSchedule, move: tuple[int, int]) -> SolverStepSchedule | None:
        level, index = move
        if level >= schedule.settings[index]["steps"]:
            return None
        return schedule.with_bin(index, {"method": method, "steps": level})

    moves = [(level, index) for index in range(bins) for level in levels[:-1]]  # ties: the deeper cut first
    best, trials = greedy_reduction(
        evaluate, full, moves, apply, tolerance,
        score=lambda trial: trial.frechet_distance, cost=lambda trial: trial.evaluations_per_sample,
        describe=lambda move: f"bin {move[1]} at {move[0]} step(s)", log=log,
    )  # fmt: skip
    return full, best, trials


def plot_trials(result: dict[str, Any], path: Path) -> None:
    """Fréchet distance against ODE evaluations per sample for every schedule tried."""
    from training.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    trials = result["trials"]
    ax.scatter([t["evaluations_per_sample"] for t in trials], [t["frechet_distance"] for t in trials],
               c="lightgray", label="tried")  # fmt: skip
    kept = [t for t in trials if t["accepted"]]
    ax.plot([t["evaluations_per_sample"] for t in kept], [t["frechet_distance"] for t in kept], "o-", label="kept")
    full, best = result["full"], result["best"]
    ax.scatter([full["evaluations_per_sample"]], [full["frechet_distance"]], marker="s", s=80, label="uniform full")
    ax.scatter([best["evaluations_per_sample"]], [best["frechet_distance"]], marker="*", s=160, label="searched")
    ax.axhline(full["frechet_distance"] * (1 + result["tolerance"]), ls="--", c="k", lw=0.8, label="bound")
    ax.set(xlabel="ODE function evaluations per sample", ylabel="Fréchet distance (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TRAINING_RECORD = "metrics.json"  # written by training/train.py beside the pipeline; names the training data


def check_judgeable(unet, folder: Path, trained_on_digits: bool = False) -> None:
    """Refuse a model whose samples cannot be scored against scikit-learn's greyscale digits: a colour model, or
    one whose training record names other data (or has none, unless the user vouches with --trained_on_digits)."""
    if unet.config.in_channels != 1:
        raise ValueError(
            f"{folder} holds a {unet.config.in_channels}-channel model: the step search scores samples against "
            "scikit-learn's greyscale digits and cannot judge it."
        )
    if trained_on_digits:
        return
    record = folder / TRAINING_RECORD
    data = json.loads(record.read_text()).get("training_data") if record.is_file() else None
    if data != "digits":
        found = f"{record} names {data!r}" if data else f"{record} does not say what it was trained on"
        raise ValueError(
            f"The step search scores samples against scikit-learn's digits, but {found}. It judges only models "
            "trained on the embedded digits; pass --trained_on_digits if this one was."
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from diffusers import DDIMScheduler

    from diffusers_cunet.pipelines import ContinuousUNetPipeline
    from evaluation.digits import HELD_OUT_DIGITS, held_out_digits

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="folder of a saved pipeline trained on the digits")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4], help="solver step counts to choose from")
    parser.add_argument("--method", default="euler")
    parser.add_argument("--bins", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed relative rise of the FD")
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--held_out", type=int, default=HELD_OUT_DIGITS, help="the last N digits, never trained on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--trained_on_digits",
        action="store_true",
        help=f"vouch that the model was trained on the digits when its folder has no {TRAINING_RECORD} saying so",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="results JSON (default: <pipeline>/step_search.json)"
    )
    args = parser.parse_args(argv)

    print(f"Loading {args.pipeline} ...", flush=True)
    pipe = ContinuousUNetPipeline.from_pretrained(args.pipeline)
    check_judgeable(pipe.unet, Path(args.pipeline), args.trained_on_digits)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(desc="sampling", leave=False)  # one bar per scored schedule: minutes in all
    print(f"Fitting the digit feature network on all but the last {args.held_out} digits ...", flush=True)
    digits = held_out_digits(pipe.unet.config.sample_size, args.held_out, args.seed)
    evaluate = ScheduleEvaluator(pipe, digits.real, digits.feature_net, args.samples, args.num_inference_steps,
                                 args.seed)  # fmt: skip
    most = 1 + 2 * args.bins * (len(set(args.levels)) - 1)
    print(f"Scoring at most {most} schedules of {args.samples} samples x {args.num_inference_steps} steps ...")
    start = time.perf_counter()
    full, best, trials = greedy_search(evaluate, args.bins, args.levels, args.tolerance, args.method)
    best.schedule.save_pretrained(args.pipeline)
    result = {
        "search_seconds": time.perf_counter() - start,
        "scheduler": "DDIMScheduler",
        "num_inference_steps": args.num_inference_steps,
        "tolerance": args.tolerance,
        "full": full.to_dict(),
        "best": best.to_dict(),
        "evaluation_saving": 1 - best.evaluations_per_sample / full.evaluations_per_sample,
        "fd_change": best.frechet_distance / full.frechet_distance - 1,
        "trials": [t.to_dict() for t in trials],
    }
    output = args.output or Path(args.pipeline) / "step_search.json"
    output.write_text(json.dumps(result, indent=2))
    plot_trials(result, output.with_suffix(".png"))
    print(
        f"searched schedule {result['best']['steps_per_bin']}: {best.evaluations_per_sample} vs "
        f"{full.evaluations_per_sample} evaluations per sample ({result['evaluation_saving']:.0%} fewer), FD "
        f"{best.frechet_distance:.2f} vs {full.frechet_distance:.2f} ({result['fd_change']:+.1%}); "
        f"{result['search_seconds']:.0f} s. Schedule saved to {args.pipeline}/solver_schedule.json"
    )
    return result


def run_command_line(main) -> None:
    """Run a search's `main` as a command: an input problem (a `ValueError`) is one line and exit status 2, as the
    trainer's."""
    import sys

    try:
        main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_command_line(main)
