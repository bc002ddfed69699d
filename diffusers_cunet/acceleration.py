"""GPU fast paths for a `ContinuousUNet2DModel`: `torch.compile` with a whole-graph check, and CUDA-graph replay.

With a fixed-grid solver the forward pass reads nothing back from the device (see `diffusers_cunet.fixed_grid`),
so `torch.compile(model, fullgraph=True)` takes it as one graph and a CUDA graph can capture it. Adaptive solvers
(data-dependent step counts) and the adjoint (torchdiffeq's autograd function) cannot be captured whole; the
helpers here refuse those settings with a `ValueError` before any work is done.

    pipe.unet = compile_model(pipe.unet, mode="reduce-overhead")    # diffusers' or our pipelines
    pipe.unet = CUDAGraphedModel(pipe.unet)                         # inference on a CUDA device
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .solvers import SolverConfig
from .unet_continuous_2d import ContinuousUNet2DOutput


def check_capturable(
    model: nn.Module, what: str, solver: Mapping[str, Any] | SolverConfig | None = None
) -> SolverConfig | None:
    """The solver settings `model` runs with (its own, or `solver` on top of them); `None` for a model without
    ODE blocks (e.g. diffusers' UNet2DModel), which has nothing to check.

    Raises:
        ValueError: if those settings cannot run inside one captured graph (`what`).
    """
    base = getattr(model, "solver", None)
    if base is None:
        return None
    split = getattr(model, "split_effort", None)  # a call's settings may also name ODE blocks it skips
    settings = split(solver)[0] if split is not None else SolverConfig.from_options(solver, base=base)
    if settings.is_adaptive:
        raise ValueError(
            f"{what} needs a fixed-grid ODE solver, but the model uses the adaptive {settings.method!r} (its step "
            "count depends on the data). Call model.set_solver(method='euler', steps=1) (or rk4, midpoint, heun2, "
            "heun3) first."
        )
    if settings.adjoint:
        raise ValueError(
            f"{what} cannot trace torchdiffeq's adjoint method. Call model.set_solver(adjoint=False) first "
            "(use gradient checkpointing to save memory instead)."
        )
    return settings


def compile_model(model: nn.Module, *, fullgraph: bool = True, **compile_kwargs: Any) -> nn.Module:
    """`torch.compile(model, fullgraph=fullgraph, **compile_kwargs)`, after checking that a whole graph is possible.

    Args:
        model: a `ContinuousUNet2DModel` (or any module; only cUNets are checked).
        fullgraph: require one graph with no breaks (the default: a break is a host synchronisation on a GPU).
        **compile_kwargs: passed to `torch.compile`, e.g. `mode="reduce-overhead"` or `backend="aot_eager"`.

    Raises:
        ValueError: `fullgraph=True` with an adaptive solver or the adjoint.
    """
    if fullgraph:
        check_capturable(model, "torch.compile(fullgraph=True)")
    return torch.compile(model, fullgraph=fullgraph, **compile_kwargs)


class CUDAGraphedModel(nn.Module):
    """Replays a model's inference forward pass from CUDA graphs, one captured per input signature.

    The first call with a new (sample shape, dtype, timestep shape, labels, autocast dtype) warms the model up on a
    side stream and captures a graph; later calls copy their inputs into its static buffers and replay it, which
    launches every kernel of the forward pass in one go. Outputs are returned as fresh tensors. Attributes the
    pipelines read (`config`, `dtype`, `device`, `evaluations_per_call`, ...) are those of the wrapped model.
    Inference only: the graphs are captured under `torch.no_grad()`, with the weights as they are; capture again
    (a new wrapper) after changing them in place is not needed, but after replacing parameter tensors it is.

    Args:
        model: a `ContinuousUNet2DModel` on a CUDA device with a fixed-grid, non-adjoint solver, or any model with
            `UNet2DModel`'s call signature (diffusers' `UNet2DModel` works too).
        warmup_calls: eager calls on the side stream before capture (cuDNN and allocator warm-up).

    Raises:
        ValueError: an adaptive solver or the adjoint (checked here, before anything is captured).
    """

    def __init__(self, model: nn.Module, warmup_calls: int = 2):
        super().__init__()
        check_capturable(model, "CUDA-graph capture")
        self.model = model
        self.warmup_calls = warmup_calls
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}
        self._pool = None  # one memory pool shared by every graph of this wrapper

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    @torch.no_grad()
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        solver: Mapping[str, Any] | SolverConfig | None = None,
        feature_cache: Any = None,
    ):
        """The wrapped model's forward pass (same arguments), replayed from the graph of this input signature
        (and of the solver settings and skipped blocks)."""
        if feature_cache is not None:
            raise ValueError(
                "CUDAGraphedModel cannot reuse features across calls (the cached tensors would live in the graph's "
                "own buffers); sample with cache_interval=None, or use compile_model."
            )
        if sample.device.type != "cuda":
            raise ValueError(f"CUDAGraphedModel needs CUDA tensors, got a sample on {sample.device}.")
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(timestep)
        if timestep.device.type == "cpu" and hasattr(self.model, "_check_edm_timestep"):
            self.model._check_edm_timestep(timestep.reshape(-1))  # host-side values: no device sync
        # A 0-d or 1-element timestep is broadcast to the batch here, so one graph serves every step.
        timestep = timestep.to(sample.device).reshape(-1).expand(sample.shape[0])
        inputs = {"sample": sample, "timestep": timestep}
        if class_labels is not None:
            inputs["class_labels"] = class_labels.to(sample.device)
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        effort = None
        if solver is not None:
            settings = check_capturable(self.model, "CUDA-graph capture", solver)
            if settings is None:
                raise ValueError(f"solver= applies to models with ODE blocks, not {type(self.model).__name__}.")
            effort = (settings, tuple(sorted(self.model.split_effort(solver)[1])))  # (solver, skipped blocks)
        key = (autocast, effort, *((n, tuple(v.shape), v.dtype) for n, v in inputs.items()))
        if key not in self._graphs:
            options = {} if effort is None else {"solver": {**vars(effort[0]), "skip": list(effort[1])}}
            self._graphs[key] = self._capture(inputs, options)
        graph, static_inputs, static_output = self._graphs[key]
        for name, value in inputs.items():
            static_inputs[name].copy_(value)
        graph.replay()
        output = static_output.clone()
        return ContinuousUNet2DOutput(sample=output) if return_dict else (output,)

    def _capture(self, inputs: dict[str, torch.Tensor], options: dict[str, Any]):
        static_inputs = {name: value.clone() for name, value in inputs.items()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_calls):
                self.model(**static_inputs, **options, return_dict=False)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # Autocast's cache of cast weights would be freed after capture while the graph still reads it.
        cache_enabled = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                static_output = self.model(**static_inputs, **options, return_dict=False)[0]
        finally:
            torch.set_autocast_cache_enabled(cache_enabled)
        self._pool = graph.pool()
        return graph, static_inputs, static_output
