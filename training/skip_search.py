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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffusers_cunet.flops import count_call_flops
from diffusers_cunet.pipelines.scheduler_support import is_edm_scheduler
from diffusers_cunet.step_schedule import SolverStepSchedule
from evaluation.distances import fid_and_kid
from evaluation.fashion_scores import generate, judge_features, sample_scores, test_image_features
from training.step_search import greedy_reduction, run_command_line

RESULTS_FILE = "skip_search.json"


@dataclass
class SkipTrial:
    """One scored schedule."""

    schedule: SolverStepSchedule
    fid: float
    gflops_per_sample: float
    evaluations_per_sample: int | None
    seconds_per_sample: float
    accepted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "skip_per_bin": [list(self.schedule.skipped(i)) for i in range(self.schedule.num_bins)],
            "fid": self.fid,
            "gflops_per_sample": self.gflops_per_sample,
            "evaluations_per_sample": self.evaluations_per_sample,
            "seconds_per_sample": self.seconds_per_sample,
            "accepted": self.accepted,
        }


def full_schedule(pipeline, bins: int) -> SolverStepSchedule:
    """Every bin at the model's own solver settings, no block skipped, binned as the pipeline's scheduler passes
    timesteps: by c_noise over its sigma range for an EDM scheduler, by integer timestep otherwise."""
    unet, config = pipeline.unet, pipeline.scheduler.config
    settings = [{"method": unet.solver.method, "steps": unet.solver.steps}] * bins
    if is_edm_scheduler(pipeline.scheduler):
        return SolverStepSchedule.for_edm(settings, config.sigma_min, config.sigma_max)
    return SolverStepSchedule(tuple(settings), config.num_train_timesteps)


class SampleEvaluator:
    """Samples with a pipeline under given call options on fixed seeds and scores them with the judge.

    Args:
        pipeline: a `ContinuousUNetPipeline` with the scheduler to search for.
        judge: the Fashion-MNIST judge (`evaluation.fashion_judge.load_judge()`).
        real_features: the judge's features of the real test images.
        num_samples, num_inference_steps, seed, batch_size: the sampling of every scored setting.
    """

    def __init__(self, pipeline, judge, real_features: torch.Tensor, num_samples: int, num_inference_steps: int,
                 seed: int = 0, batch_size: int = 250):  # fmt: skip
        self.pipeline = pipeline
        self.judge = judge
        self.real_features = real_features
        self.num_samples = num_samples
        self.num_inference_steps = num_inference_steps
        self.seed = seed
        self.batch_size = batch_size

    def gflops_per_sample(self, **call_options) -> float:
        """GFLOPs of sampling one image with these options: every network call of a whole pipeline call, counted."""
        self.pipeline.set_progress_bar_config(disable=True)
        call = lambda: self.pipeline(batch_size=1, num_inference_steps=self.num_inference_steps,  # noqa: E731
                                     output_type="pt", generator=torch.Generator().manual_seed(self.seed),
                                     **call_options)  # fmt: skip
        return count_call_flops(call) / 1e9

    def evaluations_per_sample(self, **call_options) -> int | None:
        out = self.pipeline(batch_size=1, num_inference_steps=self.num_inference_steps, output_type="pt",
                            generator=torch.Generator().manual_seed(self.seed), **call_options)  # fmt: skip
        return out.ode_evaluations

    def samples(self, seed: int | None = None, **call_options) -> tuple[torch.Tensor, float]:
        seed = self.seed if seed is None else seed
        return generate(self.pipeline, self.num_samples, self.num_inference_steps, seed, self.batch_size,
                        **call_options)  # fmt: skip

    def fid(self, images: torch.Tensor) -> float:
        return fid_and_kid(self.real_features, judge_features(self.judge, images))["fid"]

    def scores(self, seed: int | None = None, **call_options) -> dict[str, Any]:
        """Every judge score of the samples with these options, with their GFLOPs, ODE evaluations and time."""
        images, seconds = self.samples(seed, **call_options)
        result = sample_scores(self.judge, None, images, real_features=self.real_features)
        result.update(
            gflops_per_sample=self.gflops_per_sample(**call_options),
            evaluations_per_sample=self.evaluations_per_sample(**call_options),
            sampling_s_per_image=seconds,
            sampling_steps=self.num_inference_steps,
        )
        return result

    def __call__(self, schedule: SolverStepSchedule) -> SkipTrial:
        images, seconds = self.samples(solver_schedule=schedule)
        return SkipTrial(schedule, self.fid(images), self.gflops_per_sample(solver_schedule=schedule),
                         self.evaluations_per_sample(solver_schedule=schedule), seconds)  # fmt: skip


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
