"""Classifier-free guidance (Ho & Salimans 2022) for class-conditional models trained with a null class.

Training replaces a label by the null class with some probability (`drop_labels`), so one network learns both the
conditional and the unconditional prediction; the model's config records the null class (`null_class_label`). At
sampling time `GuidedNetwork` asks both in one batched call of twice the batch and returns

    out = uncond + scale * (cond - uncond)

on the network's raw output. Every quantity a scheduler or the objective bridge derives from that output (noise,
velocity, x0, EDM's D = c_skip x + c_out F) is affine in it with coefficients that do not depend on the label, so
guiding the raw output is guiding each of them: one rule for every objective and scheduler. An optional interval of
noise levels limits guidance to where it helps (Kynkaanniemi et al. 2024, used by EDM2); outside it the call is the
plain conditional one, at the plain cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

NULL_CLASS_KEY = "null_class_label"  # the model-config entry that makes a class-conditional model guidable


def null_class_of(model) -> int | None:
    """The null class a model was trained with (its config's `null_class_label`), or `None` if it has none."""
    config = getattr(model, "config", None)
    value = config.get(NULL_CLASS_KEY) if hasattr(config, "get") else getattr(config, NULL_CLASS_KEY, None)
    return None if value is None else int(value)


def check_null_class(null_class_label: int | None, num_class_embeds: int | None) -> None:
    """Raise unless `null_class_label` is `None` or the last of `num_class_embeds` classes (the extra embedding
    training added for "no class")."""
    if null_class_label is None:
        return
    if not num_class_embeds:
        raise ValueError("null_class_label needs a class-conditional model (num_class_embeds).")
    if null_class_label != num_class_embeds - 1:
        raise ValueError(
            f"null_class_label must be the last class embedding, {num_class_embeds - 1}, got {null_class_label}."
        )


def drop_labels(labels: torch.Tensor, probability: float, null_class: int, generator: torch.Generator) -> torch.Tensor:
    """`labels` with each replaced by `null_class` with `probability` (the draws from `generator`, on the CPU)."""
    dropped = torch.rand(labels.shape[0], generator=generator) < probability
    return torch.where(dropped.to(labels.device), torch.full_like(labels, null_class), labels)


@dataclass
class _Output:
    sample: torch.Tensor


class GuidedNetwork:
    """A class-conditional network called like the model (`network(sample, timestep, class_labels=..., ...)`)
    that returns the guided output while guidance is on for the step (`active`), the model's own otherwise.

    Args:
        model: the network; its config names the null class (`null_class_of`).
        scale (`float`): the guidance scale w; 1 is plain conditional sampling, 0 unconditional.
        interval (`tuple[float, float]`, *optional*): guide only at noise levels sigma in [low, high] (EDM's sigma;
            a discrete schedule's sigma = sqrt((1 - abar) / abar)); everywhere when `None`.
    """

    def __init__(self, model, scale: float, interval: tuple[float, float] | None = None):
        self.model = model
        self.null_class = null_class_of(model)
        self.scale = float(scale)
        self.interval = interval
        self.active = True  # set per step by `for_sigma`

    def for_sigma(self, sigma: float) -> None:
        """Turn guidance on or off for a step at noise level `sigma`."""
        self.active = self.interval is None or self.interval[0] <= sigma <= self.interval[1]

    @property
    def copies(self) -> int:
        """How many times each image passes through the network in this step's call: 2 while guiding."""
        return 2 if self.active else 1

    def __call__(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None, **kwargs: Any):
        if not self.active:
            return self.model(sample, timestep, class_labels=class_labels, **kwargs)
        batch = sample.shape[0]
        if torch.is_tensor(timestep) and timestep.ndim == 1 and timestep.shape[0] == batch:
            timestep = torch.cat([timestep, timestep])
        labels = torch.cat([class_labels, torch.full_like(class_labels, self.null_class)])
        both = self.model(torch.cat([sample, sample]), timestep, class_labels=labels, **kwargs).sample
        conditional, unconditional = both[:batch], both[batch:]
        guided = unconditional.float() + self.scale * (conditional.float() - unconditional.float())
        return _Output(sample=guided.to(both.dtype))


def guided_network(
    model, guidance_scale: float, guidance_interval: tuple[float, float] | None, labels: torch.Tensor | None
) -> GuidedNetwork | None:
    """The `GuidedNetwork` for one sampling call, or `None` for plain sampling (scale 1 with no interval)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}.")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be finite and >= 0, got {guidance_scale}.")
    if guidance_interval is not None:
        low, high = (float(v) for v in guidance_interval)
        if not (0 <= low <= high):
            raise ValueError(f"guidance_interval must be (low, high) with 0 <= low <= high, got {guidance_interval}.")
        guidance_interval = (low, high)
    if guidance_scale == 1:
        return None  # plain conditional sampling, bit for bit (an interval changes nothing at scale 1)
    if labels is None:
        raise ValueError("guidance_scale != 1 needs class_labels: guidance steers a class-conditional model.")
    null_class = null_class_of(model)
    if null_class is None:
        raise ValueError(
            "This model has no null class, so it cannot be guided (guidance_scale must be 1): train it with "
            "--class_dropout_prob (e.g. 0.1) to record one."
        )
    if (labels == null_class).any():
        raise ValueError("class_labels must not be the null class when guiding.")
    return GuidedNetwork(model, guidance_scale, guidance_interval)
