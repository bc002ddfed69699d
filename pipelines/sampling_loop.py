"""The pipelines' sampling loop: the scheduler's steps over one network (bridged to the scheduler's objective,
guided where asked, with per-step solver settings and reused deep features where given), counting the ODE
function evaluations it costs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..feature_cache import DeepFeatureCache
from ..guidance import GuidedNetwork
from .objective_bridge import ObjectiveBridge
from .scheduler_support import is_edm_scheduler, seed_noise_sampler, step_kwargs

# `solver_schedule(step_index, timestep)` -> ODE-solver settings for that denoising step, or None.
SolverSchedule = Callable[[int, int], Mapping[str, Any] | None]


def model_kwargs(labels, settings: Mapping[str, Any] | None, cache: DeepFeatureCache | None = None) -> dict[str, Any]:
    """The keyword arguments of a network call: class labels, this denoising step's solver settings and the
    feature cache, each where there is one."""
    kwargs: dict[str, Any] = {} if labels is None else {"class_labels": labels}
    if settings is not None:
        kwargs["solver"] = settings
    if cache is not None:
        kwargs["feature_cache"] = cache
    return kwargs


class EvaluationTally:
    """ODE function evaluations per image over one pipeline call.

    A fixed-grid solve costs what its settings say (`unet.evaluations_per_call(settings)`), so those calls are
    counted from the settings: right for eager, `torch.compile`d and CUDA-graph-replayed models alike. Adaptive
    solves have data-dependent costs; then the model's own (eager) counter is read around the call instead. A call
    that carries each image `copies` times (classifier-free guidance: conditional and unconditional) counts that many
    times. `None` for a network without ODE blocks (e.g. `UNet2DModel`).
    """

    def __init__(self, unet):
        self.per_call = getattr(unet, "evaluations_per_call", None)
        self.unet = unet
        self.fixed = 0
        self.adaptive = 0
        if self.per_call is not None:
            unet.ode_function_evaluations(reset=True)
        self._counted = 0  # the model's counter after the last call

    def add(self, settings: Mapping[str, Any] | None, top_levels: int | None = None, copies: int = 1) -> None:
        """Count one network call with `settings`; `top_levels` for a call that reused cached deep features."""
        if self.per_call is None:
            return
        evaluations = self.per_call(settings) if top_levels is None else self.per_call(settings, top_levels)
        counter = self.unet.ode_function_evaluations()
        if evaluations is None:
            self.adaptive += (counter - self._counted) * copies
        else:
            self.fixed += evaluations * copies
        self._counted = counter

    @property
    def total(self) -> int | None:
        if self.per_call is None:
            return None
        return self.fixed + self.adaptive


def check_schedule_kind(solver_schedule, scheduler) -> None:
    """Raise when a `SolverStepSchedule`'s bins divide timesteps of another kind than `scheduler` passes."""
    kind = getattr(solver_schedule, "timestep_kind", None)
    if kind is None:
        return  # a plain callable: it sees whatever the scheduler's timesteps are
    edm = is_edm_scheduler(scheduler)
    if edm and kind == "discrete":
        raise ValueError(
            "This SolverStepSchedule bins the integer timesteps of a discrete schedule; with an EDM scheduler the "
            "model's timestep is c_noise = log(sigma) / 4: build one with SolverStepSchedule.for_edm(...)."
        )
    if not edm and kind == "c_noise":
        raise ValueError(
            "This SolverStepSchedule bins c_noise = log(sigma) / 4 (for EDM schedulers), but "
            f"{type(scheduler).__name__} passes integer timesteps: sample with an EDM scheduler, or use a "
            "schedule binned by timestep."
        )


def reverse_process(
    pipeline,
    sample,
    timesteps,
    labels,
    solver_schedule,
    generator,
    cache_interval=None,
    cache=None,
    guided: GuidedNetwork | None = None,
    on_step_end: Callable[[int, Any, torch.Tensor], torch.Tensor] | None = None,
):
    """Run `pipeline.unet` and `pipeline.scheduler` over `timesteps` from `sample`; returns the final sample and
    the ODE function evaluations per image. The scheduler decides how its input is scaled and how a step is taken;
    a model trained on the other objective (EDM vs discrete VP) is bridged to it (`objective_bridge`). With a
    feature `cache`, network call i runs whole when i is a multiple of `cache_interval` and reuses the deep
    features otherwise. With `guided`, the network is asked through it (classifier-free guidance). `on_step_end(i,
    t, sample)`, where given, is called after each step and returns the sample to go on from."""
    check_schedule_kind(solver_schedule, pipeline.scheduler)
    scheduler, unet = pipeline.scheduler, pipeline.unet
    network = guided if guided is not None else unet
    extra = step_kwargs(scheduler, generator)
    seed_noise_sampler(scheduler, generator)
    tally = EvaluationTally(unet)
    edm = is_edm_scheduler(scheduler)
    bridge = ObjectiveBridge(unet, scheduler, getattr(pipeline, "model_schedule", None), timesteps, network)
    # A schedule is given the integer timestep of discrete schedulers, or c_noise = log(sigma) / 4 with an EDM
    # scheduler. They are read to the host once here, not once per step (each read would stall a GPU).
    host_timesteps = timesteps.tolist() if solver_schedule is not None else None
    guide_interval = guided is not None and guided.interval is not None
    for i, t in enumerate(pipeline.progress_bar(timesteps)):
        model_input = scheduler.scale_model_input(sample, t)  # step() advances the step index
        settings = None
        if solver_schedule is not None:
            settings = solver_schedule(i, float(host_timesteps[i]) if edm else int(host_timesteps[i]))
        if cache is not None:
            cache.refresh = i % cache_interval == 0
        if guide_interval:
            guided.for_sigma(bridge.sigmas[i])
        kwargs = model_kwargs(labels, settings, cache)
        prediction = bridge.predict(i, t, sample, model_input, kwargs)  # in the scheduler's terms, whatever the model
        top_levels = cache.levels if cache is not None and cache.reusing else None
        tally.add(settings, top_levels, guided.copies if guided is not None else 1)
        sample = scheduler.step(prediction, t, sample, **extra).prev_sample
        if on_step_end is not None:
            sample = on_step_end(i, t, sample)
    return sample, tally.total
