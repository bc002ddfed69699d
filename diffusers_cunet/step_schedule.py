"""Step-aware compute (after DDSM, arXiv 2310.03337): ODE-solver effort chosen per diffusion timestep.

A `SolverStepSchedule` splits the training timesteps [0, num_train_timesteps) into equal bins and gives each
bin the solver settings its network calls use. It is saved as `solver_schedule.json` beside a pipeline and
passed to the pipelines as `solver_schedule=` (it is callable as `schedule(step_index, timestep)`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic_write import replace_text
from .solvers import SolverConfig

SCHEDULE_FILE = "solver_schedule.json"


@dataclass(frozen=True)
class SolverStepSchedule:
    """Solver settings per timestep bin.

    Args:
        settings (`list[dict]`): one solver-settings mapping per bin, bin 0 holding the lowest timesteps
            (e.g. `[{"method": "euler", "steps": 1}, {"method": "euler", "steps": 2}]`).
        num_train_timesteps (`int`): the range the bins divide.
    """

    settings: tuple[dict[str, Any], ...]
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if not self.settings:
            raise ValueError("A SolverStepSchedule needs at least one bin.")
        if self.num_train_timesteps < len(self.settings):
            raise ValueError(f"{len(self.settings)} bins cannot divide {self.num_train_timesteps} timesteps.")
        for entry in self.settings:
            SolverConfig.from_options(entry)  # raises ValueError for unknown methods or options
        object.__setattr__(self, "settings", tuple(dict(entry) for entry in self.settings))

    @property
    def num_bins(self) -> int:
        return len(self.settings)

    def bin_of(self, timestep: float) -> int:
        index = int(float(timestep) * self.num_bins // self.num_train_timesteps)
        return min(max(index, 0), self.num_bins - 1)

    def __call__(self, step_index: int, timestep: float) -> dict[str, Any]:
        return self.settings[self.bin_of(timestep)]

    def evaluations_per_call(self, timestep: float, num_ode_blocks: int) -> int:
        per_block = SolverConfig.from_options(self(0, timestep)).evaluations_per_solve
        if per_block is None:
            raise ValueError("Adaptive solvers have no fixed evaluation count.")
        return per_block * num_ode_blocks

    def with_bin(self, index: int, settings: dict[str, Any]) -> SolverStepSchedule:
        updated = list(self.settings)
        updated[index] = dict(settings)
        return SolverStepSchedule(tuple(updated), self.num_train_timesteps)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"num_train_timesteps": self.num_train_timesteps, "settings": list(self.settings)}

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / SCHEDULE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> SolverStepSchedule:
        path = Path(folder) / SCHEDULE_FILE
        try:
            data = json.loads(path.read_text())
            return cls(tuple(data["settings"]), int(data["num_train_timesteps"]))
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a valid solver schedule: {error}") from error

    @classmethod
    def from_steps(cls, steps: Sequence[int], method: str = "euler", num_train_timesteps: int = 1000):
        """A schedule from one step count per bin, e.g. `from_steps([1, 1, 2, 4])`."""
        return cls(tuple({"method": method, "steps": int(s)} for s in steps), num_train_timesteps)
