"""Validated ODE-solver settings for the continuous U-Net's neural-ODE blocks.

torchdiffeq accepts any option dictionary and only warns about unknown keys; a typo there silently changes
what the network computes. Everything that reaches torchdiffeq therefore goes through :class:`SolverConfig`,
which raises a ``ValueError`` for an unknown method or option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from .fixed_grid import TABLEAUS

# Fixed-grid methods and the function evaluations (Runge-Kutta stages) each spends per step. A fixed grid makes
# a sample's output independent of the batch it was computed in, so these are the defaults.
EVALUATIONS_PER_STEP: dict[str, int] = {name: tableau.stages for name, tableau in TABLEAUS.items()}
# Order of accuracy of each fixed-grid method (the tests check the observed convergence against it).
FIXED_STEP_ORDERS: dict[str, int] = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
# Adaptive methods choose their own steps from rtol/atol; their cost depends on the data.
ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
SOLVER_METHODS: tuple[str, ...] = tuple(EVALUATIONS_PER_STEP) + ADAPTIVE_METHODS


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """How one neural-ODE block integrates its features from ODE time 0 to 1.

    Args:
        method (`str`): a torchdiffeq method; fixed-grid (`euler`, `midpoint`, `heun2`, `heun3`, `rk4`) or
            adaptive (`dopri5`, `dopri8`, `bosh3`, `fehlberg2`, `adaptive_heun`).
        steps (`int`): number of equal steps on [0, 1] for a fixed-grid method (ignored by adaptive ones).
        rtol (`float`): relative tolerance of an adaptive method.
        atol (`float`): absolute tolerance of an adaptive method.
        adjoint (`bool`): back-propagate with the adjoint method (memory constant in the number of steps,
            at the price of a second ODE solve backwards).
    """

    method: str = "euler"
    steps: int = 1
    rtol: float = 1e-3
    atol: float = 1e-4
    adjoint: bool = False

    def __post_init__(self) -> None:
        if self.method not in SOLVER_METHODS:
            raise ValueError(f"Unknown ODE solver method {self.method!r}; expected one of {list(SOLVER_METHODS)}.")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"Solver steps must be a positive integer, got {self.steps!r}.")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Solver {name} must be a positive number, got {value!r}.")
        if not isinstance(self.adjoint, bool):
            raise ValueError(f"Solver adjoint must be a bool, got {self.adjoint!r}.")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | SolverConfig | None = None, base: SolverConfig | None = None):
        """Build a config from a mapping of overrides on top of `base` (default settings when `None`).

        Raises:
            ValueError: if `options` holds a key that is not a solver setting.
        """
        base = base if base is not None else cls()
        if options is None:
            return base
        if isinstance(options, SolverConfig):
            return options
        if not isinstance(options, Mapping):
            raise ValueError(f"Solver options must be a mapping or a SolverConfig, got {type(options).__name__}.")
        unknown = sorted(name for name in options if name not in SOLVER_OPTIONS)
        if unknown:
            raise ValueError(f"Unknown ODE solver option(s) {unknown}; expected some of {sorted(SOLVER_OPTIONS)}.")
        # Written out rather than dataclasses.replace, which torch.compile cannot trace (a per-call override
        # inside a compiled forward must not break the graph).
        return cls(**{name: options[name] if name in options else getattr(base, name) for name in SOLVER_OPTIONS})

    @property
    def is_adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    @property
    def evaluations_per_solve(self) -> int | None:
        """Function evaluations one block spends per solve; `None` for adaptive methods (data dependent)."""
        if self.is_adaptive:
            return None
        return EVALUATIONS_PER_STEP[self.method] * self.steps

    @property
    def uses_torchdiffeq(self) -> bool:
        """Adaptive methods and the adjoint run through torchdiffeq; plain fixed-grid solves take the sync-free
        unrolled loop of `diffusers_cunet.fixed_grid` (same tableaus, same result to float rounding)."""
        return self.is_adaptive or self.adjoint

    def torchdiffeq_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `torchdiffeq.odeint` integrating over [0, 1]."""
        if self.is_adaptive:
            return {"method": self.method, "rtol": self.rtol, "atol": self.atol}
        steps = self.steps

        def grid(func, y0, t):
            # An explicit grid (`step_size=1/steps` rounds up to an extra step for some counts) on the span, which
            # the adjoint runs backwards. lerp hits both ends exactly, and no value is read back from the device.
            weights = torch.linspace(0.0, 1.0, steps + 1, dtype=t.dtype, device=t.device)
            return torch.lerp(t[0], t[-1], weights)

        return {"method": self.method, "options": {"grid_constructor": grid}}


SOLVER_OPTIONS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(SolverConfig))
