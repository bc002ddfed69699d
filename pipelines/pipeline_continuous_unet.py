"""`ContinuousUNetPipeline`: unconditional or class-conditional image generation that drives any diffusers
scheduler correctly (noise scaled by `init_noise_sigma`, inputs by `scale_model_input`, a `generator` passed
only to schedulers whose `step` takes one), with a per-timestep choice of ODE-solver effort."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..guidance import guided_network
from ..hub_code import upload_pipeline_folder, write_code_layout
from .pipeline_utils import (
    check_callback_inputs,
    check_feature_cache,
    check_generator,
    check_guidance_options,
    check_latents,
    check_output_type,
    check_steps,
    class_labels_for,
    label_ids,
    load_solver_schedule,
    to_output_type,
)
from .sampling_loop import SolverSchedule, check_schedule_kind, reverse_process
from .scheduler_support import check_scheduler, check_timesteps, is_edm_scheduler


@dataclass
class ContinuousUNetPipelineOutput(BaseOutput):
    """
    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the generated images, values in [0, 1].
        ode_evaluations (`int`, *optional*): ODE function evaluations per image (every image of the batch passes
            through each of them; `None` for a model without ODE blocks).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    ode_evaluations: int | None = None


_NOT_LOOKED_UP = object()  # ContinuousUNetPipeline's solver schedule before it is looked up


