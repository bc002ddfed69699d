"""`ContinuousUNetPipeline`: unconditional or class-conditional image generation that drives any diffusers
scheduler correctly (noise scaled by `init_noise_sigma`, inputs by `scale_model_input`, a `generator` passed
only to schedulers whose `step` takes one), with a per-timestep choice of ODE-solver effort."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

SolverSchedule = Callable[[int, int], Mapping[str, Any] | None]


class ContinuousUNetPipeline(DiffusionPipeline):
    r"""
    Image generation with a `ContinuousUNet2DModel` (or any model with `UNet2DModel`'s call signature).

    Args:
        unet: the denoising model.
        scheduler: any diffusers scheduler that serves a discrete-time epsilon / v / sample model.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

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
    ) -> ImagePipelineOutput | tuple:
        r"""
        Args:
            batch_size (`int`): number of images.
            generator (`torch.Generator`, *optional*): makes generation deterministic.
            num_inference_steps (`int`): denoising steps of the scheduler.
            output_type (`str`): `"pil"`, `"np"` (arrays in [0, 1]) or `"pt"` (tensors in [0, 1]).
            return_dict (`bool`): return an `ImagePipelineOutput` instead of a tuple.
            class_labels (`torch.Tensor` or `list[int]`, *optional*): one class per image, for class-conditional
                models.
            solver_schedule (`callable`, *optional*): `solver_schedule(step_index, timestep)` returns the ODE-solver
                settings (e.g. `{"method": "euler", "steps": 1}`) for that denoising step, or `None` for the
                model's own settings.

        Returns:
            `ImagePipelineOutput` (or a tuple `(images,)`); the number of ODE function evaluations spent is in
            `self.last_ode_evaluations`.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        config = self.unet.config
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        labels = self._class_labels(class_labels, batch_size)

        shape = (batch_size, config.in_channels, *size)
        sample = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        sample = sample * self.scheduler.init_noise_sigma
        step_kwargs = (
            {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        )
        counts = hasattr(self.unet, "ode_function_evaluations")
        if counts:
            self.unet.ode_function_evaluations(reset=True)

        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = self.scheduler.scale_model_input(sample, t)
            model_kwargs = {} if labels is None else {"class_labels": labels}
            settings = solver_schedule(i, int(t)) if solver_schedule is not None else None
            if settings is not None:
                model_kwargs["solver"] = settings
            prediction = self.unet(model_input, t, **model_kwargs).sample
            sample = self.scheduler.step(prediction, t, sample, **step_kwargs).prev_sample

        self.last_ode_evaluations = self.unet.ode_function_evaluations() if counts else None
        images = (sample / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            output = images
        else:
            output = images.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                output = self.numpy_to_pil(output)
        if not return_dict:
            return (output,)
        return ImagePipelineOutput(images=output)

    def _class_labels(self, class_labels, batch_size: int) -> torch.Tensor | None:
        num_classes = getattr(self.unet.config, "num_class_embeds", None)
        if class_labels is None:
            if num_classes:
                raise ValueError(f"class_labels are required: the model is conditioned on {num_classes} classes.")
            return None
        if not num_classes:
            raise ValueError("class_labels were given but the model is not class-conditional.")
        labels = torch.as_tensor(class_labels, device=self._execution_device).long().reshape(-1)
        if labels.shape[0] != batch_size:
            raise ValueError(f"Got {labels.shape[0]} class_labels for batch_size={batch_size}.")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"class_labels must lie in [0, {num_classes - 1}], got {labels.tolist()}.")
        return labels
