"""Preemption: a signal makes the trainer finish its optimizer step, checkpoint and exit, instead of dying.

Cloud schedulers and SLURM announce the end of a job with a signal (SIGTERM, then SIGKILL after a grace period;
SLURM can send SIGUSR1 first with `--signal=USR1@120`; Ctrl-C is SIGINT). While training, `PreemptionGuard`
turns the first such signal into a request that the loop reads after each optimizer step: every process agrees
on the step (a max-reduce of the request, so a signal seen by one process stops them all at the same step),
writes the checkpoint of that step and leaves with `EXIT_PREEMPTED`. A second signal ends the process at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

logger = logging.getLogger("diffusers_cunet.train")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; a job script can requeue on it
DEFAULT_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class Preempted(Exception):
    """Raised by the loop after the preemption checkpoint is written; `train.py` turns it into `EXIT_PREEMPTED`."""

    def __init__(self, step: int, checkpoint, signal_name: str):
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name
        super().__init__(
            f"{signal_name} received: stopped after step {step} and saved {checkpoint}; resume with "
            "--resume_from_checkpoint latest (same command)."
        )


def signal_numbers(names) -> list[signal.Signals]:
    """The signals named (e.g. `["SIGTERM", "USR1"]`), checked; raises ValueError for an unknown name."""
    numbers = []
    for name in names:
        key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
        if not hasattr(signal.Signals, key) or key in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"--preemption_signals: {name!r} is not a signal that can be caught.")
        numbers.append(signal.Signals[key])
    return numbers


class PreemptionGuard:
    """While active (a context manager), the given signals request a stop instead of ending the process.

    Args:
        names: the signals to catch (`DEFAULT_SIGNALS`); an empty list installs nothing.
    """

    def __init__(self, names=DEFAULT_SIGNALS):
        self.signals = signal_numbers(names)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second signal: leave now, as the default action would
            self.restore()
            signal.raise_signal(number)
            return
        self.received = signal.Signals(number)
        logger.warning("%s received: finishing this step, then saving a checkpoint (again to stop at once)",
                       self.received.name)  # fmt: skip

    def __enter__(self) -> PreemptionGuard:
        if self.signals and threading.current_thread() is not threading.main_thread():
            logger.warning("Not in the main thread: no preemption handler (signals keep their default action).")
            return self
        for number in self.signals:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def restore(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self.restore()

    @property
    def requested(self) -> bool:
        return self.received is not None
