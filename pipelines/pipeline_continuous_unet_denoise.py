"""`ContinuousUNetDenoisePipeline`: remove Gaussian noise from images with a diffusion model (the paper's
downstream task). The reverse process starts at the timestep whose noise level matches the images' and runs
`num_inference_steps` steps of the chosen scheduler down to a clean image."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..preconditioning import vp_sigmas
from .pipeline_utils import (
    check_output_type,
    check_steps,
    class_labels_for,
    to_output_type,
)
from .sampling_loop import SolverSchedule, reverse_process
from .scheduler_support import check_scheduler, check_timesteps, is_edm_scheduler


@dataclass
class DenoisePipelineOutput(BaseOutput):
    """
    Args:
        images: the denoised images, values in [0, 1].
        start_timestep (`int` or `float`): the timestep the reverse process started from (for an EDM scheduler,
            the sigma it started from: `noise_std`).
        psnr (`float`, *optional*): mean PSNR (dB, images in [0, 1]) against `clean_images`, when given.
        ssim (`float`, *optional*): mean SSIM against `clean_images`, when given.
        ode_evaluations (`int`, *optional*): ODE function evaluations per image.
        noisy_psnr, noisy_ssim (`float`, *optional*): the same for the noisy input: the baseline that the output
            must beat (a "denoised" image below it is worse than doing nothing).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    start_timestep: int | float
    psnr: float | None = None
    ssim: float | None = None
    ode_evaluations: int | None = None
    noisy_psnr: float | None = None
    noisy_ssim: float | None = None


def noise_std_of_timestep(alphas_cumprod: torch.Tensor, timestep: int) -> float:
    """Noise standard deviation, on the clean image's scale, of the VP marginal at `timestep`."""
    return float(vp_sigmas(alphas_cumprod)[timestep])


def timestep_for_noise_std(alphas_cumprod: torch.Tensor, noise_std: float) -> int:
    """The first training timestep whose noise level is at least `noise_std` (so noise only needs adding)."""
    stds = vp_sigmas(alphas_cumprod)
    above = torch.nonzero(stds >= noise_std)
    if len(above) == 0:
        raise ValueError(f"noise_std={noise_std} is above the schedule's largest noise level {float(stds[-1]):.3g}.")
    return int(above[0])


VALUE_RANGES = {"tensor": (-1.0, 1.0), "array": (0.0, 1.0)}  # diffusers' image processors' conventions


