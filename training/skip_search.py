"""Search a block-skip schedule: which ODE blocks a cUNet may leave out in each timestep bin, found on the
Fashion-MNIST judge's FID, for one scheduler and step count.

    python -m training.skip_search --pipeline outputs/fashion-mnist --bins 4 --samples 500

A skipped block is integrated over zero time, i.e. it is the identity: the cUNet's own smaller sub-network, with
no new weights (DDSM, arXiv 2310.03337, trains a slimmable network for this and searches with an evolutionary
algorithm). Here the search is the greedy two-pass one of `training.step_search` (hundreds of sample-and-score
rounds do not fit in minutes on 2 CPU cores): the FID of skipping each block in each bin alone, then those moves
from the least to the most harmful per GFLOP saved, each kept while the FID stays within `tolerance` of the full
network's. Every schedule is scored on the same noise (common random numbers), and its cost is counted by the
FLOP counter over a whole sampling call. At most 2 x bins x blocks + 1 schedules are scored.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from diffusers_cunet.pipelines.scheduler_support import is_edm_scheduler
from diffusers_cunet.step_schedule import SolverStepSchedule
from evaluation.fashion_scores import test_image_features
from evaluation.search_scoring import SampleEvaluator, SkipTrial
from training.step_search import greedy_reduction, run_command_line

RESULTS_FILE = "skip_search.json"


def full_schedule(pipeline, bins: int) -> SolverStepSchedule:
    """Every bin at the model's own solver settings, no block skipped, binned as the pipeline's scheduler passes
    timesteps: by c_noise over its sigma range for an EDM scheduler, by integer timestep otherwise."""
    unet, config = pipeline.unet, pipeline.scheduler.config
    settings = [{"method": unet.solver.method, "steps": unet.solver.steps}] * bins
    if is_edm_scheduler(pipeline.scheduler):
        return SolverStepSchedule.for_edm(settings, config.sigma_min, config.sigma_max)
    return SolverStepSchedule(tuple(settings), config.num_train_timesteps)


def skip_search(evaluate, start: SolverStepSchedule, blocks, tolerance: float, log=print):
    """Returns (full-network trial, best schedule found, every trial). A move skips one more block in one bin."""
    full = evaluate(start)

    def apply(schedule: SolverStepSchedule, move: tuple[int, str]) -> SolverStepSchedule | None:
        index, block = move
        skipped = schedule.skipped(index)
        return None if block in skipped else schedule.with_skip(index, [*skipped, block])

    moves = [(index, block) for index in range(start.num_bins) for block in blocks]
    best, trials = greedy_reduction(
        evaluate, full, moves, apply, tolerance,
        score=lambda trial: trial.fid, cost=lambda trial: trial.gflops_per_sample,
        describe=lambda move: f"skip {move[1]} in bin {move[0]}", log=log,
    )  # fmt: skip
    return full, best, trials


def search_result(full: SkipTrial, best: SkipTrial, trials: list[SkipTrial], **settings) -> dict[str, Any]:
    return {
        **settings,
        "full": full.to_dict(),
        "best": best.to_dict(),
        "flop_saving": 1 - best.gflops_per_sample / full.gflops_per_sample,
        "fid_change": best.fid / full.fid - 1,
        "trials": [trial.to_dict() for trial in trials],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from diffusers_cunet.pipelines import ContinuousUNetPipeline
    from evaluation.fashion_judge import load_judge

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="folder of a saved cUNet pipeline trained on Fashion-MNIST")
    parser.add_argument("--bins", type=int, default=4)
    parser.add_argument("--blocks", nargs="+", default=None, help="the ODE blocks that may be skipped (default: all)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed relative rise of the FID")
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help=f"results JSON (default: <pipeline>/{RESULTS_FILE})")
    args = parser.parse_args(argv)

    pipe = ContinuousUNetPipeline.from_pretrained(args.pipeline)
    if not hasattr(pipe.unet, "ode_block_names"):
        raise ValueError(f"{args.pipeline} holds a {type(pipe.unet).__name__}: only a cUNet has ODE blocks to skip.")
    if pipe.unet.config.in_channels != 1 or pipe.unet.config.sample_size != 32:
        raise ValueError(f"{args.pipeline} is no 1-channel 32x32 model: the Fashion-MNIST judge cannot score it.")
    blocks = args.blocks or list(pipe.unet.ode_block_names)
    judge = load_judge()
    real_features = test_image_features()
    evaluate = SampleEvaluator(pipe, judge, real_features, args.samples, args.num_inference_steps, args.seed)
    print(f"Scoring at most {2 * args.bins * len(blocks) + 1} schedules of {args.samples} samples ...", flush=True)
    start = time.perf_counter()
    full, best, trials = skip_search(evaluate, full_schedule(pipe, args.bins), blocks, args.tolerance)
    best.schedule.save_pretrained(args.pipeline)
    result = search_result(full, best, trials, search_seconds=time.perf_counter() - start,
                           scheduler=type(pipe.scheduler).__name__, num_inference_steps=args.num_inference_steps,
                           samples=args.samples, tolerance=args.tolerance)  # fmt: skip
    output = args.output or Path(args.pipeline) / RESULTS_FILE
    output.write_text(json.dumps(result, indent=2))
    print(f"searched schedule {result['best']['skip_per_bin']}: {best.gflops_per_sample:.3f} vs "
          f"{full.gflops_per_sample:.3f} GFLOPs per sample ({result['flop_saving']:.0%} fewer), FID {best.fid:.2f} vs "
          f"{full.fid:.2f} ({result['fid_change']:+.1%}); saved to {args.pipeline}/solver_schedule.json")  # fmt: skip
    return result


if __name__ == "__main__":
    run_command_line(main)
