"""Counting parameters and FLOPs the same way for every model (torch.utils.flop_counter)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_forward_flops(model: nn.Module, batch_size: int = 1, timestep: int | float | None = None) -> int:
    """FLOPs of one forward call on a random batch of the model's sample size (a multiply-add counts 2); the
    timestep defaults to 500, or c_noise(sigma = 1) = 0.0 for an EDM-preconditioned model."""
    config = model.config
    if timestep is None:
        timestep = 0.0 if getattr(model, "preconditioning", None) is not None else 500
    device = next(model.parameters()).device
    sample = torch.randn(batch_size, config.in_channels, config.sample_size, config.sample_size, device=device)
    kwargs = {}
    if getattr(config, "num_class_embeds", None):
        kwargs["class_labels"] = torch.zeros(batch_size, dtype=torch.long, device=device)
    # A compiled model (torch.compile or nn.Module.compile) cannot run under the counter's dispatch mode: count
    # its plain forward, which computes the same.
    call = getattr(model, "_orig_mod", model)
    if getattr(call, "_compiled_call_impl", None) is not None:
        call = call.forward
    with FlopCounterMode(display=False) as counter:
        call(sample, timestep, **kwargs)
    return counter.get_total_flops()


@torch.no_grad()
def count_call_flops(function: Callable[[], object]) -> int:
    """FLOPs of everything `function()` runs (e.g. a whole sampling call of a pipeline: every network call as it
    ran, skipped blocks and reused features included), counted by the same counter as `count_forward_flops`."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()