class ContinuousUNetPipeline(DiffusionPipeline):
    r"""
    Image generation with a `ContinuousUNet2DModel` (or any model with `UNet2DModel`'s call signature).

    Args:
        unet: the denoising model.
        scheduler: any supported diffusers scheduler (`scheduler_support.SUPPORTED_SCHEDULERS`: DDIM, DPM-Solver++,
            UniPC, Euler, ...) or `EDMEulerScheduler` / `EDMDPMSolverMultistepScheduler`, whichever objective the
            model was trained with: an EDM-trained model (`preconditioning` in its config) is driven by a discrete
            scheduler, and a DDPM-style one by an EDM scheduler, through `objective_bridge` (the latter needs the
            model's training schedule, `model_schedule`: the discrete scheduler the pipeline was built with).
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]  # what `callback_on_step_end` may read and replace

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self._solver_schedule: SolverSchedule | None | object = _NOT_LOOKED_UP
        # A DDPM-style model's training schedule (the discrete scheduler it was built or loaded with): what lets an
        # EDM scheduler swapped in later drive it (objective_bridge). Set it by hand for a pipeline built otherwise.
        self.model_schedule = (
            scheduler if hasattr(scheduler, "alphas_cumprod") and not is_edm_scheduler(scheduler) else None
        )

    @property
    def solver_schedule(self) -> SolverSchedule | None:
        """Used when a call gives none: the `solver_schedule.json` saved with the pipeline, looked up (once) where
        the pipeline was loaded from, or whatever was assigned."""
        if self._solver_schedule is _NOT_LOOKED_UP:
            # diffusers' loader (the remote-code path) builds the pipeline without calling our from_pretrained
            source = self.config.get("_name_or_path")
            self._solver_schedule = load_solver_schedule(source) if source else None
        return self._solver_schedule

    @solver_schedule.setter
    def solver_schedule(self, schedule: SolverSchedule | None) -> None:
        self._solver_schedule = schedule

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved pipeline from a local folder or a Hub repository, with the `solver_schedule.json` saved
        with it. With diffusers-cunet installed the components are built from the package's own classes (no code
        shipped in the folder runs, `trust_remote_code` is not needed); options: `cache_dir`, `revision`, `token`,
        `local_files_only`, `proxies`, `force_download`, `torch_dtype`, `variant`, `use_safetensors`, `unet`,
        `scheduler`. Loaded as remote code, this is `DiffusionPipeline.from_pretrained`."""
        if __name__.startswith("diffusers_cunet."):
            loading = importlib.import_module("diffusers_cunet.pipelines.loading")
            return loading.load_pipeline(cls, pretrained_model_name_or_path, **kwargs)
        pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipeline.solver_schedule = load_solver_schedule(pretrained_model_name_or_path, **kwargs)
        return pipeline

    def save_pretrained(
        self,
        save_directory,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        """As `DiffusionPipeline.save_pretrained` (same parameters: `variant` writes the unet's
        `diffusion_pytorch_model.<variant>.safetensors` beside its other weights), plus the attached
        `SolverStepSchedule`, if any, and the code files that let diffusers load the folder without this package:
        `pipeline_cunet.py`, named in `model_index.json` with `unet/modeling_cunet.py` (see
        `diffusers_cunet.hub_code`). With `push_to_hub=True` the folder is uploaded once complete (`repo_id`,
        `token`, `private`, `commit_message`, `create_pr` as diffusers takes them)."""
        hub = {
            key: kwargs.pop(key)
            for key in ("repo_id", "token", "private", "commit_message", "create_pr")
            if key in kwargs
        }
        super().save_pretrained(save_directory, safe_serialization=safe_serialization, variant=variant,
                                max_shard_size=max_shard_size, **kwargs)  # fmt: skip
        write_code_layout(save_directory, with_pipeline_code=True)
        if hasattr(self.solver_schedule, "save_pretrained"):
            self.solver_schedule.save_pretrained(save_directory)
        if push_to_hub:  # after the code files are written: diffusers would upload the folder before they are
            name = hub.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            upload_pipeline_folder(save_directory, name, hub.pop("token", None), hub.pop("private", None), **hub)

    @property
    def labels(self) -> dict[int, str]:
        """The model's class names by index (empty when it records none)."""
        return {int(index): name for index, name in (getattr(self.unet.config, "id2label", None) or {}).items()}

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """The class indices of class names (as DiT's pipeline offers); unknown names are a `ValueError` that lists
        the model's."""
        return label_ids(getattr(self.unet.config, "id2label", None), [label] if isinstance(label, str) else label)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        output_type: str = "pil",
        return_dict: bool = True,
        class_labels: torch.Tensor | list[int] | None = None,
        solver_schedule: SolverSchedule | None = None,
        cache_interval: int | None = None,
        cache_levels: int = 1,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[float, float] | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ContinuousUNetPipelineOutput | tuple:
        r"""
        Args:
            batch_size (`int`): number of images.
            generator (`torch.Generator` or a list of one per image, *optional*): makes generation deterministic.
            num_inference_steps (`int`): denoising steps of the scheduler.
            output_type (`str`): `"pil"`, `"np"` (arrays in [0, 1]) or `"pt"` (tensors in [0, 1]).
            return_dict (`bool`): return a `ContinuousUNetPipelineOutput` instead of a tuple.
            class_labels (`torch.Tensor`, `list[int | str]`, *optional*): one class per image, for
                class-conditional models: indices, or names from the model's `id2label` (`get_label_ids`). A model
                with a null class samples unconditionally when none are given.
            solver_schedule (`callable`, *optional*): `solver_schedule(step_index, timestep)` returns the ODE-solver
                settings (e.g. `{"method": "euler", "steps": 1}`) for that denoising step, or `None` for the
                model's own settings; a `diffusers_cunet.step_schedule.SolverStepSchedule` is one. Defaults to
                `self.solver_schedule` (loaded from `solver_schedule.json` beside the pipeline, if there is one).
                A schedule's `skip` entries leave ODE blocks out of that step's call.
            cache_interval (`int`, *optional*): reuse deep features across steps (after DeepCache): the whole network
                runs every `cache_interval` steps, and in between only its top `cache_levels` levels, with the
                deeper decoder features of the last whole call. `None` (the default) and 1 run it whole every step.
            cache_levels (`int`): the levels recomputed on every step when `cache_interval` is set (1 = only the
                highest-resolution level).
            guidance_scale (`float`): classifier-free guidance (Ho & Salimans 2022) for a class-conditional model
                trained with a null class (`--class_dropout_prob`): each step asks the conditional and the
                unconditional prediction in one call of twice the batch and moves `guidance_scale` times their
                difference from the unconditional one. 1 (the default) is plain conditional sampling.
            guidance_interval (`tuple[float, float]`, *optional*): guide only at noise levels sigma in [low, high]
                (EDM's sigma; for discrete schedulers sigma = sqrt((1 - abar) / abar)); plain conditional calls,
                at half the cost, elsewhere.
            latents (`torch.Tensor`, *optional*): the starting noise, `(batch_size, channels, height, width)` of unit
                variance (drawn from `generator` when not given); scaled by the scheduler's `init_noise_sigma`, as
                diffusers' pipelines do.
            callback_on_step_end (`callable`, *optional*): `callback_on_step_end(pipeline, step_index, timestep,
                callback_kwargs)`, called after each step with the tensors named in
                `callback_on_step_end_tensor_inputs` (`"latents"`: the current sample); the tensors of the dict it
                returns replace them.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): the tensors handed to the callback
                (default `["latents"]`).

        Returns:
            `ContinuousUNetPipelineOutput` with the images and the ODE function evaluations spent per image, or a
            tuple `(images,)`.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        check_steps(num_inference_steps)
        check_generator(generator, batch_size)
        tensor_inputs = check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        check_output_type(output_type)
        check_scheduler(self.scheduler, self.unet)
        solver_schedule = solver_schedule if solver_schedule is not None else self.solver_schedule
        check_schedule_kind(solver_schedule, self.scheduler)
        cache = check_feature_cache(self.unet, cache_interval, cache_levels)
        config = self.unet.config
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        device = self._execution_device
        labels = class_labels_for(self.unet, class_labels, batch_size, device)
        guided = guided_network(self.unet, guidance_scale, guidance_interval, labels)
        check_guidance_options(guided, cache_interval)

        # 1. initial noise at the scheduler's scale (sigma_max for the sigma-based schedulers)
        shape = (batch_size, config.in_channels, *size)
        if latents is None:
            sample = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        else:
            sample = check_latents(latents, shape).to(device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        check_timesteps(self.scheduler)
        sample = sample * self.scheduler.init_noise_sigma

        # 2. denoising loop
        on_step_end = None
        if callback_on_step_end is not None:

            def on_step_end(i, t, latents):  # noqa: E306
                tensors = {"latents": latents}  # by diffusers' names (`_callback_tensor_inputs`)
                outputs = callback_on_step_end(self, i, t, {name: tensors[name] for name in tensor_inputs})
                return (outputs or {}).get("latents", latents)

        sample, evaluations = reverse_process(
            self, sample, self.scheduler.timesteps, labels, solver_schedule, generator, cache_interval, cache, guided,
            on_step_end,
        )  # fmt: skip

        # 3. post-process
        images = to_output_type((sample / 2 + 0.5).clamp(0, 1), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ContinuousUNetPipelineOutput(images=images, ode_evaluations=evaluations)
