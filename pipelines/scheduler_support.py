"""Which diffusers schedulers our pipelines can drive, with which prediction types, and how to call them.

A discrete-time variance-preserving model (epsilon / v / x0 prediction) is served correctly by the schedulers
below when the caller applies `init_noise_sigma` and `scale_model_input` and passes `generator` only to a
`step` that takes it. Each entry was checked against the closed-form Gaussian denoiser (tests/test_pipelines.py);
the prediction types a scheduler lacks are the ones its `step` rejects.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

ALL_PREDICTIONS = frozenset({"epsilon", "v_prediction", "sample"})
NO_SAMPLE = frozenset({"epsilon", "v_prediction"})

SUPPORTED_SCHEDULERS: dict[str, frozenset[str]] = {
    "DDPMScheduler": ALL_PREDICTIONS,
    "DDPMParallelScheduler": ALL_PREDICTIONS,
    "DDIMScheduler": ALL_PREDICTIONS,
    "DDIMParallelScheduler": ALL_PREDICTIONS,
    "PNDMScheduler": NO_SAMPLE,
    "LMSDiscreteScheduler": ALL_PREDICTIONS,
    "EulerDiscreteScheduler": ALL_PREDICTIONS,
    "EulerAncestralDiscreteScheduler": NO_SAMPLE,
    "HeunDiscreteScheduler": ALL_PREDICTIONS,
    "KDPM2DiscreteScheduler": NO_SAMPLE,
    "KDPM2AncestralDiscreteScheduler": NO_SAMPLE,
    "DPMSolverMultistepScheduler": ALL_PREDICTIONS,
    "DPMSolverSinglestepScheduler": ALL_PREDICTIONS,
    "DPMSolverSDEScheduler": NO_SAMPLE,
    "UniPCMultistepScheduler": ALL_PREDICTIONS,
    "DEISMultistepScheduler": ALL_PREDICTIONS,
    "SASolverScheduler": ALL_PREDICTIONS,
}

# Schedulers that run but would return wrong images for this kind of model, and why.
UNSUPPORTED_REASONS: dict[str, str] = {
    "IPNDMScheduler": "it integrates a variance-exploding (sin/cos) parameterisation, not a discrete VP schedule",
    "LCMScheduler": "it is made for consistency-distilled models",
    "TCDScheduler": "it is made for consistency-distilled models",
    "CMStochasticIterativeScheduler": "it is made for consistency models",
    "FlowMatchEulerDiscreteScheduler": "it is made for flow-matching (velocity field) models",
    "FlowMatchHeunDiscreteScheduler": "it is made for flow-matching (velocity field) models",
    "DDIMInverseScheduler": "it inverts images to noise, it does not generate",
    "DPMSolverMultistepInverseScheduler": "it inverts images to noise, it does not generate",
}


# The schedulers that diffusers' own DDPMPipeline drives correctly for a DDPM-style model. DDPMPipeline neither
# scales the initial noise by `init_noise_sigma` nor calls `scale_model_input`, and it always passes `generator`
# to `step`: right only for schedulers with init_noise_sigma 1, an identity scale_model_input and a `step` that
# takes a generator (tests/test_diffusers_integration.py derives this list from those three properties). Euler,
# Heun, LMS, KDPM2 and DPM-SDE come out wrong through it; PNDM, UniPC and DEIS raise a TypeError.
DDPM_PIPELINE_SCHEDULERS = (
    "DDPMScheduler",
    "DDPMParallelScheduler",
    "DDIMScheduler",
    "DDIMParallelScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "SASolverScheduler",
)


def loading_advice(folder: str, preconditioned: bool = False) -> str:
    """How to load a saved pipeline folder (or Hub id) correctly, for the end of training and the model card."""
    line = (
        f"load it with `from diffusers_cunet.pipelines import ContinuousUNetPipeline` and "
        f"`ContinuousUNetPipeline.from_pretrained({folder!r})`, which drives every supported scheduler"
    )
    if preconditioned:
        return line + " (the model needs its EDM scheduler, saved with it)."
    names = ", ".join(name.removesuffix("Scheduler") for name in DDPM_PIPELINE_SCHEDULERS)
    return line + (
        f"; diffusers' DDPMPipeline loads it too (with trust_remote_code=True: it runs the code saved in the folder) "
        f"but is right only with these schedulers: {names}."
    )


# Schedulers for models trained with EDM / EDM-FDM preconditioning (the model config's `preconditioning`): they
# apply c_skip and c_out to the raw network output ("epsilon" in their naming) and pass c_noise as the timestep;
# the pipeline gives the network the model's own c_in (EDM's, or FDM's momentum scaling).
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")


def supported_schedulers(unet, prediction_type: str = "epsilon") -> list[type]:
    """The diffusers scheduler classes `ContinuousUNetPipeline` drives correctly for `unet`, those of its own
    objective first: an EDM-trained model's EDM schedulers, then (through the objective bridge) every discrete one;
    a DDPM-style model's discrete schedulers that take its `prediction_type` (its scheduler config's), then the EDM
    ones where it predicts the noise or the velocity."""
    import diffusers

    preconditioning = getattr(unet, "preconditioning", None)
    prediction = "epsilon" if preconditioning is not None else prediction_type
    discrete = sorted(name for name, predictions in SUPPORTED_SCHEDULERS.items() if prediction in predictions)
    edm = list(EDM_SCHEDULERS) if preconditioning is not None or prediction in NO_SAMPLE else []
    names = [*edm, *discrete] if preconditioning is not None else [*discrete, *edm]
    return [getattr(diffusers, name) for name in names if hasattr(diffusers, name)]


def scheduler_for(scheduler_class: type, unet, current) -> Any:
    """A `scheduler_class` for `unet` in place of the pipeline's `current` scheduler: built from the current config
    where both are of one kind (EDM, or discrete with the model's training schedule), else from its own defaults
    (an EDM config has no betas, and a discrete one no sigmas; the objective bridge converts between them)."""
    same_kind = (scheduler_class.__name__ in EDM_SCHEDULERS) == is_edm_scheduler(current)
    scheduler = scheduler_class.from_config(current.config) if same_kind else scheduler_class()
    check_scheduler(scheduler, unet)
    return scheduler


def is_edm_scheduler(scheduler) -> bool:
    return type(scheduler).__name__ in EDM_SCHEDULERS


def check_scheduler(scheduler, unet=None, cross_objective: bool = True) -> str:
    """Return the scheduler's prediction type, or raise `ValueError` if the pipeline cannot drive it correctly.

    With `cross_objective` (the generation pipeline), an EDM-trained `unet` may be driven by a discrete scheduler and
    a DDPM-style one by an EDM scheduler (`objective_bridge` converts); otherwise (the denoising pipeline, which
    starts from a noise level on the model's own scale) each model needs a scheduler of its own objective."""
    name = type(scheduler).__name__
    preconditioning = getattr(unet, "preconditioning", None)
    if name in EDM_SCHEDULERS:
        return _check_edm_pair(scheduler, preconditioning, cross_objective)
    if preconditioning is not None and not cross_objective:
        raise ValueError(
            f"The model was trained with {preconditioning.type!r} preconditioning, so it needs an EDM scheduler "
            f"({' or '.join(EDM_SCHEDULERS)}) here, not {name}; "
            "`diffusers_cunet.preconditioning.edm_scheduler(model)` builds one that matches it "
            "(ContinuousUNetPipeline drives it with every scheduler)."
        )
    if name not in SUPPORTED_SCHEDULERS:
        reason = UNSUPPORTED_REASONS.get(name, "it has not been checked against this pipeline")
        raise ValueError(
            f"ContinuousUNetPipeline cannot drive {name}: {reason}. Supported schedulers: "
            f"{', '.join(sorted(SUPPORTED_SCHEDULERS))}."
        )
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in SUPPORTED_SCHEDULERS[name]:
        raise ValueError(
            f"{name} does not support prediction_type={prediction_type!r}; it supports "
            f"{sorted(SUPPORTED_SCHEDULERS[name])}."
        )
    return prediction_type


def _check_edm_pair(scheduler, preconditioning, cross_objective: bool) -> str:
    name = type(scheduler).__name__
    if preconditioning is None and cross_objective:
        if scheduler.config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
            raise ValueError(f"{name} takes prediction_type 'epsilon' or 'v_prediction' (its sign of c_out).")
        return scheduler.config.get("prediction_type", "epsilon")
    if preconditioning is None:
        raise ValueError(
            f"{name} needs a model trained with EDM preconditioning here (c_in, c_skip, c_out, c_noise; a config "
            "with `preconditioning`, as `training/train.py --preconditioning edm` or `edm-fdm` writes); this model "
            f"is a DDPM-style one. Use one of: {', '.join(sorted(SUPPORTED_SCHEDULERS))} (ContinuousUNetPipeline "
            "drives it with the EDM schedulers too)."
        )
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type != "epsilon":
        raise ValueError(
            f"{name} with prediction_type={prediction_type!r} flips the sign of c_out; our EDM models are trained "
            "for prediction_type='epsilon' (D = c_skip * x + c_out * F)."
        )
    sigma_data = scheduler.config.get("sigma_data")
    if abs(sigma_data - preconditioning.sigma_data) > 1e-9:
        raise ValueError(
            f"{name} has sigma_data={sigma_data} but the model was trained with "
            f"sigma_data={preconditioning.sigma_data}: c_skip and c_out would be wrong."
        )
    return prediction_type


# These compute the previous timestep as `t - num_train_timesteps // num_inference_steps`: right only when the
# schedule is evenly spaced by exactly that gap (not so for "trailing"/"linspace" spacing with most step counts).
FIXED_GAP_SCHEDULERS = ("DDIMScheduler", "DDIMParallelScheduler")


def check_timesteps(scheduler) -> None:
    """Raise if a fixed-gap scheduler was given a timestep grid it would step through wrongly."""
    name = type(scheduler).__name__
    if name not in FIXED_GAP_SCHEDULERS:
        return
    timesteps = [int(t) for t in scheduler.timesteps.tolist()]  # one read from the device, not one per step
    gap = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    unique = sorted(set(timesteps), reverse=True)
    gaps = {a - b for a, b in zip(unique, unique[1:])}
    if gaps - {gap}:
        raise ValueError(
            f"{name} steps by a fixed gap of {gap} but timestep_spacing={scheduler.config.timestep_spacing!r} with "
            f"{scheduler.num_inference_steps} steps gives gaps {sorted(gaps)}: the images would be wrong. Use a step "
            f"count that divides {scheduler.config.num_train_timesteps}, or timestep_spacing='leading'."
        )


def step_kwargs(scheduler, generator) -> dict:
    """`generator` for schedulers whose `step` takes one (the stochastic ones), nothing for the others."""
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


def seed_noise_sampler(scheduler, generator) -> None:
    """DPMSolverSDE draws its noise from a Brownian tree seeded by `noise_sampler_seed`, not from `step`'s
    generator: derive that seed from the caller's generator so a seeded call is reproducible."""
    if generator is None or not hasattr(scheduler, "noise_sampler_seed"):
        return
    if scheduler.config.get("noise_sampler_seed") is not None:
        return
    first = generator[0] if isinstance(generator, list) else generator
    scheduler.noise_sampler_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=first, device=first.device))
    scheduler.noise_sampler = None
