"""Running training/train.py in-process from the tests."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def load_train_module():
    """training/train.py, the script users run (its `main(argv)` returns a `training.loop.TrainingResult`)."""
    return importlib.import_module("training.train")


# A model of a few hundred thousand parameters on 8x8 digits: seconds per run on a CPU.
TINY_ARGS = [
    "--dataset_name", "digits",
    "--block_out_channels", "16", "32",
    "--resolution", "8",
    "--train_batch_size", "16",
    "--learning_rate", "2e-3",
    "--lr_warmup_steps", "2",
    "--num_validation_images", "4",
    "--validation_inference_steps", "3",
    "--validation_steps", "0",
    "--checkpointing_steps", "0",
    "--report_to", "none",
    "--logging_steps", "1",
]  # fmt: skip


def train(output_dir: Path, *extra: str, module=None):
    """Run training/train.py's `main` in-process; returns its `training.loop.TrainingResult`."""
    module = module or load_train_module()
    return module.main([*TINY_ARGS, "--output_dir", str(output_dir), *extra])


def loss_history(output_dir: Path) -> list[float]:
    return [entry["loss"] for entry in json.loads((output_dir / "metrics.json").read_text())["loss_history"]]


def assert_same_weights(expected: Path, actual: Path, label: str = "") -> None:
    """Every tensor of the safetensors file `expected` is bit-identical in `actual`."""
    a, b = load_file(expected), load_file(actual)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=f"{label}{key}")
