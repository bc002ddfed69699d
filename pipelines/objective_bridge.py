"""Every model with every scheduler: a network's output re-expressed in the language of the scheduler that drives it.

Two objectives describe the same family of noisy images. A discrete variance-preserving (VP) schedule has
x_t = sqrt(abar) x0 + sqrt(1 - abar) n; EDM has x = x0 + sigma n. They are one image up to scale: x = x_t / sqrt(abar)
at sigma = sqrt((1 - abar) / abar) (k-diffusion wraps VP models as EDM denoisers this way). So

- an **EDM-trained** model (a `preconditioning` in its config) driven by a discrete scheduler (DDIM, DPM-Solver++,
  UniPC, Euler, ...) is given x = x_t / sqrt(abar) at that sigma; its denoiser D(x; sigma) is turned into the
  epsilon, v or x0 prediction the scheduler asks for;
- a **DDPM-style** model driven by an EDM scheduler is given x_t = x sqrt(abar) at the fractional timestep whose sigma
  is the scheduler's (interpolated on the model's own training schedule, as diffusers' Euler schedulers do); its
  prediction is turned into D, and D into the raw output F that the EDM scheduler expects
  (D = c_skip x + c_out F, with the scheduler's sigma_data).

The model's training schedule (alphas_cumprod and prediction type) is needed for the second case only: a pipeline
remembers the discrete scheduler it was built with (`model_schedule`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import torch

from ..preconditioning import EDMPreconditioning, vp_sigmas
from .scheduler_support import is_edm_scheduler


def sigma_at_timesteps(alphas_cumprod: torch.Tensor, timesteps) -> np.ndarray:
    """The EDM noise level of (possibly fractional) VP timesteps, interpolated linearly in t as diffusers' Euler,
    Heun and LMS schedulers do."""
    table = vp_sigmas(alphas_cumprod).numpy()
    return np.interp(np.asarray(timesteps, dtype=np.float64), np.arange(len(table)), table)


def timestep_at_sigmas(alphas_cumprod: torch.Tensor, sigmas) -> np.ndarray:
    """The fractional VP timestep of each EDM noise level (log-sigma interpolation, clipped to the schedule)."""
    log_table = np.log(np.maximum(vp_sigmas(alphas_cumprod).numpy(), 1e-12))  # increasing in t
    log_sigmas = np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-12))
    return np.interp(log_sigmas, log_table, np.arange(len(log_table)))


def _per_image(value: float, sample: torch.Tensor) -> torch.Tensor:
    return torch.full((sample.shape[0], 1, 1, 1), float(value), device=sample.device, dtype=torch.float64)


class ObjectiveBridge:
    """What the network is asked at each step of `timesteps`, and its answer in the scheduler's terms.

    Args:
        unet: the network; an EDM-trained one has a `preconditioning` (c_in, c_skip, c_out, c_noise).
        scheduler: the diffusers scheduler that drives it.
        model_schedule: the discrete scheduler a DDPM-style model was trained on (its `alphas_cumprod` and
            `prediction_type`), needed when an EDM scheduler drives such a model.
        timesteps: the scheduler's timesteps for this call (read to the host once, here).
        network: what is asked, called like the unet (default: the unet; a `GuidedNetwork` for guidance).

    Raises:
        ValueError: if an EDM scheduler is to drive a DDPM-style model whose training schedule is unknown.
    """

    def __init__(self, unet, scheduler, model_schedule, timesteps: torch.Tensor, network=None):
        self.unet = unet
        self.network = unet if network is None else network
        self.preconditioning = getattr(unet, "preconditioning", None)
        self.edm_scheduler = is_edm_scheduler(scheduler)
        self.scheduler = scheduler
        self.timesteps = timesteps
        # how the network answers this scheduler, chosen once: as it was trained, or through one of the conversions
        self.predict = self.native
        if self.preconditioning is not None and not self.edm_scheduler:
            self.predict = self.edm_model_for_vp
        elif self.preconditioning is None and self.edm_scheduler:
            if model_schedule is None or not hasattr(model_schedule, "alphas_cumprod"):
                raise ValueError(
                    f"{type(scheduler).__name__} can drive a DDPM-style model only when its training schedule is "
                    "known: build the pipeline with the scheduler it was saved with (from_pretrained does), or set "
                    "`pipeline.model_schedule` to that DDPMScheduler before swapping in the EDM scheduler."
                )
            self.predict = self.vp_model_for_edm
            self.model_alphas = model_schedule.alphas_cumprod
            self.model_prediction = model_schedule.config.get("prediction_type", "epsilon")
            self.scalings = EDMPreconditioning(sigma_data=scheduler.config.sigma_data)  # the scheduler's c_skip, c_out
            self.output_sign = -1.0 if scheduler.config.get("prediction_type") == "v_prediction" else 1.0

    @cached_property
    def sigmas(self) -> list[float]:
        """The noise level (EDM's sigma) of each step, on the scheduler's own schedule: what an EDM model is asked
        at under a discrete scheduler, and where a guidance interval starts and ends. Read to the host once, when
        first asked (a sampler that needs neither never reads the timesteps back). An EDM scheduler's are its own;
        a discrete schedule's are sqrt((1 - abar) / abar) at each timestep."""
        if self.edm_scheduler:
            return [float(sigma) for sigma in self.scheduler.sigmas[: len(self.timesteps)]]
        return sigma_at_timesteps(self.scheduler.alphas_cumprod, self.timesteps.cpu().tolist()).tolist()

    # -- what the network answers at step `step` (timestep `t`), in the scheduler's terms: `predict` is one of these
    def native(self, step: int, t, sample: torch.Tensor, model_input: torch.Tensor,
               kwargs: dict[str, Any]) -> torch.Tensor:  # fmt: skip
        """A model under a scheduler of its own objective: the scheduler's scaled input, or, for an EDM-trained model,
        the model's own c_in (EDM's, the same as the scheduler's, or FDM's momentum one)."""
        if self.preconditioning is not None:
            sigma = self.scheduler.sigmas[self.scheduler.step_index].to(sample.device)
            model_input = (self.preconditioning.c_in(sigma) * sample).to(sample.dtype)
        return self.network(model_input, t, **kwargs).sample

    def edm_model_for_vp(self, step: int, t, sample: torch.Tensor, model_input: torch.Tensor,
                         kwargs: dict[str, Any]) -> torch.Tensor:  # fmt: skip
        """An EDM denoiser answering a VP scheduler: x_t -> x = x_t / sqrt(abar), D(x; sigma) -> its prediction."""
        sigma = float(self.sigmas[step])
        per_image = _per_image(sigma, model_input)
        abar = 1.0 / (1.0 + per_image**2)
        x = model_input.double() / abar.sqrt()
        # A schedule can start far above what an EDM model takes (squaredcos_cap_v2: sigma ~ 1e4); there D is the
        # data mean at any such sigma, so the model is asked at the highest level it accepts (sigma_max * 100, as
        # its own timestep check allows), while the conversion below keeps the true sigma.
        asked = min(sigma, self.preconditioning.sigma_max * 100)
        denoised = self.preconditioning.denoise(self.network, x.to(model_input.dtype), asked, **kwargs).double()
        prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if prediction_type == "sample":
            out = denoised
        else:
            epsilon = (x - denoised) / per_image
            out = epsilon if prediction_type == "epsilon" else abar.sqrt() * epsilon - (1 - abar).sqrt() * denoised
        return out.to(model_input.dtype)

    def vp_model_for_edm(self, step: int, t, sample: torch.Tensor, model_input: torch.Tensor,
                         kwargs: dict[str, Any]) -> torch.Tensor:  # fmt: skip
        """A VP model answering an EDM scheduler: x -> x_t = x sqrt(abar) at the matching fractional timestep,
        its prediction -> D -> F = (D - c_skip x) / c_out. (EDM schedulers keep their sigmas on the CPU.)"""
        sigma_value = float(self.scheduler.sigmas[self.scheduler.step_index])
        per_image = _per_image(sigma_value, sample)
        abar = 1.0 / (1.0 + per_image**2)
        x = sample.double()
        x_t = (x * abar.sqrt()).to(sample.dtype)
        t = float(timestep_at_sigmas(self.model_alphas, [sigma_value])[0])
        timestep = torch.full((sample.shape[0],), t, device=sample.device)
        output = self.network(x_t, timestep, **kwargs).sample.double()
        if self.model_prediction == "sample":
            denoised = output
        elif self.model_prediction == "v_prediction":
            denoised = abar.sqrt() * x_t.double() - (1 - abar).sqrt() * output
        else:
            denoised = x - per_image * output
        c_skip, c_out = self.scalings.c_skip(per_image), self.scalings.c_out(per_image)
        return (self.output_sign * (denoised - c_skip * x) / c_out).to(sample.dtype)
