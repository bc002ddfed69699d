"""Training for the continuous U-Net, built on the library (`diffusers_cunet`) and its pipelines.

Not part of the installed package: it needs the `[train]` extra (accelerate, datasets, scikit-learn, ...) and runs
from a clone of the repository, as diffusers' training examples do. `training/train.py` is the entry point; the
modules here are what it is made of (options, data, model set-up, the loop, checkpoints, export) and what tests
and benchmarks call directly.
"""
