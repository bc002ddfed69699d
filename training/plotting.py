"""Matplotlib for every plot of the trainer, its searches, the shipped model's grid and the benchmarks: imported on
first use (a run that plots nothing never loads it), always with the file-only Agg backend (they run on machines
without a display)."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """`matplotlib.pyplot`, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
