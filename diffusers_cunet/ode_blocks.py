"""Neural-ODE blocks: the continuous replacement for a U-Net level's stack of residual blocks.

A block integrates its feature map ``z`` over ODE time s in [0, 1] with a small conv network as the vector
field. Unlike the authors' released code, the vector field is conditioned on the *diffusion* timestep (a
scale-shift from the time embedding, as diffusers' ``ResnetBlock2D`` with ``time_embedding_norm="scale_shift"``),
so the block knows how noisy its input is. Two dynamics are offered:

* ``first`` order:  dz/ds = f(z; t)
* ``second`` order: d[z, v]/ds = [v, f(z, v; t)], with v(0) from a small initial-velocity network.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from .fixed_grid import integrate_fixed_grid
from .solvers import SolverConfig

NORM_TYPES = ("group", "instance", "none")
ODE_ORDERS = ("first", "second")


def make_norm(norm_type: str, channels: int, num_groups: int, eps: float) -> nn.Module:
    """A normalisation layer by name: `group` (GroupNorm), `instance` (one group per channel) or `none`."""
    if norm_type == "group":
        return nn.GroupNorm(num_groups, channels, eps=eps)
    if norm_type == "instance":
        return nn.GroupNorm(channels, channels, eps=eps)
    if norm_type == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm_type {norm_type!r}; expected one of {list(NORM_TYPES)}.")


class ODEDynamics(nn.Module):
    """The right-hand side of a block's ODE, ``forward(state, conditioning) -> d state / ds``.

    The network is norm -> SiLU -> 3x3 conv -> norm -> time scale-shift -> SiLU -> dropout -> 3x3 conv. The last
    conv starts at zero, so a fresh block is the identity map and training starts from a plain U-Net skeleton.
    It is a pure function of its arguments: the diffusion-time conditioning, computed once per solve by
    :meth:`conditioning`, is passed in rather than stored on the module, so compiled or CUDA-graphed calls,
    concurrent calls and the adjoint can never see another call's conditioning.
    """

    def __init__(
        self,
        channels: int,
        temb_channels: int | None,
        order: str = "first",
        norm_type: str = "group",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        residual: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if order not in ODE_ORDERS:
            raise ValueError(f"Unknown ode_order {order!r}; expected one of {list(ODE_ORDERS)}.")
        self.order = order
        self.residual = residual
        self.norm_options = (norm_type, norm_num_groups, norm_eps)
        in_channels = channels if order == "first" else 2 * channels
        self.norm1 = make_norm(norm_type, in_channels, norm_num_groups, norm_eps)
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.norm2 = make_norm(norm_type, channels, norm_num_groups, norm_eps)
        self.time_emb_proj = nn.Linear(temb_channels, 2 * channels) if temb_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        # Evaluations in eager calls since the last reset. Compiled and graph-replayed calls skip it (a Python
        # counter would force recompiles); the pipelines count fixed-grid solves from the solver settings.
        self.nfe = 0

    def conditioning(self, temb: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The (scale, shift) pair of the time embedding for one solve, or `()` for an unconditioned field."""
        if self.time_emb_proj is None or temb is None:
            return ()
        scale, shift = self.time_emb_proj(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        return (scale, shift)

    def field(self, state: torch.Tensor, conditioning: tuple[torch.Tensor, ...]) -> torch.Tensor:
        hidden = self.conv1(F.silu(self.norm1(state)))
        hidden = self.norm2(hidden)
        if conditioning:
            scale, shift = conditioning
            hidden = torch.addcmul(shift, hidden, 1 + scale)
        hidden = self.conv2(self.dropout(F.silu(hidden)))
        if self.residual:  # the released code's `out + x`: kept as an option, see the README's measurement
            hidden = hidden + state[:, : hidden.shape[1]]
        return hidden

    def forward(self, state: torch.Tensor, conditioning: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            self.nfe += 1
        if self.order == "first":
            return self.field(state, conditioning)
        velocity = state[:, state.shape[1] // 2 :]
        return torch.cat([velocity, self.field(state, conditioning)], dim=1)


class InitialVelocity(nn.Module):
    """v(0) for second-order blocks: norm -> 3x3 conv -> SiLU -> norm -> 1x1 conv."""

    def __init__(self, channels: int, norm_type: str, norm_num_groups: int, norm_eps: float):
        super().__init__()
        self.net = nn.Sequential(
            make_norm(norm_type, channels, norm_num_groups, norm_eps),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.SiLU(),
            make_norm(norm_type, channels, norm_num_groups, norm_eps),
            nn.Conv2d(channels, channels, kernel_size=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ODEBlock(nn.Module):
    """Integrates a feature map with :class:`ODEDynamics` from s=0 to s=1 and returns the final features.

    Args:
        channels (`int`): feature channels (kept constant through the block).
        temb_channels (`int`, *optional*): width of the time embedding that conditions the dynamics.
        order (`str`): `"first"` or `"second"` order dynamics.
        **dynamics_options: the rest of :class:`ODEDynamics`' arguments (`norm_type`, `norm_num_groups`,
            `norm_eps`, `residual`, `dropout`); the initial velocity of a second-order block is normalised alike.
    """

    def __init__(self, channels: int, temb_channels: int | None, order: str = "first", **dynamics_options: Any):
        super().__init__()
        self.dynamics = ODEDynamics(channels, temb_channels, order, **dynamics_options)
        norm = self.dynamics.norm_options
        self.initial_velocity = InitialVelocity(channels, *norm) if order == "second" else None
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None, solver: SolverConfig) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(self._solve, x, temb, solver)
        return self._solve(x, temb, solver)

    def _solve(self, x: torch.Tensor, temb: torch.Tensor | None, solver: SolverConfig) -> torch.Tensor:
        conditioning = self.dynamics.conditioning(temb)
        state = x if self.initial_velocity is None else torch.cat([x, self.initial_velocity(x)], dim=1)
        if solver.uses_torchdiffeq:
            final = self._solve_with_torchdiffeq(state, conditioning, solver)
        else:  # the sync-free path: an unrolled loop that torch.compile and CUDA graphs take whole
            final = integrate_fixed_grid(lambda y: self.dynamics(y, conditioning), state, solver.method, solver.steps)
        return final[:, : x.shape[1]]

    def _solve_with_torchdiffeq(
        self, state: torch.Tensor, conditioning: tuple[torch.Tensor, ...], solver: SolverConfig
    ) -> torch.Tensor:
        """Adaptive methods and the adjoint: torchdiffeq, with the conditioning bound into the vector field."""

        def field(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.dynamics(y, conditioning)

        span = torch.tensor([0.0, 1.0], dtype=state.dtype, device=state.device)
        kwargs = solver.torchdiffeq_kwargs()
        if not solver.adjoint:
            return odeint(field, state, span, **kwargs)[-1]
        # The adjoint differentiates the vector field with respect to `adjoint_params` only. The time projection
        # acts through the conditioning tensors, so those are named instead of its weights (naming both would
        # count that gradient twice).
        projection = set(self.dynamics.time_emb_proj.parameters()) if self.dynamics.time_emb_proj else set()
        params = tuple(p for p in self.dynamics.parameters() if p.requires_grad and p not in projection)
        params += conditioning
        return odeint_adjoint(field, state, span, adjoint_params=params, **kwargs)[-1]