def to_model_range(images, channels: int, value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """PIL images, arrays (NHWC, [0, 1] unless `value_range` says otherwise) or tensors (NCHW, [-1, 1] unless
    `value_range` says otherwise) -> a float tensor on the model's [-1, 1] scale.

    Raises:
        ValueError: for another type, or a tensor whose channels are not the model's.
    """
    if isinstance(images, torch.Tensor):
        tensor, kind = images.float(), "tensor"
    elif isinstance(images, np.ndarray):
        array = images[..., None] if images.ndim == 3 else images
        tensor, kind = torch.from_numpy(np.ascontiguousarray(array)).float().permute(0, 3, 1, 2), "array"
    elif isinstance(images, (list, tuple)) and images and isinstance(images[0], PIL.Image.Image):
        mode = "L" if channels == 1 else "RGB"
        converted = sorted({image.mode for image in images} - {mode})
        if converted:
            warnings.warn(f"Converted {'/'.join(converted)} images to {mode}: the model has {channels} channel(s).",
                          stacklevel=3)  # fmt: skip
        arrays = [np.asarray(image.convert(mode), dtype=np.float32) / 255.0 for image in images]
        return to_model_range(np.stack(arrays), channels, (0.0, 1.0))
    else:
        raise ValueError("images must be a tensor ([-1, 1]), an array ([0, 1]) or a list of PIL images.")
    if tensor.ndim != 4 or tensor.shape[1] != channels:
        raise ValueError(f"images must have shape (batch, {channels}, height, width), got {tuple(tensor.shape)}.")
    low, high = value_range or VALUE_RANGES[kind]
    return (tensor - low) / (high - low) * 2 - 1


def check_value_range(noisy: torch.Tensor, noise_std: float, noisy_images, clean_images, value_range) -> None:
    """Refuse inputs that cannot be on the scale they are read on; the commonest mistake is a [0, 1] tensor read as
    [-1, 1]. A clean reference shows it plainly (no negative value: no dark half of the range); a noisy image alone
    hints at it (nothing below -0.5 although the noise is small), which is a warning."""
    if value_range is None and isinstance(clean_images, torch.Tensor) and bool((clean_images >= 0).all()):
        raise ValueError(
            "clean_images has no negative value: tensors are read on [-1, 1], so these look like [0, 1] tensors. "
            "Pass value_range=(0, 1), or scale them to [-1, 1]."
        )
    if value_range is None and isinstance(noisy_images, torch.Tensor) and noise_std < 0.125:
        if float(noisy.min()) > -0.5:
            warnings.warn(
                "The noisy tensor has no value below -0.5: tensors are read on [-1, 1]; if it is a [0, 1] tensor, "
                "pass value_range=(0, 1).",
                stacklevel=3,
            )
    reach = 1 + 8 * noise_std + 0.05  # eight standard deviations of noise beyond the image range
    if bool((noisy.abs() > reach).any()):
        raise ValueError(
            f"Noisy values reach {float(noisy.abs().max()):.2f} on the [-1, 1] scale, beyond what images with noise "
            f"of std {noise_std:g} can (|x| <= {reach:.2f}): check value_range and noise_std."
        )


class ContinuousUNetDenoisePipeline(DiffusionPipeline):
    r"""
    Denoise images corrupted by additive Gaussian noise with a `ContinuousUNet2DModel` (or any `UNet2DModel`-like
    model) and any scheduler that `ContinuousUNetPipeline` supports.

    Noise levels are standard deviations on the model's [-1, 1] scale: an image `x` observed as
    `x + noise_std * eps` is the diffusion marginal at the timestep with that noise level (up to the
    sqrt(alpha_bar) scale, which the scheduler applies). The reverse process starts at the first scheduler
    timestep whose noise level is at least `noise_std`; the small gap is filled with fresh noise, so the
    start is exactly on the diffusion marginal. With an EDM scheduler (models trained with EDM preconditioning)
    the noisy images are the marginal at sigma = `noise_std` itself, and the sampler runs from there.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load the model and scheduler of any saved cUNet pipeline (from a local folder or a Hub repository) with
        the installed package's classes, as `ContinuousUNetPipeline.from_pretrained` does."""
        from .loading import load_pipeline

        return load_pipeline(cls, pretrained_model_name_or_path, **kwargs)

    @torch.no_grad()
    def __call__(
        self,
        noisy_images: torch.Tensor | np.ndarray | list[PIL.Image.Image],
        noise_std: float | None = None,
        timestep: int | None = None,
        num_inference_steps: int = 20,
        generator: torch.Generator | None = None,
        clean_images: torch.Tensor | np.ndarray | list[PIL.Image.Image] | None = None,
        class_labels: torch.Tensor | list[int] | None = None,
        solver_schedule: SolverSchedule | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        value_range: tuple[float, float] | None = None,
    ) -> DenoisePipelineOutput | tuple:
        r"""
        Args:
            noisy_images: tensors in [-1, 1] `(batch, channels, h, w)`, arrays in [0, 1] `(batch, h, w[, c])`
                or PIL images.
            noise_std (`float`): the noise's standard deviation on the [-1, 1] scale (the paper's 0.04, 0.15).
            timestep (`int`): alternatively, the training timestep whose noise level the images carry.
            num_inference_steps (`int`): denoising steps from that level down to 0.
            generator (`torch.Generator`, *optional*): for the noise top-up and stochastic schedulers.
            clean_images: references in the same format as `noisy_images`; PSNR and SSIM are then reported.
            class_labels, solver_schedule: as in `ContinuousUNetPipeline`.
            output_type (`str`): `"pt"`, `"np"` or `"pil"`.
            return_dict (`bool`): return a `DenoisePipelineOutput` instead of a tuple.
            value_range (`tuple`, *optional*): the range of `noisy_images` and `clean_images` values, e.g. `(0, 1)`
                for tensors in [0, 1]; by default diffusers' conventions: tensors in [-1, 1], arrays in [0, 1].
                `noise_std` is on the [-1, 1] scale either way.
        """
        if (noise_std is None) == (timestep is None):
            raise ValueError("Give exactly one of noise_std or timestep.")
        if noise_std is not None and not noise_std > 0:
            raise ValueError(f"noise_std must be positive, got {noise_std!r}.")
        check_steps(num_inference_steps)
        check_output_type(output_type)
        check_scheduler(self.scheduler, self.unet, cross_objective=False)
        device = self._execution_device
        noisy = self._model_input(noisy_images, value_range, device)
        if noise_std is not None:
            check_value_range(noisy, noise_std, noisy_images, clean_images, value_range)
        # the noisy input's own PSNR/SSIM are reported beside the output's
        reference = {"noisy": noisy, "clean_images": clean_images, "value_range": value_range}
        labels = class_labels_for(self.unet, class_labels, noisy.shape[0], device)
        if is_edm_scheduler(self.scheduler):
            if timestep is not None:
                raise ValueError("An EDM scheduler has no training timesteps: give noise_std (its sigma) instead.")
            sample, evaluations = self._denoise_edm(noisy, noise_std, num_inference_steps, labels, solver_schedule)
            return self._finish(sample, noise_std, evaluations, reference, output_type, return_dict)
        alphas_cumprod = self.scheduler.alphas_cumprod.cpu()
        num_train = len(alphas_cumprod)
        if timestep is not None:
            if not 0 <= timestep < num_train:
                raise ValueError(f"timestep must lie in [0, {num_train - 1}], got {timestep}.")
            noise_std = noise_std_of_timestep(alphas_cumprod, timestep)
        target_t = timestep_for_noise_std(alphas_cumprod, noise_std)

        # 1. a schedule whose last `num_inference_steps` steps start at or just above the noise level
        timesteps = self._tail_timesteps(target_t, num_inference_steps, device)
        check_timesteps(self.scheduler)
        start_t = int(timesteps[0])
        start_std = noise_std_of_timestep(alphas_cumprod, start_t)

        # 2. top the noise up to the start level, then scale as the scheduler's add_noise would
        gap = math.sqrt(max(start_std**2 - noise_std**2, 0.0))
        extra_noise = randn_tensor(noisy.shape, generator=generator, device=device, dtype=noisy.dtype)
        observed = noisy + gap * extra_noise
        # add_noise(x, n, t) = c1 x + c2 n with c2 = c1 * std(t) for VP and sigma schedulers alike, so
        # add_noise(x + std * eps, 0, t) = c1 x + c2 eps: exactly the marginal the scheduler expects.
        sample = self.scheduler.add_noise(observed, torch.zeros_like(observed), timesteps[:1])

        # 3. reverse process
        sample, evaluations = reverse_process(self, sample, timesteps, labels, solver_schedule, generator)
        return self._finish(sample, start_t, evaluations, reference, output_type, return_dict)

    def _model_input(self, noisy_images, value_range, device) -> torch.Tensor:
        """The noisy images as the model takes them (its range, device and dtype); a warning for a size the model
        was not trained at."""
        noisy = to_model_range(noisy_images, self.unet.config.in_channels, value_range).to(device, self.unet.dtype)
        size = self.unet.config.sample_size
        expected = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(noisy.shape[-2:]) != expected:
            warnings.warn(f"Denoising {noisy.shape[-2]}x{noisy.shape[-1]} images with a model trained at "
                          f"{expected[0]}x{expected[1]}: it runs (convolutions), but it never saw this size.",
                          stacklevel=3)  # fmt: skip
        return noisy

    def _denoise_edm(self, noisy, noise_std: float, num_inference_steps: int, labels, solver_schedule):
        """EDM's forward process is x + sigma * noise: images carrying noise of std `noise_std` are its marginal at
        sigma = noise_std, so the sampler runs its schedule from that sigma (as its sigma_max) down."""
        config = self.scheduler.config
        if not config.sigma_min < noise_std <= config.sigma_max:
            raise ValueError(
                f"noise_std must lie in ({config.sigma_min}, {config.sigma_max}], the scheduler's sigma range; "
                f"got {noise_std}."
            )
        saved = self.scheduler
        self.scheduler = type(saved).from_config(config, sigma_max=noise_std)
        try:
            self.scheduler.set_timesteps(num_inference_steps, device=noisy.device)
            return reverse_process(self, noisy, self.scheduler.timesteps, labels, solver_schedule, None)
        finally:
            self.scheduler = saved

    def _finish(self, sample, start, evaluations, reference: dict, output_type, return_dict):
        channels = self.unet.config.in_channels
        device = sample.device
        images = (sample / 2 + 0.5).clamp(0, 1)
        psnr = ssim = noisy_psnr = noisy_ssim = None
        if reference["clean_images"] is not None:
            clean = to_model_range(reference["clean_images"], channels, reference["value_range"]).to(device)
            clean = (clean / 2 + 0.5).clamp(0, 1)
            psnr, ssim = image_quality(images, clean)
            noisy_psnr, noisy_ssim = image_quality((reference["noisy"].float() / 2 + 0.5).clamp(0, 1), clean)
        output = to_output_type(images, output_type)
        if not return_dict:
            return (output, start, psnr, ssim)
        return DenoisePipelineOutput(output, start, psnr, ssim, evaluations, noisy_psnr, noisy_ssim)

    def _tail_timesteps(self, target_t: int, num_inference_steps: int, device) -> torch.Tensor:
        """Set the scheduler so that its final `num_inference_steps` steps start at the first timestep >= target."""
        num_train = len(self.scheduler.alphas_cumprod)
        order = getattr(self.scheduler, "order", 1)
        if num_inference_steps > target_t + 1:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} is more than the {target_t + 1} training timesteps "
                f"between the images' noise level and 0."
            )
        total = min(num_train, max(num_inference_steps, math.ceil(num_inference_steps * num_train / (target_t + 1))))
        while True:
            self.scheduler.set_timesteps(total, device=device)
            skip = (total - num_inference_steps) * order
            timesteps = self.scheduler.timesteps[skip:]
            if int(timesteps[0]) >= target_t or skip == 0:
                break
            total -= 1  # the schedule's spacing put the start below the noise level: take coarser steps
        if int(timesteps[0]) < target_t:
            raise ValueError(
                f"{type(self.scheduler).__name__} with timestep_spacing="
                f"{self.scheduler.config.get('timestep_spacing')!r} has no {num_inference_steps}-step tail that "
                f"starts at the images' noise level (timestep {target_t}); use more steps or another spacing."
            )
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(skip)
        return timesteps


def image_quality(images: torch.Tensor, references: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of `images` against `references`, both in [0, 1] (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if images.shape != references.shape:
        raise ValueError(f"clean_images have shape {tuple(references.shape)}, the images {tuple(images.shape)}.")
    images, references = images.float().cpu(), references.float().cpu()
    psnr = peak_signal_noise_ratio(images, references, data_range=1.0, reduction="none", dim=(1, 2, 3))
    kernel = min(7, images.shape[-1] - (1 - images.shape[-1] % 2))  # odd, at most the image size
    ssim = structural_similarity_index_measure(images, references, data_range=1.0, kernel_size=kernel)
    return float(psnr.mean()), float(ssim)
