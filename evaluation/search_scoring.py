"""The searches' scoring: a pipeline sampled on fixed seeds (common random numbers) under one schedule or set of call
options, scored against real images, with what that sampling costs (GFLOPs, ODE evaluations, seconds per image).

- `ScheduleEvaluator` -> `Trial`: a per-step solver schedule on the digits, Fréchet distance in the digit feature
  network's space (`training.step_search`).
- `SampleEvaluator` -> `SkipTrial`: a block-skip schedule (or any call options: feature reuse, fewer steps) on
  Fashion-MNIST, every judge score (`training.skip_search`, `benchmarks.step_aware`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from diffusers_cunet.flops import count_call_flops, count_forward_flops
from diffusers_cunet.step_schedule import SolverStepSchedule
from evaluation.digits import frechet_and_kid
from evaluation.distances import fid_and_kid
from evaluation.fashion_scores import balanced_labels, generate, judge_features, sample_scores


@dataclass
class Trial:
    """One scored per-step solver schedule (the step search's unit)."""

    schedule: SolverStepSchedule
    frechet_distance: float
    evaluations_per_sample: int
    gflops_per_sample: float
    seconds_per_sample: float
    accepted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps_per_bin": [s.get("steps") for s in self.schedule.settings],
            "frechet_distance": self.frechet_distance,
            "evaluations_per_sample": self.evaluations_per_sample,
            "gflops_per_sample": self.gflops_per_sample,
            "seconds_per_sample": self.seconds_per_sample,
            "accepted": self.accepted,
        }


class ScheduleEvaluator:
    """Samples with a pipeline under a schedule and scores the samples against real images."""

    def __init__(self, pipeline, real: torch.Tensor, feature_net, num_samples: int, num_inference_steps: int, seed=0):
        self.pipeline = pipeline
        self.real = real
        self.feature_net = feature_net
        self.num_samples = num_samples
        self.num_inference_steps = num_inference_steps
        self.seed = seed
        self._flops: dict[tuple, float] = {}

    def gflops_per_sample(self, schedule: SolverStepSchedule) -> float:
        self.pipeline.scheduler.set_timesteps(self.num_inference_steps)
        total = 0.0
        for t in self.pipeline.scheduler.timesteps:
            settings = schedule(0, int(t))
            key = tuple(sorted(settings.items()))
            if key not in self._flops:
                unet = self.pipeline.unet
                previous = unet.solver
                unet.set_solver(**settings)
                self._flops[key] = count_forward_flops(unet) / 1e9
                unet.set_solver(**vars(previous))
            total += self._flops[key]
        return total

    def __call__(self, schedule: SolverStepSchedule) -> Trial:
        start = time.perf_counter()
        out = self.pipeline(
            batch_size=self.num_samples,
            num_inference_steps=self.num_inference_steps,
            generator=torch.Generator().manual_seed(self.seed),
            solver_schedule=schedule,
            output_type="pt",
        )
        seconds = (time.perf_counter() - start) / self.num_samples
        fd = frechet_and_kid(self.real, out.images.cpu(), self.feature_net)["frechet_distance"]
        return Trial(schedule, fd, out.ode_evaluations, self.gflops_per_sample(schedule), seconds)


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
        # a class-conditional model is scored as the convergence queue scores it: labels balanced over the classes
        # at guidance scale 1 (its null class alone would score unconditional samples instead)
        conditional = bool(getattr(pipeline.unet.config, "num_class_embeds", None))
        self.class_labels = balanced_labels(num_samples) if conditional else None
        self._one_image = {"class_labels": self.class_labels[:1]} if conditional else {}

    def gflops_per_sample(self, **call_options) -> float:
        """GFLOPs of sampling one image with these options: every network call of a whole pipeline call, counted."""
        self.pipeline.set_progress_bar_config(disable=True)
        call = lambda: self.pipeline(batch_size=1, num_inference_steps=self.num_inference_steps,  # noqa: E731
                                     output_type="pt", generator=torch.Generator().manual_seed(self.seed),
                                     **self._one_image, **call_options)  # fmt: skip
        return count_call_flops(call) / 1e9

    def evaluations_per_sample(self, **call_options) -> int | None:
        out = self.pipeline(batch_size=1, num_inference_steps=self.num_inference_steps, output_type="pt",
                            generator=torch.Generator().manual_seed(self.seed), **self._one_image,
                            **call_options)  # fmt: skip
        return out.ode_evaluations

    def samples(self, seed: int | None = None, **call_options) -> tuple[torch.Tensor, float]:
        seed = self.seed if seed is None else seed
        return generate(self.pipeline, self.num_samples, self.num_inference_steps, seed, self.batch_size,
                        class_labels=self.class_labels, **call_options)  # fmt: skip

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
