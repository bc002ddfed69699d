"""What every benchmark shares: choosing the variants to run, sampling a model with a scheduler, and scoring the EMA
weights of a run's checkpoints. (The digits split and feature network: `evaluation.digits.held_out_digits`.)"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from diffusers_cunet import ContinuousUNet2DModel
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.preconditioned_unet_2d import PreconditionedUNet2DModel
from training.checkpointing import EMA_FOLDER, checkpoint_step, list_checkpoints, load_ema_folder

Variant = TypeVar("Variant")


def chosen_variants(variants: Sequence[Variant], only: Iterable[str] | None, mode: str) -> list[Variant]:
    """The `variants` (each with a `name`) named in `only` (all of them when it is None or empty), in their own
    order; a name that no variant has is a ValueError that lists them (a misspelt `--only` would otherwise run
    nothing, silently)."""
    names = [variant.name for variant in variants]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"No {mode}-mode models named {unknown}; they are {names}.")
    return [variant for variant in variants if not only or variant.name in only]


@torch.no_grad()
def sample(unet, scheduler, count: int, steps: int, seed: int) -> tuple[torch.Tensor, float, int | None]:
    """`count` samples in [0, 1] with `scheduler`, the seconds per image, and ODE evaluations per image."""
    pipe = ContinuousUNetPipeline(unet=unet.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    out = pipe(
        batch_size=count, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="pt"
    )
    seconds = (time.perf_counter() - start) / count
    return out.images.cpu(), seconds, out.ode_evaluations  # every image passes through every evaluation


def model_class(model_type: str) -> type:
    """The model class of a benchmark's `model_type`: "cunet" or "unet2d" (which loads DDPM-style and EDM-trained
    UNet2DModels alike)."""
    return ContinuousUNet2DModel if model_type == "cunet" else PreconditionedUNet2DModel


def load_ema(checkpoint: Path, model_type: str):
    """The EMA weights of a training checkpoint (diffusers' EMAModel folder, read quietly)."""
    return load_ema_folder(checkpoint / EMA_FOLDER, model_class(model_type))[0]


def scored_steps(steps: list[int], total: int, fractions: tuple[float, ...] | None) -> set[int]:
    """The checkpoint steps nearest to each fraction of `total` (all of them when `fractions` is None)."""
    if fractions is None or not steps:
        return set(steps)
    return {min(steps, key=lambda step: abs(step - fraction * total)) for fraction in fractions}


def checkpoint_models(
    output: Path,
    model_type: str,
    total_steps: int,
    fractions: tuple[float, ...] | None = None,
    final_model=None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[int, Any]]:
    """Each training checkpoint of the run in `output`, in step order, as (step, its EMA weights) at the steps
    nearest to `fractions` of `total_steps` (every step when None) and (step, None) at the others, so that a
    curve can list every step and score some. `final_model`, where given, stands in for the EMA weights at
    `total_steps` (the exported model: the same weights, not read again). Weights are read one checkpoint at a time."""
    checkpoints = {checkpoint_step(checkpoint): checkpoint for checkpoint in list_checkpoints(output)}
    scored = scored_steps(sorted(checkpoints), total_steps, fractions)
    for step, checkpoint in sorted(checkpoints.items()):
        if step not in scored:
            yield step, None
        elif final_model is not None and step == total_steps:
            yield step, final_model
        else:
            yield step, load_ema(checkpoint, model_type).to(device)
