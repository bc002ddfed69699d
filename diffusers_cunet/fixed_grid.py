"""Fixed-grid explicit Runge-Kutta integration on [0, 1] with no host synchronisation.

torchdiffeq's fixed-grid solvers build a time grid tensor, check their inputs with data-dependent branches and
read tensor values on the host in every call: on a GPU each of those stalls the device, `torch.compile` breaks
the graph there, and a CUDA graph cannot be captured. The neural-ODE blocks integrate an autonomous vector
field (it does not read the ODE time s) over [0, 1] with a handful of equal steps, so the whole solve is a short
unrolled sequence of field evaluations and tensor additions whose step size is a Python float. This module
does exactly that, with torchdiffeq's own tableaus (its `rk4` is the 3/8 rule), so both paths agree to float
rounding; the tests check it for every method and step count, gradients included. Adaptive solvers and the
adjoint stay with torchdiffeq.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method: stage i >= 1 evaluates the field at y + dt * sum_j a[i-1][j] k_j, and the
    step is y + dt * sum_i b[i] k_i. The node times c are not needed: the field is autonomous."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]

    @property
    def stages(self) -> int:
        return len(self.b)


# The tableaus torchdiffeq uses for these method names (torchdiffeq/_impl/fixed_grid.py and rk_common.py).
TABLEAUS: dict[str, ButcherTableau] = {
    "euler": ButcherTableau(a=(), b=(1.0,)),
    "midpoint": ButcherTableau(a=((0.5,),), b=(0.0, 1.0)),
    "heun2": ButcherTableau(a=((1.0,),), b=(0.5, 0.5)),
    "heun3": ButcherTableau(a=((1 / 3,), (0.0, 2 / 3)), b=(0.25, 0.0, 0.75)),
    "rk4": ButcherTableau(a=((1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), b=(0.125, 0.375, 0.375, 0.125)),
}


def _combine(y: torch.Tensor, dt: float, weights: tuple[float, ...], ks: list[torch.Tensor]) -> torch.Tensor:
    """y + dt * sum_j weights[j] * ks[j], skipping zero weights; Python-float coefficients, so nothing is copied to
    the device and nothing is read back."""
    out = y
    for weight, k in zip(weights, ks):
        if weight != 0.0:
            out = torch.add(out, k, alpha=dt * weight)
    return out


def integrate_fixed_grid(
    field: Callable[[torch.Tensor], torch.Tensor], y0: torch.Tensor, method: str, steps: int
) -> torch.Tensor:
    """Integrate dy/ds = field(y) from s = 0 to 1 with `steps` equal steps of `method`; returns y(1).

    Args:
        field: the autonomous vector field, `field(y) -> dy/ds`, called `stages * steps` times.
        y0: the state at s = 0.
        method: a key of `TABLEAUS` (`euler`, `midpoint`, `heun2`, `heun3`, `rk4`).
        steps: number of equal steps (the grid is s_n = n / steps, held as Python floats).
    """
    if method not in TABLEAUS:
        raise ValueError(f"No fixed-grid tableau for method {method!r}; expected one of {sorted(TABLEAUS)}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    tableau = TABLEAUS[method]
    dt = 1.0 / steps
    y = y0
    for _ in range(steps):
        ks = [field(y)]
        for row in tableau.a:
            ks.append(field(_combine(y, dt, row, ks)))
        y = _combine(y, dt, tableau.b, ks)
    return y
