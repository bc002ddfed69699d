"""A low-noise quality signal: the denoising error on held-out images, at fixed noise levels with fixed noise.

Sample-based scores (Fréchet distance, recognisable share) need hundreds of samples and still move by several
points between seeds. The error of the model's clean-image estimate on images it never trained on, with the same
noise every time, moves only when the model does; measured in image units at noise levels on EDM's scale, it is
comparable across objectives (`Objective.denoising_error`).
"""

from __future__ import annotations

import torch

from diffusers_cunet.objectives import Objective

HELD_OUT_SIGMAS = (0.1, 0.3, 1.0, 3.0)  # from nearly clean to mostly noise, for images in [-1, 1]


class HeldOutError:
    """Evaluates a model's denoising error on `images` (held out of training, in [-1, 1]) at `sigmas`.

    Args:
        images (`torch.Tensor`): `(N, C, H, W)` held-out images.
        class_labels (`torch.Tensor`, *optional*): their labels, for a class-conditional model.
        seed (`int`): seed of the fixed noise.
        batch_size (`int`): images per network call.
    """

    def __init__(self, images: torch.Tensor, class_labels: torch.Tensor | None = None, seed: int = 0,
                 sigmas: tuple[float, ...] = HELD_OUT_SIGMAS, batch_size: int = 128):  # fmt: skip
        if len(images) == 0:
            raise ValueError("HeldOutError needs at least one held-out image.")
        self.images = images
        self.class_labels = class_labels
        self.noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed + 7919))
        self.sigmas = sigmas
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, model, objective: Objective, device) -> dict[str, float]:
        """`{"mean": ..., "sigma=0.1": ..., ...}`: the mean squared error of the clean-image estimate per noise level
        (weighted by batch size) and their mean."""
        errors = {}
        for sigma in self.sigmas:
            total = 0.0
            for start in range(0, len(self.images), self.batch_size):
                clean = self.images[start : start + self.batch_size].to(device)
                noise = self.noise[start : start + self.batch_size].to(device)
                kwargs = {}
                if self.class_labels is not None:
                    kwargs["class_labels"] = self.class_labels[start : start + self.batch_size].to(device)
                total += objective.denoising_error(model, clean, noise, sigma, **kwargs) * len(clean)
            errors[f"sigma={sigma:g}"] = total / len(self.images)
        return {"mean": sum(errors.values()) / len(errors), **errors}
