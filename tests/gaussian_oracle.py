"""The exact denoiser for Gaussian data, wrapped as a diffusers model.

For data x0 ~ N(mu, s^2) (independent pixels) and a variance-preserving forward process
x_t = a x0 + sigma eps with a = sqrt(alpha_bar_t), sigma = sqrt(1 - alpha_bar_t), the posterior mean is

    E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + sigma^2) * (x_t - a mu)

and E[eps | x_t] = (x_t - a E[x0 | x_t]) / sigma, E[v | x_t] = a E[eps | x_t] - sigma E[x0 | x_t]. A sampler
that feeds this model correctly scaled inputs returns samples with mean mu and standard deviation s; a missing
`init_noise_sigma` or `scale_model_input` shows at once.

With a mean per class (`class_means`, the null class's being the unconditional mean) the oracles are class-conditional
and guidable. The posterior mean is affine in mu, so classifier-free guidance at scale w gives exactly the denoiser of
N(mu_null + w (mu_c - mu_null), s^2): a closed form for guided sampling.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput


def class_mean(config, class_labels, sample):
    """`mu`, or with `class_means` the mean of each image's class (N(class_means[c], s^2) data per class c; the
    null class's entry is the unconditional model's mean): a number or a `(batch, 1, 1, 1)` tensor."""
    if config.class_means is None:
        return config.mu
    means = torch.tensor(config.class_means, dtype=torch.float64, device=sample.device)
    return means[class_labels.to(sample.device)][:, None, None, None]


class GaussianOracle(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        mu: float = 0.2,
        s: float = 0.25,
        prediction_type: str = "epsilon",
        sample_size: int = 8,
        in_channels: int = 1,
        out_channels: int = 1,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        class_means: tuple[float, ...] | None = None,
        num_class_embeds: int | None = None,
        null_class_label: int | None = None,
    ):
        super().__init__()
        alphas_cumprod = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule
        ).alphas_cumprod
        # Schedulers with continuous sigmas (Euler, Heun, ...) call the model at fractional timesteps, found by
        # interpolating sigma = sqrt((1 - abar) / abar) linearly in t; do the same here.
        self.register_buffer("sigmas", ((1 - alphas_cumprod) / alphas_cumprod).sqrt().double(), persistent=False)
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # a parameter gives the model a device and dtype

    def alpha_bar(self, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.double().clamp(0, len(self.sigmas) - 1)
        sigma = torch.from_numpy(np.interp(t.cpu().numpy(), np.arange(len(self.sigmas)), self.sigmas.cpu().numpy()))
        return 1.0 / (1.0 + sigma**2)

    def forward(self, sample, timestep, class_labels=None, return_dict=True, **kwargs):
        timestep = torch.as_tensor(timestep).reshape(-1).expand(sample.shape[0])
        abar = self.alpha_bar(timestep).to(sample.device)[:, None, None, None]
        a, sigma = abar.sqrt(), (1 - abar).sqrt()
        mu, s2 = class_mean(self.config, class_labels, sample), self.config.s**2
        x = sample.double()
        x0 = mu + a * s2 / (a**2 * s2 + sigma**2) * (x - a * mu)
        eps = (x - a * x0) / sigma
        prediction = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - sigma * x0}[self.config.prediction_type]
        prediction = prediction.to(sample.dtype)
        return BaseOutput(sample=prediction) if return_dict else (prediction,)


class EDMGaussianOracle(ModelMixin, ConfigMixin):
    """The exact raw network F of EDM / EDM-FDM preconditioning for N(mu, s^2) data.

    With x = x0 + sigma * n, E[x0 | x] = mu + s^2 / (s^2 + sigma^2) * (x - mu). The model is called with
    c_in(sigma) * x and c_noise(sigma) = log(sigma) / 4, so it recovers sigma and x from its inputs (using the
    preconditioning in its config) and returns F = (E[x0 | x] - c_skip x) / c_out. A pipeline that scales the
    input with the wrong c_in, or a scheduler that forms D with other c_skip / c_out, gives the wrong samples."""

    @register_to_config
    def __init__(self, mu: float = 0.2, s: float = 0.25, preconditioning: dict | None = None, sample_size: int = 8,
                 in_channels: int = 1, out_channels: int = 1, class_means: tuple[float, ...] | None = None,
                 num_class_embeds: int | None = None, null_class_label: int | None = None):  # fmt: skip
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    @property
    def preconditioning(self):
        from diffusers_cunet.preconditioning import preconditioning_from_config

        return preconditioning_from_config(self.config.preconditioning)

    def forward(self, sample, timestep, class_labels=None, return_dict=True, **kwargs):
        pre = self.preconditioning
        c_noise = torch.as_tensor(timestep).double().reshape(-1).expand(sample.shape[0])[:, None, None, None]
        sigma = (4 * c_noise).exp().to(sample.device)
        x = sample.double() / pre.c_in(sigma)
        mu, s2 = class_mean(self.config, class_labels, sample), self.config.s**2
        x0 = mu + s2 / (s2 + sigma**2) * (x - mu)
        raw = ((x0 - pre.c_skip(sigma) * x) / pre.c_out(sigma)).to(sample.dtype)
        return BaseOutput(sample=raw) if return_dict else (raw,)
