"""What every benchmark shares: sampling a model with a scheduler, and reading the EMA weights of a checkpoint.
(The digits split and feature network come from `training.metrics.held_out_digits`.)"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from diffusers_cunet import ContinuousUNet2DModel
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.preconditioned_unet_2d import PreconditionedUNet2DModel
from training.checkpointing import EMA_FOLDER, load_ema_folder


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
