"""Timing and inputs shared by the cost benchmarks (`cost` on the CPU, `gpu` on an accelerator): wall times with
the device synchronised around each call, and seeded random inputs of a model's size."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a wall time covers what was launched."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn`, one entry per repeat, after `warmup` calls; synchronised around each call."""
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` calls."""
    return statistics.median(timed(fn, repeats, device, warmup))


def inputs(model, batch: int, device, dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random batch of `model`'s sample size and integer timesteps in [0, 1000), on `device`."""
    c = model.config
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=generator)
    timestep = torch.randint(0, 1000, (batch,), generator=generator)
    return sample.to(device, dtype), timestep.to(device)
