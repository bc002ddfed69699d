"""Small pieces shared by the pipelines: one network call, evaluation counting, labels, output types."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline

from ..class_names import label_ids
from ..feature_cache import DeepFeatureCache, check_cache_schedule
from ..guidance import NULL_CLASS_KEY, GuidedNetwork
from ..step_schedule import SCHEDULE_FILE, SolverStepSchedule
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


OUTPUT_TYPES = ("pt", "np", "pil")


def check_output_type(output_type: str) -> None:
    """Raise before any sampling for an output type the pipelines cannot return."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")


def to_output_type(images: torch.Tensor, output_type: str):
    """Images in [0, 1] as tensors (`pt`), arrays (`np`) or PIL images (`pil`)."""
    check_output_type(output_type)
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return DiffusionPipeline.numpy_to_pil(array) if output_type == "pil" else array


def class_labels_for(unet, class_labels, batch_size: int, device) -> torch.Tensor | None:
    """Validate `class_labels` (indices, or names from the model's `id2label`) against the model: required for a
    class-conditional model unless it has a null class, which then stands in (unconditional samples)."""
    config = unet.config
    num_embeds = getattr(config, "num_class_embeds", None)
    null_class = getattr(config, NULL_CLASS_KEY, None)
    classes = (num_embeds or 0) - (null_class is not None)  # the real classes; the null one is "no class"
    if class_labels is None:
        if null_class is not None:
            return torch.full((batch_size,), null_class, device=device, dtype=torch.long)
        if num_embeds:
            raise ValueError(f"class_labels are required: the model is conditioned on {classes} classes.")
        return None
    if not num_embeds:
        raise ValueError("class_labels were given but the model is not class-conditional.")
    if isinstance(class_labels, (str, int)):
        class_labels = [class_labels]
    if not torch.is_tensor(class_labels):
        class_labels = label_ids(getattr(config, "id2label", None), list(class_labels))
    labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
    if labels.shape[0] != batch_size:
        raise ValueError(f"Got {labels.shape[0]} class_labels for a batch of {batch_size}.")
    if labels.min() < 0 or labels.max() >= num_embeds:
        null = f" or {null_class}, the null class (unconditional)" if null_class is not None else ""
        raise ValueError(f"class_labels must lie in [0, {classes - 1}]{null}, got {labels.tolist()}.")
    return labels


def check_generator(generator, batch_size: int) -> None:
    """Raise for a list of generators whose length is not the batch size (diffusers' rule: one per image)."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"Got a list of {len(generator)} generators for a batch of {batch_size}: give one per "
                         "image, or a single generator.")  # fmt: skip


def check_latents(latents, shape: tuple[int, ...]) -> torch.Tensor:
    """`latents` if it is a floating-point tensor of `shape`; a `ValueError` saying what was expected otherwise."""
    if not torch.is_tensor(latents):
        raise ValueError(f"latents must be a tensor of shape {shape}, got {type(latents).__name__}.")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"Unexpected latents shape {tuple(latents.shape)}: expected {tuple(shape)} "
                         "(batch_size, channels, height, width).")  # fmt: skip
    if not latents.is_floating_point():
        raise ValueError(f"latents must be a floating-point tensor, got {latents.dtype}.")
    return latents


def check_callback_inputs(names: list[str] | None, allowed: list[str]) -> list[str]:
    """The tensors a step callback asks for (`["latents"]` when `None`), each one the pipeline hands out."""
    names = list(allowed) if names is None else list(names)
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not among the pipeline's {allowed}.")
    return names


def check_steps(num_inference_steps) -> None:
    """Raise before any work for a step count that is not a positive integer."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")


HUB_OPTIONS = ("cache_dir", "revision", "token", "local_files_only", "proxies", "force_download")


def hub_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The Hugging Face Hub download options among `from_pretrained`'s, those that are set."""
    return {key: options[key] for key in HUB_OPTIONS if options.get(key) is not None}


def load_solver_schedule(name_or_path, **options):
    """The `SolverStepSchedule` saved with a pipeline, from a local folder or a Hub repository (through the cache,
    or a download), or `None` if it has none. `options` are `from_pretrained`'s (cache_dir, revision, token, ...)."""
    from pathlib import Path

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    folder = Path(str(name_or_path))
    if folder.is_dir():
        return SolverStepSchedule.from_pretrained(folder) if (folder / SCHEDULE_FILE).is_file() else None
    try:
        path = hf_hub_download(str(name_or_path), SCHEDULE_FILE, **hub_options(options))
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError):
        return None  # the repository has no schedule (or, offline, none was ever downloaded)
    except HFValidationError:
        return None  # not a repository id either (e.g. a folder that has since been removed)
    return SolverStepSchedule.from_pretrained(Path(path).parent)


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


def check_feature_cache(unet, cache_interval: int | None, cache_levels: int) -> DeepFeatureCache | None:
    """A fresh feature cache for one sampling run (`None` when `cache_interval` is `None`: reuse is off)."""
    check_cache_schedule(cache_interval, cache_levels)
    if cache_interval is None:
        return None
    if not hasattr(unet, "active_ode_blocks"):
        raise ValueError(f"Feature reuse (cache_interval) needs a ContinuousUNet2DModel, not {type(unet).__name__}.")
    cache = DeepFeatureCache(cache_levels)
    cache.check_fits(len(unet.config.block_out_channels))
    return cache


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


def check_guidance_options(guided: GuidedNetwork | None, cache_interval: int | None) -> None:
    """Raise for a guidance interval with feature reuse: the cached deep features would be of another batch."""
    if guided is not None and guided.interval is not None and cache_interval is not None:
        raise ValueError("guidance_interval cannot be combined with cache_interval; guide everywhere, or do not "
                         "reuse features.")  # fmt: skip
