"""EDM preconditioning (Karras et al. 2022, arXiv 2206.00364) and its momentum variant from FDM (Wu et al. 2023,
arXiv 2306.06991), as four separate, visible scalings around a raw network F:

    D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

with x = clean + sigma * noise. The network itself stays a plain `ContinuousUNet2DModel`; the preconditioning
its weights were trained with is recorded in its config (`preconditioning`), so a saved model says how to call it.

The split matches diffusers' EDM schedulers (`EDMEulerScheduler`, `EDMDPMSolverMultistepScheduler`): their
`timesteps` are c_noise = log(sigma) / 4, their `scale_model_input` multiplies by EDM's c_in, and their `step`
forms D from the raw output with c_skip and c_out ("epsilon" prediction in their naming). FDM changes only c_in:
the pipelines apply the model's own c_in, and the schedulers do the rest unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

__all__ = [
    "PRECONDITIONING_TYPES",
    "EDMPreconditioning",
    "FDMPreconditioning",
    "edm_scheduler",
    "loss_weight_cap",
    "preconditioning_from_config",
    "vp_sigmas",
]


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _as_tensor(sigma: torch.Tensor | float) -> torch.Tensor:
    return sigma if torch.is_tensor(sigma) else torch.tensor(float(sigma), dtype=torch.float64)


@dataclass(frozen=True)
class EDMPreconditioning:
    """The EDM scalings for data of standard deviation `sigma_data`, trained for noise in [sigma_min, sigma_max]
    (the sampler's default range; FDM also uses it to place sigma on its time axis)."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    type: ClassVar[str] = "edm"

    def __post_init__(self) -> None:
        for name in ("sigma_data", "sigma_min", "sigma_max"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ValueError(f"preconditioning {name} must be a positive finite number, got {value!r}.")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max}).")

    # -- the four scalings
    def c_skip(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """How much of the noisy input passes straight to the output: sigma_data^2 / (sigma^2 + sigma_data^2)."""
        sigma = _as_tensor(sigma)
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Scale of the network's output: sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)."""
        sigma = _as_tensor(sigma)
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Scale of the network's input, 1 / sqrt(sigma^2 + sigma_data^2): unit variance at every noise level."""
        sigma = _as_tensor(sigma)
        return 1.0 / (sigma**2 + self.sigma_data**2).sqrt()

    def c_noise(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The network's time input, log(sigma) / 4 (what diffusers' EDM schedulers pass as `timesteps`)."""
        return _as_tensor(sigma).log() / 4

    def loss_weight(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """lambda(sigma) = 1 / c_out^2: makes the loss an unweighted MSE on the network's own output."""
        sigma = _as_tensor(sigma)
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    # -- using them
    def denoise(
        self,
        model: Any,
        noisy: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """D(x; sigma): the model's estimate of the clean images from `noisy` = clean + sigma * noise.

        `sigma` is a number or one value per image; `model_kwargs` (e.g. `solver`) go to the model's forward."""
        sigma = _as_tensor(sigma).to(device=noisy.device, dtype=torch.float32).reshape(-1)
        sigma = sigma.expand(noisy.shape[0])
        per_image = sigma[:, None, None, None]
        if class_labels is not None:
            model_kwargs["class_labels"] = class_labels
        network_input = (self.c_in(per_image) * noisy).to(noisy.dtype)
        raw = model(network_input, self.c_noise(sigma), **model_kwargs).sample
        return self.c_skip(per_image) * noisy + self.c_out(per_image) * raw.float()

    def to_config(self) -> dict[str, Any]:
        """The JSON form stored in the model's config under `preconditioning`."""
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class FDMPreconditioning(EDMPreconditioning):
    """EDM with FDM's momentum input scaling (arXiv 2306.06991, EDM-FDM):

        c_in(sigma) = exp(-m * beta(t)) * (1 + m * beta(t)),  beta(t) = beta_min * t + beta_d * t^2 / 2,
        t = (sigma - sigma_min) / (sigma_max - sigma_min)

    where m is the momentum multiplier. The critically damped factor goes from 1 at sigma_min (t = 0) down to
    ~5e-4 at sigma_max with the defaults; as m * beta -> 0 it tends to 1 (no damping). c_skip, c_out and c_noise
    are EDM's. Below sigma_min, t is clipped to 0 so the factor stays 1 rather than dipping under it.

    As in FDM's code, the factor *replaces* EDM's c_in, so the network sees x unnormalised (standard deviation
    up to ~17 near sigma = 20). `normalize_input=True` (our variant, not the paper's) multiplies EDM's c_in by it
    instead, keeping unit-variance inputs and damping them further at high noise."""

    momentum: float = 1.0
    beta_min: float = 0.1
    beta_d: float = 19.9
    normalize_input: bool = False
    type: ClassVar[str] = "edm-fdm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.normalize_input, bool):
            raise ValueError(f"preconditioning normalize_input must be true or false, got {self.normalize_input!r}.")
        for name in ("momentum", "beta_min", "beta_d"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"preconditioning {name} must be a non-negative finite number, got {value!r}.")

    def fdm_time(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """sigma placed on FDM's [0, 1] time axis (linearly between sigma_min and sigma_max)."""
        sigma = _as_tensor(sigma)
        return ((sigma - self.sigma_min) / (self.sigma_max - self.sigma_min)).clamp(min=0)

    def fdm_beta(self, t: torch.Tensor | float) -> torch.Tensor:
        """The integrated momentum schedule beta(t) = beta_min * t + beta_d * t^2 / 2."""
        t = _as_tensor(t)
        return self.beta_min * t + 0.5 * self.beta_d * t**2

    def c_in(self, sigma: torch.Tensor | float) -> torch.Tensor:
        damping = self.momentum * self.fdm_beta(self.fdm_time(sigma))
        factor = torch.exp(-damping) * (1 + damping)
        return factor * super().c_in(sigma) if self.normalize_input else factor


PRECONDITIONING_TYPES: dict[str, type[EDMPreconditioning]] = {
    EDMPreconditioning.type: EDMPreconditioning,
    FDMPreconditioning.type: FDMPreconditioning,
}


def preconditioning_from_config(config: Mapping[str, Any] | None) -> EDMPreconditioning | None:
    """Build the preconditioning recorded in a model config (`None`: a DDPM-style model without one).

    Raises:
        ValueError: for an unknown type or option, or an invalid value.
    """
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise ValueError(f"preconditioning must be a mapping like {{'type': 'edm'}} or None, got {config!r}.")
    options = dict(config)
    kind = options.pop("type", None)
    if kind not in PRECONDITIONING_TYPES:
        raise ValueError(f"Unknown preconditioning type {kind!r}; expected one of {sorted(PRECONDITIONING_TYPES)}.")
    cls = PRECONDITIONING_TYPES[kind]
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for {kind!r} preconditioning; known: {sorted(known)}.")
    return cls(**options)


def vp_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """EDM's sigma of every timestep of a variance-preserving (DDPM-style) schedule, sqrt((1 - abar) / abar), in
    float64 on the CPU: the two objectives describe the same noisy image up to scale, x_t / sqrt(abar) = clean +
    sigma * noise, so this is the one place the two noise scales meet."""
    abar = alphas_cumprod.detach().double().cpu()
    return ((1 - abar) / abar).sqrt()


def loss_weight_cap(step: int, warmup_steps: int, start: float = 5.0, end: float = 500.0) -> float:
    """FDM's loss-weight warm-up: lambda(sigma) is clipped at a cap that grows geometrically from `start` to `end`
    over `warmup_steps` optimizer steps (infinite, i.e. no clipping, after that or when `warmup_steps` is 0).

    A function of the step alone, so a resumed run clips exactly as an uninterrupted one."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return math.inf
    return start * (end / start) ** (step / warmup_steps)


EDM_SAMPLERS = ("dpmsolver++", "euler")


def edm_scheduler(model_or_preconditioning: Any, sampler: str = "dpmsolver++", **options: Any):
    """A diffusers EDM scheduler that matches a preconditioned model (its sigma_data, sigma_min, sigma_max):
    `EDMDPMSolverMultistepScheduler` (`sampler="dpmsolver++"`, second order, good at few steps) or
    `EDMEulerScheduler` (`"euler"`). `options` go to the scheduler's constructor.

    Raises:
        ValueError: if the model has no preconditioning, or for an unknown sampler.
    """
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    preconditioning = model_or_preconditioning
    if not isinstance(preconditioning, EDMPreconditioning):
        preconditioning = getattr(model_or_preconditioning, "preconditioning", None)
    if preconditioning is None:
        raise ValueError("The model has no EDM preconditioning; use a discrete scheduler such as DDIMScheduler.")
    if sampler not in EDM_SAMPLERS:
        raise ValueError(f"Unknown EDM sampler {sampler!r}; expected one of {list(EDM_SAMPLERS)}.")
    cls = EDMDPMSolverMultistepScheduler if sampler == "dpmsolver++" else EDMEulerScheduler
    settings = {
        "sigma_min": preconditioning.sigma_min,
        "sigma_max": preconditioning.sigma_max,
        "sigma_data": preconditioning.sigma_data,
        "prediction_type": "epsilon",  # diffusers' name for the raw network output F
        **options,
    }
    return cls(**settings)
