"""Training objectives: one object per formulation of diffusion training.

An objective owns what differs between formulations: how noise levels are drawn for a batch, the loss (with its
weighting), the denoiser D(x; level) it trains, and the scheduler its model is sampled and saved with. The
training loop calls these and never branches on the formulation.

- `DDPMObjective`: discrete timesteps of a `DDPMScheduler`, MSE on the predicted noise, velocity or clean image.
- `EDMObjective`: log-normal noise levels and EDM's weighted loss on the preconditioned denoiser (Karras et al.
  2022); with an `FDMPreconditioning` it is EDM-FDM, and `loss_weight_warmup_steps` gives FDM's weight warm-up.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from .preconditioning import EDMPreconditioning, edm_scheduler, loss_weight_cap, vp_sigmas


@runtime_checkable
class Objective(Protocol):
    """What the training loop, the held-out check and the export call on an objective (the whole interface)."""

    sampler_name: str  # the fast sampler of the sample grids, for the card
    ddpm_pipeline_compatible: bool  # whether diffusers' DDPMPipeline samples its models correctly

    def sample_levels(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """The noise levels of a batch (timesteps or sigmas)."""

    def loss(self, model, clean: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor, step: int = 0,
             **model_kwargs: Any) -> torch.Tensor:  # fmt: skip
        """The batch's loss at `levels`; `step` is the optimizer step (for warm-ups)."""

    def denoise(self, model, noisy: torch.Tensor, levels: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        """The model's clean-image estimate D(noisy; levels)."""

    def denoising_error(self, model, clean: torch.Tensor, noise: torch.Tensor, sigma: float,
                        **model_kwargs: Any) -> torch.Tensor:  # fmt: skip
        """Per-image MSE of the clean-image estimate at noise std `sigma` (comparable across objectives)."""

    def saved_scheduler(self, model=None):
        """The scheduler saved with the model's pipeline."""

    def sampling_scheduler(self, model=None):
        """The fast scheduler of sample grids."""

    def to_config(self) -> dict[str, Any]:
        """The objective's settings, for metrics.json."""

    def describe(self) -> str:
        """One line for the card."""


class DDPMObjective:
    """DDPM-style training on the discrete schedule of `noise_scheduler` (its `prediction_type` says what the
    network predicts). Models are saved with that scheduler and sampled with DDIM on the same schedule."""

    sampler_name = "DDIM"
    ddpm_pipeline_compatible = True

    def __init__(self, noise_scheduler: DDPMScheduler):
        self.noise_scheduler = noise_scheduler
        self.prediction_type = noise_scheduler.config.prediction_type

    def sample_levels(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Integer timesteps, uniform over the training schedule (on the generator's device)."""
        return torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)

    def loss(self, model, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, step: int = 0,
             **model_kwargs: Any) -> torch.Tensor:  # fmt: skip
        """MSE of the network's prediction at `timesteps` (`step`, the optimizer step, is not used here)."""
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = clean
        prediction = model(noisy, timesteps, **model_kwargs).sample
        return F.mse_loss(prediction.float(), target.float())

    def denoise(self, model, noisy: torch.Tensor, timesteps: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        """The clean-image estimate x0 of `noisy` at `timesteps`, from whatever the network predicts."""
        alpha_bar = self.noise_scheduler.alphas_cumprod.to(noisy.device)[timesteps].float()[:, None, None, None]
        output = model(noisy, timesteps, **model_kwargs).sample.float()
        noisy = noisy.float()
        if self.prediction_type == "epsilon":
            return (noisy - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()
        if self.prediction_type == "v_prediction":
            return alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * output
        return output

    def denoising_error(self, model, clean: torch.Tensor, noise: torch.Tensor, sigma: float,
                        **model_kwargs: Any) -> float:  # fmt: skip
        """Mean squared error of the clean-image estimate at noise level `sigma` on EDM's scale (the noisy image is
        clean + sigma * noise, up to scaling): at the training timestep whose sqrt((1 - alpha_bar) / alpha_bar)
        is closest to `sigma`. In image units, so comparable with `EDMObjective.denoising_error`."""
        timestep = int((vp_sigmas(self.noise_scheduler.alphas_cumprod) - sigma).abs().argmin())
        timesteps = torch.full((clean.shape[0],), timestep, dtype=torch.long, device=clean.device)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        return F.mse_loss(self.denoise(model, noisy, timesteps, **model_kwargs).float(), clean.float()).item()

    def saved_scheduler(self, model=None) -> DDPMScheduler:
        """The scheduler saved with the trained pipeline: the training schedule itself."""
        return self.noise_scheduler

    def sampling_scheduler(self, model=None) -> DDIMScheduler:
        """The fast sampler for sample grids: DDIM on the training schedule."""
        return DDIMScheduler.from_config(self.noise_scheduler.config)

    def to_config(self) -> dict[str, Any]:
        config = self.noise_scheduler.config
        return {"type": "ddpm", "num_train_timesteps": config.num_train_timesteps,
                "beta_schedule": config.beta_schedule, "prediction_type": self.prediction_type}  # fmt: skip

    def describe(self) -> str:
        config = self.noise_scheduler.config
        return f"{config.beta_schedule}, {config.num_train_timesteps} steps, {self.prediction_type} prediction"


class EDMObjective:
    """EDM training of a model with `preconditioning` (the model's own `EDMPreconditioning` or
    `FDMPreconditioning`): log sigma ~ N(p_mean, p_std^2), loss lambda(sigma) |D(x + sigma n; sigma) - x|^2 with
    lambda = 1 / c_out^2 clipped during FDM's warm-up. Models are saved and sampled with EDM's DPM-Solver++."""

    sampler_name = "EDM DPM-Solver++"
    ddpm_pipeline_compatible = False  # DDPMPipeline would neither scale its inputs nor use sigmas

    def __init__(self, preconditioning: EDMPreconditioning, p_mean: float = -1.2, p_std: float = 1.2,
                 loss_weight_warmup_steps: int = 0):  # fmt: skip
        if p_std <= 0:
            raise ValueError(f"p_std must be positive, got {p_std}.")
        if loss_weight_warmup_steps < 0:
            raise ValueError(f"loss_weight_warmup_steps must be >= 0, got {loss_weight_warmup_steps}.")
        self.preconditioning = preconditioning
        self.p_mean = p_mean
        self.p_std = p_std
        self.loss_weight_warmup_steps = loss_weight_warmup_steps

    def sample_levels(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Noise levels sigma, log-normal (on the generator's device)."""
        return (self.p_mean + self.p_std * torch.randn(batch_size, generator=generator)).exp()

    def loss(self, model, clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, step: int = 0,
             **model_kwargs: Any) -> torch.Tensor:  # fmt: skip
        """EDM's weighted loss at noise levels `sigma` (one per image); `step` sets the warm-up's weight cap."""
        noisy = clean + sigma[:, None, None, None] * noise
        denoised = self.denoise(model, noisy, sigma, **model_kwargs)
        cap = loss_weight_cap(step, self.loss_weight_warmup_steps)
        weight = self.preconditioning.loss_weight(sigma).clamp(max=cap)[:, None, None, None]
        return (weight * (denoised.float() - clean.float()) ** 2).mean()

    def denoise(self, model, noisy: torch.Tensor, sigma: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        """D(x; sigma), the preconditioned network."""
        return self.preconditioning.denoise(model, noisy, sigma, **model_kwargs)

    def denoising_error(self, model, clean: torch.Tensor, noise: torch.Tensor, sigma: float,
                        **model_kwargs: Any) -> float:  # fmt: skip
        """Mean squared error of D(clean + sigma * noise; sigma) against `clean` (image units)."""
        sigmas = torch.full((clean.shape[0],), float(sigma), device=clean.device)
        denoised = self.denoise(model, clean + sigma * noise, sigmas, **model_kwargs)
        return F.mse_loss(denoised.float(), clean.float()).item()

    def sampling_scheduler(self, model=None):
        """EDM's DPM-Solver++ on the model's sigma range and sigma_data."""
        return edm_scheduler(self.preconditioning, "dpmsolver++")

    def saved_scheduler(self, model=None):
        """The same sampler as `sampling_scheduler`: an EDM model has no separate training schedule to save."""
        return self.sampling_scheduler(model)

    def to_config(self) -> dict[str, Any]:
        return {"type": self.preconditioning.type, "preconditioning": self.preconditioning.to_config(),
                "p_mean": self.p_mean, "p_std": self.p_std,
                "loss_weight_warmup_steps": self.loss_weight_warmup_steps}  # fmt: skip

    def describe(self) -> str:
        pre = self.preconditioning
        text = (f"{pre.type} preconditioning, sigma_data {pre.sigma_data}, "
                f"log sigma ~ N({self.p_mean}, {self.p_std}^2)")  # fmt: skip
        if hasattr(pre, "momentum"):
            text += f", momentum {pre.momentum}"
        if self.loss_weight_warmup_steps:
            text += f", loss-weight warm-up {self.loss_weight_warmup_steps} steps"
        return text
