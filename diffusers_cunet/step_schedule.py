"""Step-aware compute (after DDSM, arXiv 2310.03337): the network's effort chosen per diffusion timestep.

A `SolverStepSchedule` splits the model's timesteps into equal bins and gives each bin the effort its network
calls spend: solver settings (e.g. `{"method": "euler", "steps": 2}`) and, optionally, the ODE blocks it skips
(`"skip": ["mid_block", "up_blocks.0"]`; a block integrated over zero time is the identity, so skipping it is
the cUNet's own smaller sub-network). The bins divide the integer timesteps [0, num_train_timesteps) of a
discrete (DDPM-style) schedule, or, for a model sampled with an EDM scheduler, the range of c_noise =
log(sigma) / 4 (`c_noise_range`). It is saved as `solver_schedule.json` beside a pipeline and passed to the
pipelines as `solver_schedule=` (it is callable as `schedule(step_index, timestep)`).
"""

from __future__ import annotations

import json
import math
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
        settings (`list[dict]`): one mapping per bin, bin 0 holding the lowest timesteps (least noise): solver
            settings and an optional `skip` list of ODE block names (e.g. `[{"method": "euler", "steps": 1,
            "skip": ["up_blocks.0"]}, {"method": "euler", "steps": 2}]`).
        num_train_timesteps (`int`): the integer timesteps the bins divide (discrete schedulers).
        c_noise_range (`tuple[float, float]`, *optional*): the c_noise interval the bins divide instead (EDM
            schedulers); see `for_edm`.
    """

    settings: tuple[dict[str, Any], ...]
    num_train_timesteps: int = 1000
    c_noise_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.settings:
            raise ValueError("A SolverStepSchedule needs at least one bin.")
        if self.num_train_timesteps < len(self.settings):
            raise ValueError(f"{len(self.settings)} bins cannot divide {self.num_train_timesteps} timesteps.")
        for entry in self.settings:
            skip = entry.get("skip", [])
            if isinstance(skip, str) or not all(isinstance(name, str) for name in skip):
                raise ValueError(f"skip must be a list of ODE block names, got {skip!r}.")
            # raises ValueError for unknown methods or options
            SolverConfig.from_options({key: value for key, value in entry.items() if key != "skip"})
        if self.c_noise_range is not None:
            low, high = (float(value) for value in self.c_noise_range)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"c_noise_range must be two finite numbers, low < high; got {self.c_noise_range}.")
            object.__setattr__(self, "c_noise_range", (low, high))
        object.__setattr__(self, "settings", tuple(dict(entry) for entry in self.settings))

    @classmethod
    def for_edm(cls, settings, sigma_min: float, sigma_max: float) -> SolverStepSchedule:
        """A schedule whose bins divide c_noise = log(sigma) / 4 over [sigma_min, sigma_max] (an EDM scheduler's
        range, e.g. `model.preconditioning.sigma_min`), bin 0 holding the least noise."""
        return cls(tuple(settings), c_noise_range=(math.log(sigma_min) / 4, math.log(sigma_max) / 4))

    @property
    def timestep_kind(self) -> str:
        """`"c_noise"` (for EDM schedulers) or `"discrete"` (integer timesteps): what the pipeline must pass."""
        return "discrete" if self.c_noise_range is None else "c_noise"

    @property
    def num_bins(self) -> int:
        return len(self.settings)

    def bin_of(self, timestep: float) -> int:
        if self.c_noise_range is None:
            index = int(float(timestep) * self.num_bins // self.num_train_timesteps)
        else:
            low, high = self.c_noise_range
            index = math.floor((float(timestep) - low) / (high - low) * self.num_bins)
        return min(max(index, 0), self.num_bins - 1)

    def __call__(self, step_index: int, timestep: float) -> dict[str, Any]:
        return self.settings[self.bin_of(timestep)]

    def skipped(self, index: int) -> tuple[str, ...]:
        """The ODE blocks bin `index` skips."""
        return tuple(self.settings[index].get("skip", ()))

    def with_bin(self, index: int, settings: dict[str, Any]) -> SolverStepSchedule:
        updated = list(self.settings)
        updated[index] = dict(settings)
        return SolverStepSchedule(tuple(updated), self.num_train_timesteps, self.c_noise_range)

    def with_skip(self, index: int, blocks) -> SolverStepSchedule:
        """This schedule with bin `index` skipping `blocks` (its solver settings kept)."""
        entry = {key: value for key, value in self.settings[index].items() if key != "skip"}
        if blocks:
            entry["skip"] = sorted(blocks)
        return self.with_bin(index, entry)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"num_train_timesteps": self.num_train_timesteps, "settings": list(self.settings)}
        if self.c_noise_range is not None:
            data["c_noise_range"] = list(self.c_noise_range)
        return data

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
            c_noise = data.get("c_noise_range")  # absent in files written before EDM bins existed
            return cls(tuple(data["settings"]), int(data["num_train_timesteps"]), tuple(c_noise) if c_noise else None)
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a valid solver schedule: {error}") from error

    @classmethod
    def from_steps(cls, steps: Sequence[int], method: str = "euler", num_train_timesteps: int = 1000):
        """A schedule from one step count per bin, e.g. `from_steps([1, 1, 2, 4])`."""
        return cls(tuple({"method": method, "steps": int(s)} for s in steps), num_train_timesteps)
