"""The training noise schedule, written out in full so that scheduler swaps keep it.

diffusers records which constructor arguments were left at their defaults (`_use_default_values`) and
`SomeScheduler.from_config(config)` drops those, taking *its own* defaults instead. A `DDPMScheduler()` left
at its default betas (1e-4 .. 0.02) therefore becomes a `HeunDiscreteScheduler`, `KDPM2DiscreteScheduler` or
`DPMSolverSDEScheduler` with Stable Diffusion's betas (8.5e-4 .. 0.012): a different noise schedule, silently
(measured: sigma_max 25.1 instead of 157.4). Passing every schedule-defining value explicitly avoids it.
"""

from __future__ import annotations

from diffusers import DDPMScheduler

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def make_noise_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    prediction_type: str = "epsilon",
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    clip_sample: bool = True,
) -> DDPMScheduler:
    """A `DDPMScheduler` whose schedule-defining settings are all explicit, so `from_config` swaps keep them."""
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"Unknown beta_schedule {beta_schedule!r}; expected one of {list(BETA_SCHEDULES)}.")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unknown prediction_type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}.")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=clip_sample,
        clip_sample_range=1.0,
        rescale_betas_zero_snr=False,
    )  # timestep_spacing stays at its default on purpose: each scheduler then uses its own, see the README
